"""LoRA/DoRA layers: dense-reference math, exact removal, fusing, and mlx-lm's adapter format both ways."""

from __future__ import annotations

import json

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
import mlx.nn as nn  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402

from mlx_synapse.learn import (  # noqa: E402
    DoRALinear, LoRALinear, apply_lora, fuse_lora, load_adapter, lora_layers, remove_lora, save_adapter,
)
from mlx_synapse.loader import load_model  # noqa: E402

from .learn_util import tiny_model_dir  # noqa: E402

TOKENS = mx.array([[5, 17, 42, 3, 88, 1, 60, 23, 9, 71, 2]])


def _logits(model):
    return np.array(model(TOKENS)[0], dtype=np.float32)


def _randomise(model, seed=1, std=0.02):
    """Give every adapter non-zero B (and DoRA a magnitude off its initial value)."""
    rng = np.random.default_rng(seed)
    for layer in lora_layers(model).values():
        layer.lora_b = mx.array(rng.normal(0, std, layer.lora_b.shape).astype(np.float32))
        if isinstance(layer, DoRALinear):
            layer.m = layer.m * mx.array(rng.uniform(0.8, 1.2, layer.m.shape).astype(np.float32))


@pytest.fixture(scope="module", params=[4, None], ids=["q4", "float"])
def model_dir(request, tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("tiny") / "m", bits=request.param)


def test_remove_restores_bit_identical_logits(model_dir):
    model, _ = load_model(model_dir)
    before = _logits(model)
    apply_lora(model, num_layers=2, rank=4)
    _randomise(model)
    assert np.abs(_logits(model) - before).max() > 1e-2  # the adapter changes the output
    assert remove_lora(model) == 14
    assert np.array_equal(_logits(model), before)


def test_quantized_base_stays_quantized(tmp_path):
    model, _ = load_model(tiny_model_dir(tmp_path / "m", bits=4))
    base_bytes = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
    apply_lora(model, num_layers=-1, rank=8)
    layers = lora_layers(model)
    assert len(layers) == 21 and all(isinstance(m.linear, nn.QuantizedLinear) for m in layers.values())
    adapter_bytes = sum(m.lora_a.nbytes + m.lora_b.nbytes for m in layers.values())
    assert sum(v.nbytes for _, v in tree_flatten(model.parameters())) == base_bytes + adapter_bytes
    trainable = dict(tree_flatten(model.trainable_parameters()))
    assert trainable and all(k.endswith(("lora_a", "lora_b")) for k in trainable)


def test_lora_matches_dense_reference_and_fuses(tmp_path):
    rng = np.random.default_rng(0)
    base = nn.Linear(96, 40, bias=True)
    layer = LoRALinear(base, rank=5, scale=3.0)
    layer.lora_b = mx.array(rng.normal(0, 0.1, (5, 40)).astype(np.float32))
    x = rng.normal(size=(7, 96)).astype(np.float32)
    W, b = np.array(base.weight), np.array(base.bias)
    A, B = np.array(layer.lora_a), np.array(layer.lora_b)
    ref = x @ (W + 3.0 * B.T @ A.T).T + b
    np.testing.assert_allclose(np.array(layer(mx.array(x))), ref, atol=1e-5, rtol=1e-5)
    fused = layer.fuse(dequantize=True)
    np.testing.assert_allclose(np.array(fused.weight), W + 3.0 * B.T @ A.T, atol=1e-5, rtol=0)


