"""A LoRA adapter on the NumPy backend and its C engine gives the MLX backend's logits with the same adapter."""

from __future__ import annotations

import json

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")

from mlx_synapse.backends.numpy import load_model as load_numpy  # noqa: E402
from mlx_synapse.backends.numpy.adapter import apply_adapter, remove_adapter  # noqa: E402
from mlx_synapse.learn import apply_lora, load_adapter, lora_layers, save_adapter  # noqa: E402
from mlx_synapse.loader import load_model  # noqa: E402

from .learn_util import tiny_model_dir  # noqa: E402

TOKENS = [5, 17, 42, 3, 88, 1, 60, 23, 9, 71, 2, 33]


@pytest.fixture(scope="module", params=[4, 8, None], ids=["q4", "q8", "float"])
def pair(request, tmp_path_factory):
    """(model dir, adapter dir, MLX logits with the adapter): rank 4 on q, v, o, up, down of the last 2 blocks."""
    root = tmp_path_factory.mktemp("m")
    path = tiny_model_dir(root / "m", bits=request.param, seed=4)
    model, _ = load_model(path)
    base = np.array(model(mx.array([TOKENS]))[0])
    mx.random.seed(0)
    apply_lora(model, num_layers=2, rank=4, scale=3.0,
               keys=["self_attn.q_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.up_proj", "mlp.down_proj"])
    rng = np.random.default_rng(1)
    for layer in lora_layers(model).values():
        layer.lora_b = mx.array(rng.normal(0, 0.05, layer.lora_b.shape).astype(np.float32))
    save_adapter(model, root / "ad")
    ref = np.array(model(mx.array([TOKENS]))[0])
    return path, root / "ad", ref, base


def _decode_all(model, use_engine: bool) -> np.ndarray:
    if not use_engine:
        model.use_engine(False)
    elif model.engine_status != "on":  # keep a built engine (and what was handed to it)
        model.use_engine(True)
    cache = model.make_cache()
    rows = [np.array(model(np.array(TOKENS[:3]), cache=cache))]
    for t in TOKENS[3:]:
        rows.append(np.array(model.step_logits(t, cache))[None])
    return np.concatenate(rows)


def test_numpy_prefill_and_decode_match_mlx_with_adapter(pair):
    """The float32 NumPy path (engine off) computes what MLX computes."""
    path, adapter, ref, mlx_base = pair
    assert np.abs(mlx_base - ref).max() > 5e-2  # the adapter matters at this tolerance
    model = load_numpy(path)
    model.use_engine(False)
    apply_adapter(model, adapter)
    np.testing.assert_allclose(np.array(model(np.array(TOKENS))), ref, atol=2e-4, rtol=0)
    np.testing.assert_allclose(_decode_all(model, use_engine=False), ref, atol=2e-4, rtol=0)


def test_engine_matches_mlx_with_adapter(pair):
    """The C engine (prefill GEMM and decode on the codes, activations quantized to 16 bits) with the
    adapter is as close to MLX-with-adapter as the engine without it is to MLX without it."""
    path, adapter, ref, mlx_base = pair
    model = load_numpy(path)
    if model.engine is None:
        pytest.skip(f"C engine unavailable: {model.engine_status}")
    before = _decode_all(model, use_engine=True)
    tol = 2 * np.abs(before - mlx_base).max() + 2e-4
    assert np.abs(mlx_base - ref).max() > 5 * tol
    engine = model.engine  # built before the adapter: apply_adapter hands it over
    apply_adapter(model, adapter)
    np.testing.assert_allclose(_decode_all(model, use_engine=True), ref, atol=tol, rtol=0)
    assert model.engine is engine
    remove_adapter(model)
    assert np.array_equal(_decode_all(model, use_engine=True), before)


def test_remove_adapter_restores_bit_identical_logits(pair):
    path, adapter, _, _ = pair
    model = load_numpy(path)
    model.use_engine(False)
    before = np.array(model(np.array(TOKENS)))
    apply_adapter(model, adapter)
    remove_adapter(model)
    assert np.array_equal(np.array(model(np.array(TOKENS))), before)


def test_dora_and_mismatched_adapters_are_refused(pair, tmp_path):
    path, adapter, _, _ = pair
    model = load_numpy(path)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    (tmp_path / "dora").mkdir()
    (tmp_path / "dora" / "adapter_config.json").write_text(json.dumps(dict(cfg, fine_tune_type="dora")))
    (tmp_path / "dora" / "adapters.safetensors").write_bytes((adapter / "adapters.safetensors").read_bytes())
    with pytest.raises(ValueError, match="MLX backend only"):
        apply_adapter(model, tmp_path / "dora")
    other = tiny_model_dir(tmp_path / "wide", bits=None, hidden_size=96, intermediate_size=128)
    mlx_other, _ = load_model(other)
    apply_lora(mlx_other, num_layers=1, rank=2)
    save_adapter(mlx_other, tmp_path / "wide_ad")
    with pytest.raises(ValueError, match="another base model"):
        apply_adapter(model, tmp_path / "wide_ad")


def test_mlx_backend_model_and_numpy_agree_after_load_adapter(pair):
    """The same adapter directory loaded by each backend's loader: same greedy continuation."""
    from mlx_synapse.generate import generate_step

    path, adapter, _, _ = pair
    mlx_model, _ = load_model(path)
    load_adapter(mlx_model, adapter)
    np_model = load_numpy(path)
    apply_adapter(np_model, adapter)
    ours = [t for t, _ in generate_step(np.array(TOKENS[:4]), np_model, max_tokens=12)]
    theirs = [t for t, _ in generate_step(mx.array(TOKENS[:4]), mlx_model, max_tokens=12)]
    assert ours == theirs


def test_load_with_adapter_path_same_tokens_on_both_backends(tmp_path, smollm2_dir, capsys):
    from mlx_synapse import generate
    from mlx_synapse.generate import main as generate_main
    from mlx_synapse.loader import load

    path = tiny_model_dir(tmp_path / "m", bits=4, seed=2, tokenizer_from=smollm2_dir)
    trained, _ = load_model(path)
    mx.random.seed(0)
    apply_lora(trained, num_layers=2, rank=4, scale=4.0)
    rng = np.random.default_rng(5)
    for layer in lora_layers(trained).values():
        layer.lora_b = mx.array(rng.normal(0, 0.05, layer.lora_b.shape).astype(np.float32))
    save_adapter(trained, tmp_path / "ad")
    texts = {}
    for backend in ("mlx", "numpy"):
        model, tok = load(path, backend=backend, adapter_path=tmp_path / "ad")
        texts[backend] = generate(model, tok, "Hello there", max_tokens=16)
    plain, tok = load(path, backend="numpy")
    assert texts["mlx"] == texts["numpy"] != generate(plain, tok, "Hello there", max_tokens=16)
    assert generate_main(["--model", str(path), "--backend", "numpy", "--adapter-path", str(tmp_path / "nope"),
                          "--prompt", "hi", "--max-tokens", "2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "adapter directory" in err[0] and "does not exist" in err[0]
