"""Hugging Face / PyTorch import: parity after conversion, quantization, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
torch = pytest.importorskip("torch")

from mlx_synapse.convert.__main__ import main as convert_main  # noqa: E402
from mlx_synapse.convert.hf import convert_hf  # noqa: E402
from mlx_synapse.loader import load_model  # noqa: E402

from .hf_models import build_hf_model  # noqa: E402

TOKENS = [3, 17, 42, 5, 88, 1, 60, 23, 9, 71]


def _logits(model):
    return np.array(model(mx.array([TOKENS]))[0])


def _hf_logits(hf):
    with torch.no_grad():
        return hf(torch.tensor([TOKENS])).logits[0].float().numpy()


def test_safetensors_roundtrip_fp32(tmp_path):
    hf = build_hf_model("qwen2", tmp_path / "hf")
    convert_hf(tmp_path / "hf", tmp_path / "out", progress=False)
    model, config = load_model(tmp_path / "out")
    np.testing.assert_allclose(_logits(model), _hf_logits(hf), atol=1e-4, rtol=0)


def test_pytorch_bin_and_sharded_safetensors(tmp_path):
    hf = build_hf_model("llama", tmp_path / "hf")
    # A PyTorch state dict, wrapped as training scripts do.
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "config.json").write_text((tmp_path / "hf" / "config.json").read_text())
    torch.save({"state_dict": hf.state_dict()}, tmp_path / "bin" / "pytorch_model.bin")
    convert_hf(tmp_path / "bin", tmp_path / "out_bin", progress=False)
    np.testing.assert_allclose(_logits(load_model(tmp_path / "out_bin")[0]), _hf_logits(hf), atol=1e-4, rtol=0)
    # Sharded safetensors, as large HF checkpoints ship.
    hf.save_pretrained(tmp_path / "sharded", safe_serialization=True, max_shard_size="20KB")
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    convert_hf(tmp_path / "sharded", tmp_path / "out_sh", progress=False)
    np.testing.assert_allclose(_logits(load_model(tmp_path / "out_sh")[0]), _hf_logits(hf), atol=1e-4, rtol=0)


@pytest.mark.parametrize("bits,tol", [(8, 0.02), (4, 0.3)])
def test_quantized_conversion_is_close_and_really_quantized(tmp_path, bits, tol):
    hf = build_hf_model("llama", tmp_path / "hf", intermediate_size=128)
    rc = convert_main([str(tmp_path / "hf"), "--out", str(tmp_path / "q"), "-q", "--q-bits", str(bits),
                       "--q-group-size", "32", "--no-progress"])
    assert rc == 0
    config = json.loads((tmp_path / "q" / "config.json").read_text())
    assert config["quantization"] == {"group_size": 32, "bits": bits}
    model, _ = load_model(tmp_path / "q")
    assert model.layers[0].mlp.up_proj.weight.dtype == mx.uint32
    err = np.abs(_logits(model) - _hf_logits(hf)).max()
    assert 0 < err < tol


def test_dtype_cast(tmp_path):
    build_hf_model("llama", tmp_path / "hf")
    convert_hf(tmp_path / "hf", tmp_path / "out", dtype="bfloat16", progress=False)
    model, _ = load_model(tmp_path / "out")
    assert model.model.embed_tokens.weight.dtype == mx.bfloat16


def test_shape_mismatch_is_a_clear_error(tmp_path):
    build_hf_model("llama", tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    cfg["intermediate_size"] = 100
    (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="do not fit config.json"):
        convert_hf(tmp_path / "hf", tmp_path / "out", progress=False)


def test_missing_weights_and_unknown_type(tmp_path):
    build_hf_model("llama", tmp_path / "hf")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text((tmp_path / "hf" / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no weights"):
        convert_hf(tmp_path / "empty", tmp_path / "out", progress=False)
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="lacks required field"):
        convert_hf(tmp_path / "partial", tmp_path / "out", progress=False)
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    cfg["model_type"] = "gpt_neox"
    (tmp_path / "hf" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="'gpt_neox' is not supported"):
        convert_hf(tmp_path / "hf", tmp_path / "out", progress=False)


def test_cli_refuses_nonempty_out(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "x").write_text("keep me")
    assert convert_main(["whatever", "--out", str(tmp_path / "out")]) == 2
    assert (tmp_path / "out" / "x").read_text() == "keep me"
    assert "not empty" in capsys.readouterr().err


def test_converted_directory_loads_in_mlx_lm(tmp_path):
    """Our output is mlx-lm's format: mlx-lm loads it and computes the same logits."""
    mlx_lm_utils = pytest.importorskip("mlx_lm.utils")
    build_hf_model("llama", tmp_path / "hf")
    convert_hf(tmp_path / "hf", tmp_path / "q", quantize=True, q_bits=4, q_group_size=32, progress=False)
    theirs, _ = mlx_lm_utils.load_model(tmp_path / "q")
    ours, _ = load_model(tmp_path / "q")
    np.testing.assert_allclose(np.array(theirs(mx.array([TOKENS]))[0]), _logits(ours), atol=1e-5, rtol=0)
