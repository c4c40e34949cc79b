"""MLX's CPU device expands 4-bit weights to float32, so it gives the NumPy
backend's float32 greedy tokens (bfloat16 expansion moved them within a few tokens)."""

from __future__ import annotations

import json

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
pytest.importorskip("torch")
pytest.importorskip("transformers")

from mlx.utils import tree_flatten  # noqa: E402

from mlx_synapse import loader  # noqa: E402
from mlx_synapse.backends.numpy import generate_step as np_generate_step  # noqa: E402
from mlx_synapse.generate import generate_step  # noqa: E402

from .hf_models import COMMON, hf_model  # noqa: E402

QUANT = {"group_size": 32, "bits": 4, "mode": "affine"}


@pytest.fixture
def on_cpu(monkeypatch):
    """MLX on its CPU device (the default here; forced on GPU machines), no tokenizer needed."""
    import mlx_synapse.tokenizer as tokenizer

    old = mx.default_device()
    mx.set_default_device(mx.cpu)
    monkeypatch.setattr(tokenizer, "load_tokenizer", lambda path, eos_token_ids=None: None)
    yield
    mx.set_default_device(old)


def _quantized_dir(path, seed=0):
    """A tiny llama saved the way mlx-lm stores 4-bit checkpoints (float16 scales and biases)."""
    from safetensors.numpy import save_file

    hf = hf_model("llama", seed, std=0.2, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    out = {}
    for name, t in hf.state_dict().items():
        w = t.numpy()
        if w.ndim == 2:
            wq, s, b = mx.quantize(mx.array(w), group_size=QUANT["group_size"], bits=QUANT["bits"])
            out[name] = np.array(wq)
            out[name[: -len(".weight")] + ".scales"] = np.array(s.astype(mx.float16))
            out[name[: -len(".weight")] + ".biases"] = np.array(b.astype(mx.float16))
        else:
            out[name] = w.astype(np.float16)  # norms stored in half precision, as checkpoints ship
    save_file(out, str(path / "model.safetensors"))
    cfg = json.loads(hf.config.to_json_string())
    cfg["quantization"] = QUANT
    (path / "config.json").write_text(json.dumps(cfg))
    return path


def test_cpu_mlx_matches_numpy_float32_on_a_quantized_model(tmp_path, on_cpu):
    path = _quantized_dir(tmp_path)
    mlx_model, _ = loader.load(path, backend="mlx")
    np_model, _ = loader.load(path, backend="numpy")
    assert {v.dtype for _, v in tree_flatten(mlx_model.parameters())} == {mx.float32}

    ids = np.random.default_rng(1).integers(0, COMMON["vocab_size"], 17)
    ours = np.array(mlx_model(mx.array(ids)[None])[0].astype(mx.float32))
    np_model.use_engine(False)  # the float32 path on the same dequantized weights
    ref = np_model(ids)
    assert np.abs(ref).max() > 5  # logits large enough that bfloat16 rounding would show
    np.testing.assert_allclose(ours, ref, atol=1e-4 * np.abs(ref).max(), rtol=0)

    prompt = ids[:6].tolist()
    a = [t for t, _ in generate_step(mx.array(prompt, mx.uint32), mlx_model, max_tokens=32)]
    b = [t for t, _ in np_generate_step(prompt, np_model, max_tokens=32)]
    assert a == b


def test_explicit_dtype_still_wins(tmp_path, on_cpu):
    path = _quantized_dir(tmp_path)
    model, _ = loader.load(path, backend="mlx", dtype="bfloat16")
    assert {v.dtype for _, v in tree_flatten(model.parameters())} == {mx.bfloat16}
    # a half-precision model still hands out float32 NumPy logprobs
    (tok, lp), = list(generate_step([1, 2, 3], model, max_tokens=1))
    assert lp.dtype == np.float32 and lp.shape == (COMMON["vocab_size"],) and tok == int(np.argmax(lp))


RAINBOW = ["Name three colors of the rainbow.", "What is the capital of France?",
           "Explain photosynthesis in one sentence.", "Write a haiku about the sea."]


@pytest.mark.slow
def test_default_model_cpu_mlx_greedy_equals_numpy(smollm2_dir):
    from mlx_synapse.generate import build_prompt

    old = mx.default_device()
    mx.set_default_device(mx.cpu)
    try:
        mlx_model, tok = loader.load(smollm2_dir, backend="mlx")
    finally:
        mx.set_default_device(old)
    np_model, _ = loader.load(smollm2_dir, backend="numpy")
    np_model.use_engine(False)
    for prompt in RAINBOW:
        ids = build_prompt(tok, prompt)
        a = [t for t, _ in generate_step(mx.array(ids, mx.uint32), mlx_model, max_tokens=32)]
        b = [t for t, _ in np_generate_step(ids, np_model, max_tokens=32)]
        assert a == b, (prompt, tok.decode(a), tok.decode(b))
