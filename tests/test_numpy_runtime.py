"""NumPy backend outside the numbers: clear errors for bad checkpoints and ids,
running with MLX absent, BLAS thread control."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from mlx_synapse.backends.numpy import generate_step, load_model  # noqa: E402

from .hf_models import COMMON, hf_model  # noqa: E402


@pytest.fixture()
def good_dir(tmp_path):
    hf_model("llama", std=0.2).save_pretrained(tmp_path, safe_serialization=True)
    return tmp_path


def test_truncated_safetensors(good_dir):
    f = good_dir / "model.safetensors"
    raw = f.read_bytes()
    f.write_bytes(raw[: len(raw) - 100])
    with pytest.raises(ValueError, match=r"model\.safetensors.*truncated.*re-download or re-convert"):
        load_model(good_dir)
    f.write_bytes(raw[:5])
    with pytest.raises(ValueError, match="truncated"):
        load_model(good_dir)
    f.write_bytes(struct.pack("<Q", 20) + b"{not json at all....")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_model(good_dir)


def _rewrite(path, fn):
    """Apply fn to the tensor dict and save it back (numpy safetensors writer)."""
    from safetensors.numpy import load_file, save_file

    t = load_file(str(path))
    fn(t)
    save_file(t, str(path))


def test_missing_tensor(good_dir):
    _rewrite(good_dir / "model.safetensors", lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(ValueError, match=r"missing tensor 'model\.layers\.1\.mlp\.up_proj\.weight'"):
        load_model(good_dir)


def test_shape_mismatch(good_dir):
    def shrink(t):
        t["model.layers.0.self_attn.k_proj.weight"] = t["model.layers.0.self_attn.k_proj.weight"][:16]

    _rewrite(good_dir / "model.safetensors", shrink)
    with pytest.raises(ValueError, match=r"k_proj\.weight' has shape \(16, 64\), expected \(32, 64\)"):
        load_model(good_dir)


def test_unknown_model_type(good_dir):
    cfg = json.loads((good_dir / "config.json").read_text())
    cfg["model_type"] = "gpt_neox"
    (good_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="unsupported model_type 'gpt_neox'"):
        load_model(good_dir)


def test_bad_quantization_bits(good_dir):
    cfg = json.loads((good_dir / "config.json").read_text())
    cfg["quantization"] = {"group_size": 32, "bits": 3}

    def fake_quant(t):
        w = t.pop("model.layers.0.mlp.up_proj.weight")
        t["model.layers.0.mlp.up_proj.weight"] = np.zeros((w.shape[0], w.shape[1] * 3 // 32), np.uint32)
        t["model.layers.0.mlp.up_proj.scales"] = np.ones((w.shape[0], w.shape[1] // 32), np.float16)
        t["model.layers.0.mlp.up_proj.biases"] = np.zeros((w.shape[0], w.shape[1] // 32), np.float16)

    _rewrite(good_dir / "model.safetensors", fake_quant)
    (good_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="bits=3 is not supported"):
        load_model(good_dir)


def test_no_weights_and_bad_ids(good_dir, tmp_path_factory):
    empty = tmp_path_factory.mktemp("empty")
    (empty / "config.json").write_text((good_dir / "config.json").read_text())
    with pytest.raises(ValueError, match="no model.*safetensors"):
        load_model(empty)
    model = load_model(good_dir)
    with pytest.raises(ValueError, match="out of range"):
        model(np.array([COMMON["vocab_size"]]))
    with pytest.raises(ValueError, match="non-empty prompt"):
        next(generate_step([], model))


def test_backend_runs_without_mlx(tmp_path):
    """Import, load (a quantized dir too) and generate with every `import mlx` failing."""
    import subprocess
    import sys

    from mlx_synapse.backends.numpy.weights import affine
    from safetensors.numpy import save_file

    hf = hf_model("qwen3", std=0.2)
    hf.save_pretrained(tmp_path / "fp", safe_serialization=True)
    # a quantized copy made with the NumPy packer (no MLX needed for it either)
    q = tmp_path / "q"
    q.mkdir()
    out = {}
    for name, w in hf.state_dict().items():
        w = w.numpy()
        if w.ndim == 2:
            wq, sc, bi = affine.quantize_numpy(w, 32, 4)
            prefix = name[: -len(".weight")]
            out[name], out[prefix + ".scales"], out[prefix + ".biases"] = (
                wq,
                sc.astype(np.float16),
                bi.astype(np.float16),
            )
        else:
            out[name] = w
    save_file(out, str(q / "model.safetensors"))
    cfg = json.loads(hf.config.to_json_string())
    cfg["quantization"] = {"group_size": 32, "bits": 4}
    (q / "config.json").write_text(json.dumps(cfg))

    code = (
        "import sys, builtins\n"
        "real = builtins.__import__\n"
        "def guard(name, *a, **k):\n"
        "    if name == 'mlx' or name.startswith('mlx.') or name.startswith('mlx_lm'):\n"
        "        raise ImportError('mlx blocked')\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = guard\n"
        "from mlx_synapse.backends.numpy import load_model, generate_step\n"
        "for d in sys.argv[1:]:\n"
        "    m = load_model(d)\n"
        "    toks = [t for t, _ in generate_step([1, 2, 3], m, max_tokens=4)]\n"
        "    assert len(toks) == 4\n"
        "assert not any(n == 'mlx' or n.startswith('mlx.') for n in sys.modules)\n"
        "print('ok')\n"
    )
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "fp"), str(q)], capture_output=True, text=True, cwd=root
    )
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr


# ------------------------------------------------------------- BLAS threads
def test_decode_thread_tuner_follows_the_faster_option(monkeypatch):
    from mlx_synapse.backends.numpy.blas import DecodeThreadTuner

    monkeypatch.delenv("MLX_SYNAPSE_DECODE_THREADS", raising=False)
    tuner = DecodeThreadTuner(probe=3, reprobe=2, every=8, options=[1, 2])
    cost = {1: 0.030, 2: 0.020}  # idle machine: 2 threads faster

    def run(n):
        seen = []
        for _ in range(n):
            th = tuner.choose()
            seen.append(th)
            tuner.record(th, cost[th])
        return seen

    seen = run(6)
    assert sorted(seen) == [1, 1, 1, 2, 2, 2]  # both probed first
    assert run(8) == [2] * 8 and tuner.best() == 2
    cost[2] = 0.200  # another process takes a core: 2 threads collapse
    seen = run(20)
    assert tuner.best() == 1 and seen[-10:].count(2) <= tuner.reprobe  # only re-probes
    cost[2] = 0.010  # load gone: a later re-probe finds 2 threads again
    seen = run(200)
    assert tuner.best() == 2 and seen[-10:].count(1) <= tuner.reprobe

    monkeypatch.setenv("MLX_SYNAPSE_DECODE_THREADS", "1")
    assert tuner.choose() == 1


def test_blas_thread_control_round_trip():
    from mlx_synapse.backends.numpy import blas

    before = blas.get_threads()
    if before is None:
        pytest.skip("NumPy is not linked against a controllable OpenBLAS")
    with blas.blas_threads(1):
        assert blas.get_threads() == 1
    assert blas.get_threads() == before
