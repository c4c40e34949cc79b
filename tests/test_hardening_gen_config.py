"""config.json is checked once, for both backends and the converter: a bad field is one
line naming the field, the value and the file — never a TypeError/ZeroDivisionError."""

from __future__ import annotations

import json

import pytest

from mlx_synapse.convert.hf import convert_hf
from mlx_synapse.generate import main
from mlx_synapse.loader import load_model
from mlx_synapse.backends.numpy import load_model as load_numpy_model

from .hf_models import build_hf_model

BAD = [
    ("hidden_size", "abc", "must be a positive integer but is 'abc'"),
    ("hidden_size", 64.5, "must be a positive integer but is 64.5"),
    ("num_attention_heads", 0, "must be a positive integer but is 0"),
    ("num_hidden_layers", 0, "must be a positive integer but is 0"),
    ("num_hidden_layers", -2, "must be a positive integer but is -2"),
    ("intermediate_size", True, "must be a positive integer but is True"),
    ("vocab_size", None, "lacks required field 'vocab_size'"),
    ("num_key_value_heads", 3, "num_key_value_heads=3 does not divide num_attention_heads=4"),
    ("num_attention_heads", 3, "num_attention_heads=3 does not divide hidden_size=64"),
    ("rms_norm_eps", -1e-5, "must be a positive number but is -1e-05"),
    ("rope_theta", "big", "must be a positive number but is 'big'"),
    ("max_position_embeddings", 0, "must be a positive integer but is 0"),
    ("tie_word_embeddings", "yes", "must be true or false but is 'yes'"),
]


@pytest.fixture(scope="module")
def good_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cfg") / "m"
    build_hf_model("llama", d, hidden_size=64, num_attention_heads=4, num_key_value_heads=2)
    return d


def _bad_copy(good_dir, tmp_path, field, value):
    d = tmp_path / "bad"
    d.mkdir()
    for f in good_dir.iterdir():
        (d / f.name).symlink_to(f)
    cfg = json.loads((good_dir / "config.json").read_text())
    if field in ("num_attention_heads",) and value == 3:
        cfg.pop("head_dim", None)
        cfg["num_key_value_heads"] = 1
    cfg.pop(field, None) if value is None else cfg.__setitem__(field, value)
    (d / "config.json").unlink()
    (d / "config.json").write_text(json.dumps(cfg))
    return d


@pytest.mark.parametrize("field,value,message", BAD)
def test_bad_field_is_one_clear_error_everywhere(good_dir, tmp_path, field, value, message):
    d = _bad_copy(good_dir, tmp_path, field, value)
    path = str(d / "config.json")
    for load in (load_model, load_numpy_model):
        with pytest.raises(ValueError) as e:
            load(d)
        text = str(e.value)
        assert message in text and path in text and "\n" not in text, (load, text)
    with pytest.raises(ValueError) as e:
        convert_hf(d, tmp_path / "out", progress=False)
    assert message in str(e.value) and path in str(e.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("backend", ["numpy", "mlx"])
def test_cli_bad_config_is_one_line(good_dir, tmp_path, capsys, backend):
    d = _bad_copy(good_dir, tmp_path, "hidden_size", "abc")
    (d / "tokenizer.json").write_text("{}")
    rc = main(["--model", str(d), "--backend", backend, "-p", "hi"])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "field 'hidden_size' must be a positive integer but is 'abc'" in err


def test_good_config_still_loads(good_dir):
    model, config = load_model(good_dir)
    assert config["hidden_size"] == 64
    assert load_numpy_model(good_dir).config["num_attention_heads"] == 4
