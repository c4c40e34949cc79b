"""The source folders kernels/, convert/, benchmarks/ never shadow real distributions.

Run from the repository root, the checkout is first on sys.path; a regular package
there named ``kernels`` hid Hugging Face's ``kernels`` (and broke transformers).
Without ``__init__.py`` they are namespace portions, which lose to any regular
package later on the path, while ``mlx_synapse.kernels`` etc. still import.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("kernels", "convert", "benchmarks")


def _run(code: str, cwd: Path, extra_path: Path = None) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home())}
    if extra_path is not None:
        env["PYTHONPATH"] = str(extra_path)
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_real_packages_win_over_the_source_folders(tmp_path):
    for name in NAMES:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(f"MARK = 'real {name}'\n")
    code = (
        "import sys; assert sys.path[0] == '', sys.path[:2]\n"
        "import kernels, convert, benchmarks\n"
        "print(kernels.MARK, convert.MARK, benchmarks.MARK, sep='|')\n"
    )
    r = _run(code, ROOT, tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "real kernels|real convert|real benchmarks"


@pytest.mark.parametrize("name", NAMES)
def test_source_folders_are_not_regular_packages(name):
    assert not (ROOT / name / "__init__.py").exists()


def test_namespaced_imports_and_relative_imports_still_work(tmp_path):
    for name in NAMES:
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("MARK = 1\n")
    code = (
        "import kernels, mlx_synapse.kernels.affine as a, mlx_synapse.convert.gguf_reader as g\n"
        "import mlx_synapse.benchmarks.common\n"
        "from mlx_synapse.convert.__main__ import setup_arg_parser\n"
        "assert kernels.MARK == 1\n"
        "assert g.__package__ == 'mlx_synapse.convert' and a.__name__ == 'mlx_synapse.kernels.affine'\n"
        "from mlx_synapse.kernels import native\n"
        "import os; assert os.path.isdir(os.path.join(os.path.dirname(native.__file__), 'csrc'))\n"
        "print('ok')\n"
    )
    r = _run(code, ROOT, tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


def test_convert_runs_as_a_module_from_the_root():
    r = subprocess.run([sys.executable, "-m", "mlx_synapse.convert", "--help"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "usage: python -m mlx_synapse.convert" in r.stdout