def test_dora_on_quantized_matches_dense_reference():
    rng = np.random.default_rng(3)
    lin = nn.Linear(64, 48, bias=False)
    q = nn.QuantizedLinear.from_linear(lin, group_size=32, bits=4)
    layer = DoRALinear(q, rank=4, scale=2.0)
    layer.lora_b = mx.array(rng.normal(0, 0.1, (4, 48)).astype(np.float32))
    layer.m = mx.array(rng.uniform(0.5, 1.5, 48).astype(np.float32))
    W = np.array(mx.dequantize(q.weight, q.scales, q.biases, group_size=32, bits=4))
    A, B, m = np.array(layer.lora_a), np.array(layer.lora_b), np.array(layer.m)
    adapted = W + 2.0 * B.T @ A.T
    ref_w = (m / np.linalg.norm(adapted, axis=1))[:, None] * adapted
    x = rng.normal(size=(5, 64)).astype(np.float32)
    np.testing.assert_allclose(np.array(layer(mx.array(x))), x @ ref_w.T, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(np.array(layer.fuse(dequantize=True).weight), ref_w, atol=1e-5, rtol=0)


def test_fused_model_matches_adapter_model(tmp_path):
    model, _ = load_model(tiny_model_dir(tmp_path / "m", bits=None))
    apply_lora(model, num_layers=2, rank=4)
    _randomise(model)
    with_adapter = _logits(model)
    assert fuse_lora(model) == 14
    assert not lora_layers(model)
    np.testing.assert_allclose(_logits(model), with_adapter, atol=1e-4, rtol=0)


def _mlx_lm_model(path):
    from mlx_lm.utils import load_model as mlx_lm_load

    return mlx_lm_load(path)[0]


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_our_adapter_loads_in_mlx_lm(model_dir, tmp_path, dora):
    from mlx_lm.tuner.utils import load_adapters

    model, _ = load_model(model_dir)
    apply_lora(model, num_layers=2, rank=4, scale=10.0, keys=["self_attn.q_proj", "mlp.down_proj"], use_dora=dora)
    _randomise(model)
    ours = _logits(model)
    save_adapter(model, tmp_path / "ad")
    config = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert config["fine_tune_type"] == ("dora" if dora else "lora") and config["num_layers"] == 2
    theirs = load_adapters(_mlx_lm_model(model_dir), str(tmp_path / "ad"))
    np.testing.assert_allclose(np.array(theirs(TOKENS)[0]), ours, atol=1e-4, rtol=0)


@pytest.mark.parametrize("dora", [False, True], ids=["lora", "dora"])
def test_mlx_lm_adapter_loads_in_ours(model_dir, tmp_path, dora):
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import save_config

    theirs = _mlx_lm_model(model_dir)
    theirs.freeze()
    params = {"rank": 6, "scale": 5.0, "dropout": 0.0}
    linear_to_lora_layers(theirs, 3, params, use_dora=dora)
    rng = np.random.default_rng(2)
    updates = [(k, mx.array(rng.normal(0, 0.05, v.shape).astype(np.float32)))
               for k, v in tree_flatten(theirs.trainable_parameters()) if k.endswith("lora_b")]
    theirs.load_weights(updates, strict=False)
    ref = np.array(theirs(TOKENS)[0])
    out = tmp_path / "theirs"
    out.mkdir()
    mx.save_safetensors(str(out / "adapters.safetensors"), dict(tree_flatten(theirs.trainable_parameters())))
    save_config({"fine_tune_type": "dora" if dora else "lora", "num_layers": 3, "lora_parameters": params},
                out / "adapter_config.json")
    model, _ = load_model(model_dir)
    load_adapter(model, out)
    np.testing.assert_allclose(_logits(model), ref, atol=1e-4, rtol=0)


def test_bad_adapter_directories_are_one_line_errors(model_dir, tmp_path):
    model, _ = load_model(model_dir)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_adapter(model, tmp_path / "nowhere")
    (tmp_path / "a").mkdir()
    with pytest.raises(FileNotFoundError, match="adapter_config.json not found"):
        load_adapter(model, tmp_path / "a")
    (tmp_path / "a" / "adapter_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_adapter(model, tmp_path / "a")
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps({"fine_tune_type": "full"}))
    with pytest.raises(ValueError, match="only 'lora' and 'dora'"):
        load_adapter(model, tmp_path / "a")
    # an adapter of another shape (rank 4 saved, config says rank 8): refused, model left clean
    other, _ = load_model(model_dir)
    apply_lora(other, num_layers=1, rank=4)
    save_adapter(other, tmp_path / "b")
    cfg = json.loads((tmp_path / "b" / "adapter_config.json").read_text())
    cfg["lora_parameters"]["rank"] = 8
    (tmp_path / "b" / "adapter_config.json").write_text(json.dumps(cfg))
    before = _logits(model)
    with pytest.raises(ValueError, match="does not fit this model"):
        load_adapter(model, tmp_path / "b")
    assert not lora_layers(model) and np.array_equal(_logits(model), before)


def test_fused_inference_model_is_refused(tmp_path):
    from mlx_synapse.models.llama import fuse_projections

    model, _ = load_model(tiny_model_dir(tmp_path / "m", bits=None))
    fuse_projections(model)
    with pytest.raises(ValueError, match="trainable form"):
        apply_lora(model)
    from mlx_synapse.models.parallel import split_rows_across_cpu_streams

    model, _ = load_model(tmp_path / "m")
    split_rows_across_cpu_streams(model, 2)
    with pytest.raises(ValueError, match="trainable form"):
        apply_lora(model)


def test_named_adapters_hot_swap_and_scale(tmp_path):
    from mlx_synapse.learn.adapter_set import AdapterSet

    path = tiny_model_dir(tmp_path / "m", bits=4)
    refs = {}
    for name, seed, rank in (("a", 1, 4), ("b", 2, 4), ("c", 3, 2)):
        model, _ = load_model(path)
        mx.random.seed(seed)
        apply_lora(model, num_layers=2, rank=rank, scale=5.0)
        _randomise(model, seed=seed)
        save_adapter(model, tmp_path / name)
        refs[name] = _logits(model)
    model, _ = load_model(path)
    base = _logits(model)
    adapters = AdapterSet(model)
    for name in "abc":
        adapters.add(name, tmp_path / name)
    wrapped = None
    for name in "abcab":  # a -> b swaps weights in place; b -> c re-wraps (other rank); c -> a again
        adapters.activate(name)
        np.testing.assert_allclose(_logits(model), refs[name], atol=1e-5, rtol=0)
        if name == "b":
            assert lora_layers(model)["model.layers.2.mlp.up_proj"] is wrapped  # same layer objects reused
        wrapped = lora_layers(model)["model.layers.2.mlp.up_proj"]
    adapters.set_scale("b", 0.0)
    assert np.array_equal(_logits(model), base)  # scale 0: exactly the base
    adapters.activate("a")
    adapters.activate("b")
    assert np.array_equal(_logits(model), base)  # b kept its scale of 0
    adapters.set_scale("b", 5.0)
    np.testing.assert_allclose(_logits(model), refs["b"], atol=1e-5, rtol=0)
    adapters.deactivate()
    assert np.array_equal(_logits(model), base) and adapters.active is None
    with pytest.raises(ValueError, match="no adapter named 'z'; known: a, b, c"):
        adapters.activate("z")
