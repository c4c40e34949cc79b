"""--backend auto: measured once per machine, cached, overridable."""

from __future__ import annotations

import json

import pytest

from mlx_synapse import backend_choice, loader


@pytest.fixture
def fake_measure(tmp_path, monkeypatch):
    monkeypatch.setenv("MLX_SYNAPSE_CACHE", str(tmp_path))
    monkeypatch.delenv("MLX_SYNAPSE_BACKEND", raising=False)
    monkeypatch.setattr(loader, "mlx_available", lambda: True)
    backend_choice._memo.clear()
    calls = {"numpy": 0, "mlx": 0}
    times = {"numpy": 0.004, "mlx": 0.09}

    def m_np(steps=5):
        calls["numpy"] += 1
        return times["numpy"]

    def m_mlx(steps=5):
        calls["mlx"] += 1
        return times["mlx"]

    monkeypatch.setattr(backend_choice, "measure_numpy", m_np)
    monkeypatch.setattr(backend_choice, "measure_mlx", m_mlx)
    yield calls, times, tmp_path / "backend.json"
    backend_choice._memo.clear()


def test_auto_picks_the_faster_and_caches_it(fake_measure):
    calls, times, path = fake_measure
    assert loader.resolve_backend("auto") == "numpy"
    assert calls == {"numpy": 1, "mlx": 1}
    saved = json.loads(path.read_text())
    (rec,) = saved.values()
    assert rec["backend"] == "numpy" and rec["numpy_s"] == 0.004 and rec["mlx_s"] == 0.09
    # a new process (memo cleared) reads the file instead of measuring
    backend_choice._memo.clear()
    times["mlx"] = 0.001  # would flip the choice if it were re-measured
    assert loader.resolve_backend("auto") == "numpy"
    assert calls == {"numpy": 1, "mlx": 1}


def test_remeasure_and_overrides(fake_measure, monkeypatch):
    calls, times, path = fake_measure
    assert loader.resolve_backend("auto") == "numpy"
    times["mlx"] = 0.001
    monkeypatch.setenv("MLX_SYNAPSE_BACKEND", "remeasure")
    assert loader.resolve_backend("auto") == "mlx"
    assert calls["mlx"] == 2
    monkeypatch.setenv("MLX_SYNAPSE_BACKEND", "numpy")
    assert loader.resolve_backend("auto") == "numpy"
    assert loader.resolve_backend("numpy") == "numpy"
    monkeypatch.setenv("MLX_SYNAPSE_BACKEND", "gpu")
    with pytest.raises(ValueError, match="MLX_SYNAPSE_BACKEND must be"):
        loader.resolve_backend("auto")


def test_machine_key_separates_devices_and_engine():
    keys = {backend_choice.machine_key(d, e) for d in ("cpu", "gpu", None) for e in (True, False)}
    assert len(keys) == 6


def test_garbled_cache_file_is_remeasured(fake_measure):
    calls, _, path = fake_measure
    path.write_text("{not json")
    assert loader.resolve_backend("auto") == "numpy"
    assert calls["numpy"] == 1
    assert json.loads(path.read_text())  # rewritten whole


def test_real_measurements_are_positive_times():
    t = backend_choice.measure_numpy(steps=1)
    assert 0 < t < 5
    pytest.importorskip("mlx.core")
    t2 = backend_choice.measure_mlx(steps=1)
    assert t2 is not None and 0 < t2 < 30
