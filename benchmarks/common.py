"""What every benchmark records: the machine, the commit, package versions, the
weight forms of the default model and a fixed prompt."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Iterable, Optional

FORMS = ("q4", "bf16", "f32")

EVAL_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "eval"
if not EVAL_DIR.is_dir():  # installed package: look beside the working directory's project
    EVAL_DIR = Path.cwd().parent / "shared" / "data" / "eval"

# Used when WikiText-2 is not on disk (an installed package on a user's machine).
FALLBACK_TEXT = (
    "The lighthouse stood at the end of a long stone pier, and every evening the keeper climbed its "
    "ninety-one steps to light the lamp. Ships passing the headland in winter relied on it, because the "
    "reef below the water stretched further than the charts admitted. In the village people said the "
    "keeper had not missed a night in thirty years, not during the storm that took the harbour wall, "
    "and not during the summer when the fog stayed for a month. "
)


def cpu_name() -> str:
    if sys.platform == "darwin":
        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                  text=True, timeout=5).stdout.strip() or platform.machine()
        except (OSError, subprocess.SubprocessError):
            return platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_gib() -> Optional[float]:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def machine() -> str:
    """One line naming the machine: CPU, cores, memory, OS."""
    mem = memory_gib()
    mem_s = f", {mem:.0f} GiB" if mem else ""
    return f"{cpu_name()}, {os.cpu_count()} cores{mem_s}, {platform.system()} {platform.release()}"


def commit() -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        return subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def versions(names: Iterable[str] = ("mlx-synapse", "mlx", "mlx-cuda-13", "mlx-metal", "mlx-lm", "numpy",
                                      "numba", "torch", "transformers", "llama-cpp-python")) -> dict:
    """Installed versions of the packages that decide the figures (absent ones left out)."""
    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def prepare_forms(forms: Iterable[str]) -> dict:
    """Model directories for each weight form of the default model (made once, cached).

    ``q4`` is the default model as shipped (GGUF Q4_1 -> MLX 4-bit, 8-bit embeddings);
    ``bf16``/``f32`` are the same weights dequantized once and cached beside it.
    """
    from mlx_synapse.convert.gguf import convert_gguf
    from mlx_synapse.defaults import cache_dir, default_model_path, find_default_gguf, is_complete, publish_dir

    out = {}
    for form in forms:
        if form not in FORMS:
            raise ValueError(f"unknown weight form {form!r}; choose from {', '.join(FORMS)}")
        if form == "q4":
            out[form] = default_model_path()
            continue
        target = cache_dir() / "models" / f"SmolLM2-135M-Instruct-{form}"
        if not is_complete(target):
            dtype = {"bf16": "bfloat16", "f32": "float32"}[form]
            gguf = find_default_gguf()
            publish_dir(target, lambda tmp: convert_gguf(gguf, tmp, dequantize=True, dtype=dtype, progress=False))
        out[form] = target
    return out


def prompt_ids(tokenizer_dir: Path, n: int) -> list:
    """``n`` token ids of fixed text: the start of WikiText-2 when on disk, else a built-in paragraph."""
    from mlx_synapse.tokenizer import load_tokenizer

    text_file = EVAL_DIR / "wikitext2_raw_test.txt"
    text = text_file.read_text(encoding="utf-8")[: n * 8] if text_file.is_file() else FALLBACK_TEXT * (n // 60 + 1)
    ids = load_tokenizer(tokenizer_dir).encode(text)[:n]
    if len(ids) < n:
        ids = (ids * (n // max(len(ids), 1) + 1))[:n]
    return ids
