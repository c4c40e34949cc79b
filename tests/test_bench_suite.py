"""python -m mlx_synapse.bench: summaries, ratios, token agreement, plots, and a real
run of several runners on the default model with a stated-power estimate."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from mlx_synapse.benchmarks import runners as R
from mlx_synapse.benchmarks import suite


def _result(runner, form, tps, gen, tokens, energy=None, measured=False):
    trials = []
    for i, (p, g) in enumerate(zip(tps, gen)):
        trials.append({"prompt_tokens": 16, "gen_tokens": 5, "ttft_s": 16 / p, "prompt_tps": p, "gen_s": 4 / g,
                       "gen_tps": g, "peak_bytes": 1000 + i, "tokens": tokens, "trial": i,
                       "energy": None if energy is None else {"j_per_prompt_token": energy[0], "j_per_gen_token": energy[1],
                                                              "prompt_j": 16 * energy[0], "gen_j": 4 * energy[1]}})
    return {"runner": runner, "form": form, "trials": trials, "rss_peak_bytes": 5_000_000,
            "meter": {"label": "m", "measured": measured}, "info": {"backend": runner}}


def test_summary_takes_medians_and_ratios_pair_tiers_with_peers():
    ours = _result("numpy", "q4", [100, 300, 200], [30, 10, 20], [1, 2, 3, 4, 5], energy=(0.01, 0.5))
    peer = _result("llama.cpp", "q4", [50, 50, 50], [40, 40, 40], [1, 2, 9, 9, 9], energy=(0.02, 0.25))
    rows = suite._summary(ours) + suite._summary(peer)
    assert rows[0]["prompt_tps"] == 200 and rows[0]["gen_tps"] == 20 and rows[0]["peak_bytes"] == 1001
    assert rows[0]["ttft_s"] == pytest.approx(16 / 200)
    suite.agreement(rows)
    assert rows[0]["agree"] == 1.0 and rows[1]["agree"] == pytest.approx(2 / 5) and rows[1]["agree_with"] == "numpy"
    flipped = [dict(rows[1]), dict(rows[0])]  # the NumPy tier is the reference wherever it is listed
    suite.agreement(flipped)
    assert [row["agree_with"] for row in flipped] == ["numpy", "numpy"] and flipped[1]["agree"] == 1.0
    (r,) = suite.ratios(rows)
    assert (r["tier"], r["peer"]) == ("numpy", "llama.cpp")
    assert r["prompt_tps"] == pytest.approx(4.0) and r["gen_tps"] == pytest.approx(0.5)
    # Estimates are never set against each other as if measured... but two estimates compare.
    assert r["j_per_gen_token"] == pytest.approx(2.0)
    rows[1]["measured_energy"] = True
    assert suite.ratios(rows)[0]["j_per_gen_token"] is None


def test_print_tables_marks_estimates_and_failures(capsys):
    ours = _result("numpy", "q4", [100], [30], [1, 2], energy=(0.01, 0.5))
    report = {"machine": "m", "commit": "c", "args": {"gen_tokens": 5, "trials": 1, "warmup": 1, "rounds": 1},
              "results": [ours, {"runner": "torch", "form": "q4", "error": "timed out after 5 s"}],
              "summary": suite._summary(ours), "ratios": [], "notes": ["llama.cpp: not installed"]}
    suite.agreement(report["summary"])
    suite.print_tables(report)
    out = capsys.readouterr().out
    assert "| q4 | numpy | numpy |  | 16 | 5 |" in out and "0.500 (est.)" in out
    assert "| q4 | torch | failed: timed out after 5 s |" in out and "- llama.cpp: not installed" in out


def test_numpy_bytes_counts_each_buffer_once():
    a = np.zeros((10, 10), np.float32)

    class W:
        pass

    w = W()
    w.a, w.view, w.items = a, a[:5], [a, np.zeros(3, np.int64), {"x": np.ones(2, np.float64)}]
    assert R.numpy_bytes(w) == 400 + 24 + 16


def test_plan_runners_rejects_unknown_and_explains_missing(monkeypatch):
    with pytest.raises(SystemExit, match="unknown runner 'fast'"):
        suite.plan_runners("numpy", "fast")
    monkeypatch.setattr(suite, "_available", lambda n: "llama.cpp: not installed (pip install llama-cpp-python)"
                        if n.startswith("llama") else None)
    names, notes = suite.plan_runners("numpy,single-thread", "auto")
    assert names == ["numpy", "single-thread", "mlx-lm", "torch"]
    assert notes and all("pip install llama-cpp-python" in n for n in notes)


def test_one_thread_env_sets_every_pool():
    env = R.one_thread_env({"PATH": "/bin"})
    assert env["PATH"] == "/bin" and env["OPENBLAS_NUM_THREADS"] == "1" and env["MLX_SYNAPSE_DECODE_THREADS"] == "1"


def test_cli_rejects_bad_arguments(capsys):
    for argv, msg in ((["--prompt-tokens", "a,b"], "comma-separated integers"),
                      (["--gen-tokens", "1"], "--gen-tokens >= 2"),
                      (["--energy", "estimate"], "needs --watts"),
                      (["--thermal-seconds", "6", "--thermal-window", "5"], "two --thermal-window")):
        with pytest.raises(SystemExit):
            suite.main(argv)
        assert msg in capsys.readouterr().err


@pytest.mark.slow
def test_bench_runs_tiers_and_peers_on_the_default_model(tmp_path, smollm2_dir):
    """Three runners in their own processes, energy from a stated 10 W, a 2-s thermal run."""
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    peers = "torch-cpu" + (",llama.cpp-1t" if R.package_of("llama.cpp") and suite._available("llama.cpp") is None
                           else "")
    rc = suite.main(["--tiers", "numpy,single-thread,mlx-cpu", "--peers", peers, "--prompt-tokens", "12,20",
                     "--gen-tokens", "5,3", "--trials", "2", "--energy", "estimate", "--watts", "10",
                     "--thermal-seconds", "2", "--thermal-window", "1", "--out", str(out)])
    assert rc == 0
    report = json.loads((out / "bench.json").read_text())
    assert not [r for r in report["results"] if "error" in r], report["results"]
    names = [r["runner"] for r in report["results"]]
    assert names[:4] == ["numpy", "single-thread", "mlx-cpu", "torch-cpu"]
    for r in report["results"]:
        assert len(r["trials"]) == 8
        assert {(t["prompt_tokens"], t["gen_tokens"]) for t in r["trials"]} == {(12, 5), (12, 3), (20, 5), (20, 3)}
        assert r["meter"]["measured"] is False and "estimate" in r["meter"]["label"]
        for t in r["trials"]:
            assert len(t["tokens"]) == t["gen_tokens"] and t["ttft_s"] > 0 and t["gen_tps"] > 0
            # A stated 10 W: joules are 10 x the seconds of each phase.
            assert t["energy"]["j_per_gen_token"] == pytest.approx(10 * t["gen_s"] / (t["gen_tokens"] - 1), rel=1e-6)
            assert t["energy"]["j_per_prompt_token"] == pytest.approx(10 * t["ttft_s"] / t["prompt_tokens"], rel=1e-6)
        assert r["rss_peak_bytes"] > 100e6
    single = next(r for r in report["results"] if r["runner"] == "single-thread")
    assert single["info"]["threads"] == 1
    if hasattr(os, "sched_setaffinity"):
        assert single["info"]["pinned_cpu"] is not None
    mlx_run = next(r for r in report["results"] if r["runner"] == "mlx-cpu")
    assert 200e6 < mlx_run["trials"][0]["peak_bytes"] < 1e9  # MLX's own peak: float32 weights + activations
    numpy_run = next(r for r in report["results"] if r["runner"] == "numpy")
    assert numpy_run["trials"][0]["peak_bytes"] > 500e6  # float32 weights of a 135M model
    # Same float32 values, same prompt, greedy: the same tokens (MLX's CPU tier also runs float32
    # but sums in another order, llama.cpp its own Q4_1 arithmetic; a near-tie may part them).
    float32 = [row for row in report["summary"] if row["runner"] in ("numpy", "single-thread", "torch-cpu")]
    assert len(float32) == 12 and all(row["agree"] == 1.0 and row["agree_with"] == "numpy" for row in float32)
    assert {(r["tier"], r["peer"]) for r in report["ratios"]} >= {("numpy", "torch-cpu"), ("single-thread", "torch-cpu")}
    th = report["thermal"]
    assert th["runner"] in ("numpy", "single-thread", "mlx-cpu")
    windows = th["thermal"]["windows"]
    assert len(windows) == 2 and all(w["tokens"] > 0 and w["watts"] == pytest.approx(10.0) for w in windows)
    assert "drop_pct" in th["thermal"]["verdict"]
    assert (out / "throughput.png").stat().st_size > 10_000 and (out / "thermal.png").stat().st_size > 5_000


class _FakeRunner(R.Runner):
    """Tokens at a fixed pace: the prompt takes 1 ms per token, each new token 2 ms."""

    def generate(self, ids, n):
        import time

        time.sleep(1e-3 * len(ids))
        for i in range(n):
            if i:
                time.sleep(2e-3)
            yield i


class _FiveWatts:
    """A 'measured' meter at a constant 5 W, so every figure has a value known in advance."""

    name, measured, label = "fake", True, "5 W (test)"

    def mark(self):
        import time

        return time.perf_counter()

    def joules(self, t0, t1):
        return {"total": 5.0 * (t1 - t0)}


def test_speed_splits_energy_at_the_first_token_and_measures_prefill_back_to_back():
    runner, meter = _FakeRunner("fake"), _FiveWatts()
    spec = {"prompts": [[1] * 10, [1] * 20], "gen_tokens": [4], "trials": 2, "warmup": 1, "energy_seconds": 0.05}
    trials, prefill = suite._speed(runner, spec, meter)
    assert [t["prompt_tokens"] for t in trials] == [10, 10, 20, 20]
    assert [p["prompt_tokens"] for p in prefill] == [10, 20]
    result = {"runner": "fake", "form": "x", "trials": trials, "prefill_energy": prefill, "meter": {"measured": True}}
    for rec in trials:
        rec["energy"] = suite._energy(meter, rec)
        t0, t1, t2 = rec.pop("_marks")
        assert rec["energy"]["prompt_j"] == pytest.approx(5 * (t1 - t0))
        assert rec["energy"]["j_per_gen_token"] == pytest.approx(5 * (t2 - t1) / 3)
        assert rec["gen_tps"] == pytest.approx(3 / (t2 - t1)) and rec["gen_tps"] < 3 / 6e-3
    for rec in prefill:
        a, b = rec.pop("_marks")
        assert rec["runs"] >= 2 and b - a >= 0.05
        rec["j_per_prompt_token"] = meter.joules(a, b)["total"] / (rec["runs"] * rec["prompt_tokens"])
        # ~1 ms per prompt token at 5 W: ~5 mJ per prompt token (sleep overshoots a little).
        assert 5e-3 <= rec["j_per_prompt_token"] < 8e-3
    rows = suite._summary(result)
    assert [r["j_per_prompt_token"] for r in rows] == [p["j_per_prompt_token"] for p in prefill]
    gen_j = sum(t["energy"]["gen_j"] for t in trials[:2]) / 6
    assert rows[0]["j_per_gen_token"] == pytest.approx(gen_j)


def test_report_reprints_a_saved_run(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    ours = _result("numpy", "q4", [100, 120], [30, 31], [1, 2], energy=(0.01, 0.5))
    peer = _result("torch-cpu", "q4", [90, 95], [10, 11], [1, 2])
    report = {"machine": "m", "commit": "c", "args": {"gen_tokens": 5, "trials": 2, "warmup": 1, "rounds": 1},
              "results": [ours, peer], "summary": suite._summary(ours) + suite._summary(peer), "notes": []}
    suite.agreement(report["summary"])
    report["ratios"] = suite.ratios(report["summary"])
    saved = tmp_path / "bench.json"
    saved.write_text(json.dumps(report))
    assert suite.main(["--report", str(saved), "--out", str(tmp_path / "plots")]) == 0
    out = capsys.readouterr().out
    assert "| q4 | 16 | 5 | numpy | torch-cpu | 1.19x | 2.90x | — |" in out
    assert (tmp_path / "plots" / "throughput.png").stat().st_size > 5_000
    with pytest.raises(SystemExit):
        suite.main(["--report", str(tmp_path / "missing.json")])
    assert "not a readable bench.json" in capsys.readouterr().err


class _SlowProbe:
    """An OS signal that takes 50 ms to read and reports throttling from the second window on."""

    name = "fake-os"

    def __init__(self):
        self.calls = 0

    def signal(self):
        import time

        time.sleep(0.05)
        self.calls += 1
        hot = self.calls > 2  # the first call is the baseline
        return {"probe": self.name, "throttled": hot, "reason": "hot" if hot else "", "sample": {"n": self.calls}}


def test_thermal_windows_exclude_probe_time_and_take_the_os_verdict():
    runner, probe = _FakeRunner("fake"), _SlowProbe()
    spec = {"prompts": [[1] * 4], "gen_tokens": [16], "thermal_seconds": 0.6, "thermal_window": 0.2}
    t = suite._thermal(runner, spec, None, [probe])
    assert len(t["windows"]) == 3 and probe.calls == 1 + 3
    for w in t["windows"]:
        assert 0.2 <= w["end_s"] - w["start_s"] < 0.2 + 0.04  # the 50-ms probe read is not in the window
        assert w["tps"] == pytest.approx(w["tokens"] / (w["end_s"] - w["start_s"]))
    assert [s["window"] for s in t["signals"]] == [0, 1, 2]
    assert t["verdict"]["throttled"] is True and "fake-os: hot" in t["verdict"]["basis"]
