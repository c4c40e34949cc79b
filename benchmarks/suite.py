"""Tokens/s, time to first token, peak memory, energy per token and thermal
throttling of this package's tiers beside its peers, in one run.

    python -m mlx_synapse.bench                                  # default model, everything this machine has
    python -m mlx_synapse.bench --forms q4,bf16 --prompt-tokens 128,512 --gen-tokens 128 --trials 3
    python -m mlx_synapse.bench --tiers numpy --peers llama.cpp --energy estimate --watts 7 --thermal-seconds 0

Every runner (see ``benchmarks/runners.py``) runs in a process of its own, so
thread settings, the peak RSS and the backend's allocator belong to it alone.
For each prompt length and generation length it does one uncounted warm-up and
``--trials`` timed runs of that many greedy tokens (EOS ignored) on the same token ids.
Prompt tokens/s = prompt length / time to the first token; generation
tokens/s = (tokens - 1) / time after the first token.  Energy comes from the
meter picked for the runner's device (``benchmarks/energy.py``), split at the
first token into prompt and generation joules; an estimate is labelled as one
and never mixed with measured figures.  The thermal run generates for
``--thermal-seconds`` and reports tokens/s per ``--thermal-window`` with the
OS's own thermal signal (``benchmarks/thermal.py``).

Output: a markdown table on stdout, ``bench.json`` (machine, commit, versions,
every trial) and PNG plots in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from . import runners as R
from .common import commit, machine, prepare_forms, prompt_ids, versions

DEFAULT_OUT = "mlx_synapse_bench"


# --------------------------------------------------------------------------- worker (one runner, one process)


def _meter_device(runner: R.Runner) -> str:
    device = str(runner.info.get("device", "cpu"))
    if "cuda" in device:
        return "cuda"
    if "metal" in device:
        return "metal"
    return "cpu"


def _rss_peak_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)  # bytes on macOS, KiB on Linux


def _time_run(runner: R.Runner, ids: list, n: int, meter) -> dict:
    """One timed generation: marks at the start, the first token and the end."""
    mark = meter.mark if meter is not None else time.perf_counter
    runner.reset_peak()
    tokens = []
    t0 = mark()
    t1 = None
    for tok in runner.generate(ids, n):
        tokens.append(tok)
        if t1 is None:
            t1 = mark()
    t2 = mark()
    if len(tokens) != n:
        raise RuntimeError(f"{runner.name} produced {len(tokens)} tokens instead of {n}")
    return {"prompt_tokens": len(ids), "gen_tokens": n, "ttft_s": t1 - t0, "prompt_tps": len(ids) / (t1 - t0),
            "gen_s": t2 - t1, "gen_tps": (n - 1) / (t2 - t1), "peak_bytes": runner.peak_bytes(),
            "tokens": tokens, "_marks": (t0, t1, t2)}


def _energy(meter, rec: dict) -> Optional[dict]:
    if meter is None:
        return None
    t0, t1, t2 = rec["_marks"]
    prompt = meter.joules(t0, t1)
    gen = meter.joules(t1, t2)
    out = {"prompt_j": prompt["total"], "gen_j": gen["total"],
           "j_per_prompt_token": prompt["total"] / rec["prompt_tokens"],
           "j_per_gen_token": gen["total"] / max(rec["gen_tokens"] - 1, 1),
           "prompt_components_j": prompt, "gen_components_j": gen}
    return out


def _speed(runner: R.Runner, spec: dict, meter) -> tuple:
    """(timed trials, back-to-back prefill runs for energy)."""
    trials, prefill = [], []
    for ids in spec["prompts"]:
        for n in spec["gen_tokens"]:
            for trial in range(spec["warmup"] + spec["trials"]):
                rec = _time_run(runner, ids, n, meter)
                if trial >= spec["warmup"]:
                    rec["trial"] = trial - spec["warmup"]
                    trials.append(rec)
    if meter is not None and meter.measured:
        prefill = [_prefill_energy(runner, ids, meter, spec["energy_seconds"]) for ids in spec["prompts"]]
    if isinstance(runner, R.NumpyRunner):  # the NumPy backend keeps no allocator statistics: trace one extra run
        for ids in spec["prompts"]:
            peak = runner.traced_peak(ids, max(spec["gen_tokens"]))
            for rec in trials:
                if rec["prompt_tokens"] == len(ids):
                    rec["peak_bytes"] = peak
    return trials, prefill


def _prefill_energy(runner: R.Runner, ids: list, meter, seconds: float) -> dict:
    """Energy to the first token, over back-to-back prompt runs lasting ``seconds``: one
    prefill can be shorter than a meter's update interval (NVML's is tens of ms)."""
    runs = 0
    t0 = meter.mark()
    while True:
        for _ in runner.generate(ids, 1):
            pass
        runs += 1
        if time.perf_counter() - t0 >= seconds:
            break
    return {"prompt_tokens": len(ids), "runs": runs, "_marks": (t0, meter.mark())}


def _thermal(runner: R.Runner, spec: dict, meter, probes: list) -> dict:
    """Generate for ``seconds``; tokens per window and the OS signals at each window's end."""
    from .thermal import verdict

    seconds, window = spec["thermal_seconds"], spec["thermal_window"]
    ids = spec["prompts"][0]
    mark = meter.mark if meter is not None else time.perf_counter
    for _ in runner.generate(ids, 8):  # warm-up
        pass
    windows, signals = [], []
    baseline = [p.signal() for p in probes]
    start = w_start = mark()
    boundary, stop_at, count = start + window, start + seconds, 0
    done = False
    while not done:
        for _ in runner.generate(ids, max(spec["gen_tokens"])):
            count += 1
            now = time.perf_counter()
            if now < boundary:
                continue
            w_end = mark()
            windows.append({"start_s": w_start - start, "end_s": w_end - start, "tokens": count,
                            "tps": count / (w_end - w_start), "_marks": (w_start, w_end)})
            signals += [dict(p.signal(), window=len(windows) - 1) for p in probes]
            if w_end >= stop_at - 1e-3:
                done = True
                break
            # Reading the OS signals (a subprocess on macOS) is not generation time.
            w_start = mark() if probes else w_end
            count, boundary = 0, w_start + window
    return {"seconds": seconds, "window_s": window, "prompt_tokens": len(ids), "restart_every": max(spec["gen_tokens"]),
            "windows": windows, "baseline": baseline, "signals": signals,
            "verdict": verdict([w["tps"] for w in windows], signals)}


def run_worker(spec: dict) -> dict:
    """Load one runner and time it as ``spec`` says; returns the JSON-able result."""
    from .energy import pick_meter
    from .thermal import pick_probes

    pinned = R.pin_one_core() if spec["runner"] in R.ONE_THREAD else None
    tic = time.perf_counter()
    runner = R.build_runner(spec["runner"], model_dir=spec["model_dir"], torch_dir=spec.get("torch_dir"),
                            gguf=spec.get("gguf"), threads=spec["threads"],
                            n_ctx=max(len(p) for p in spec["prompts"]) + max(spec["gen_tokens"]) + 16)
    load_s = time.perf_counter() - tic
    device = _meter_device(runner)
    meter, notes = pick_meter(spec["energy"], device=device, watts=spec.get("watts"), gpu_index=spec.get("gpu_index", 0))
    result = {"runner": spec["runner"], "form": spec["form"], "info": dict(runner.info, pinned_cpu=pinned),
              "load_s": load_s, "meter": meter.describe() if meter else None, "meter_notes": notes}
    if meter is not None:
        meter.start()
    try:
        if spec["mode"] == "thermal":
            probes, probe_notes = pick_probes(device, powermetrics_meter=meter if meter and meter.name == "powermetrics"
                                              else None, gpu_index=spec.get("gpu_index", 0))
            result["probes"] = [p.describe() for p in probes]
            result["probe_notes"] = probe_notes
            result["thermal"] = _thermal(runner, spec, meter, probes)
        else:
            result["trials"], result["prefill_energy"] = _speed(runner, spec, meter)
    finally:
        if meter is not None:
            meter.stop()
    if spec["mode"] == "thermal":
        for w in result["thermal"]["windows"]:
            a, b = w.pop("_marks")
            if meter is not None:
                w["watts"] = meter.joules(a, b)["total"] / (b - a)
    else:
        for rec in result["trials"]:
            rec["energy"] = _energy(meter, rec)
            rec.pop("_marks")
        for rec in result["prefill_energy"]:
            a, b = rec.pop("_marks")
            rec["seconds"], rec["joules"] = b - a, meter.joules(a, b)["total"]
            rec["j_per_prompt_token"] = rec["joules"] / (rec["runs"] * rec["prompt_tokens"])
    result["rss_peak_bytes"] = _rss_peak_bytes()
    return result


# --------------------------------------------------------------------------- parent (plans, spawns, reports)


def _summary(result: dict) -> list:
    """Medians per (prompt length, generation length) of one runner's trials."""
    rows = []
    by_len: dict = {}
    for rec in result.get("trials", []):
        by_len.setdefault((rec["prompt_tokens"], rec["gen_tokens"]), []).append(rec)
    prefill: dict = {}
    for r in result.get("prefill_energy", []):
        prefill.setdefault(r["prompt_tokens"], []).append(r["j_per_prompt_token"])
    prefill = {k: statistics.median(v) for k, v in prefill.items()}
    for (plen, glen), recs in sorted(by_len.items()):
        def med(key, sub=None):
            vals = [(r[sub] or {}).get(key) if sub else r.get(key) for r in recs]
            vals = [v for v in vals if v is not None]
            return statistics.median(vals) if vals else None

        # Generation energy: all trials' joules over all their tokens (one trial's span can be
        # near a meter's resolution); prompt energy: the back-to-back prefill run when there is one.
        energies = [r["energy"] for r in recs if r.get("energy")]
        gen_j = (sum(e["gen_j"] for e in energies) / sum(r["gen_tokens"] - 1 for r in recs)
                 if len(energies) == len(recs) and energies else None)

        rows.append({"runner": result["runner"], "form": result["form"], "prompt_tokens": plen, "gen_tokens": glen,
                     "prompt_tps": med("prompt_tps"), "gen_tps": med("gen_tps"), "ttft_s": med("ttft_s"),
                     "peak_bytes": med("peak_bytes"), "rss_peak_bytes": result.get("rss_peak_bytes"),
                     "j_per_prompt_token": prefill.get(plen, med("j_per_prompt_token", "energy")),
                     "j_per_gen_token": gen_j,
                     "measured_energy": bool(result.get("meter") and result["meter"].get("measured")),
                     "trials": len(recs), "tokens": recs[0]["tokens"]})
        dbytes = (result.get("info") or {}).get("decode_bytes")
        if dbytes and rows[-1]["gen_tps"]:
            rows[-1]["gen_gbps"] = rows[-1]["gen_tps"] * dbytes / 1e9  # weight bytes streamed per second
    return rows


def _case(row: dict) -> tuple:
    """What makes two rows comparable: the same weights, prompt length and generation length."""
    return row["form"], row["prompt_tokens"], row.get("gen_tokens")


REFERENCE_ORDER = ("numpy", "torch-cpu", "torch")  # float32 / exact dequantized weights first


def agreement(rows: list) -> None:
    """Set each row's ``agree``: the share of its greedy tokens, up to the first difference, that
    equal the reference runner's on the same weights and prompt (the NumPy tier where it ran:
    float32 on the exact dequantized weights; else PyTorch; else the first runner)."""
    refs: dict = {}
    for row in rows:
        key = _case(row)
        rank = REFERENCE_ORDER.index(row["runner"]) if row["runner"] in REFERENCE_ORDER else len(REFERENCE_ORDER)
        if key not in refs or rank < refs[key][0]:
            refs[key] = (rank, row["runner"], row["tokens"])
    for row in rows:
        _, name, ref = refs[_case(row)]
        same = 0
        for a, b in zip(row["tokens"], ref):
            if a != b:
                break
            same += 1
        row["agree"] = same / max(len(ref), 1)
        row["agree_with"] = name


def summarize(report: dict) -> None:
    """(Re)compute the summary rows, token agreement and ratios from the raw results."""
    report["summary"] = [row for r in report["results"] for row in _summary(r)]
    agreement(report["summary"])
    report["ratios"] = ratios(report["summary"])


def _spawn(spec: dict, timeout: float, env: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="mlx_synapse_bench.") as tmp:
        spec_path, out_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps(spec))
        cmd = [sys.executable, "-m", "mlx_synapse.benchmarks.suite", "--worker", str(spec_path), str(out_path)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        except subprocess.TimeoutExpired:
            return {"runner": spec["runner"], "form": spec["form"],
                    "error": f"timed out after {timeout:.0f} s (raise --timeout to let it finish)"}
        if proc.returncode != 0 or not out_path.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-6:]
            return {"runner": spec["runner"], "form": spec["form"], "error": " | ".join(tail) or f"exit {proc.returncode}"}
        return json.loads(out_path.read_text())


def merge_rounds(into: Optional[dict], result: dict, rnd: int) -> dict:
    """One result per runner across rounds: trials and prefill runs appended (tagged with their
    round), the larger RSS peak kept; a failed round is recorded as such."""
    for rec in result.get("trials", []) + result.get("prefill_energy", []):
        rec["round"] = rnd
    if into is None:
        return result
    if "error" in result or "error" in into:
        into.setdefault("round_errors", []).append(result.get("error") or into.pop("error"))
        if "trials" not in into and "trials" in result:
            result["round_errors"] = into["round_errors"]
            return result
        return into
    into["trials"] += result["trials"]
    into["prefill_energy"] = into.get("prefill_energy", []) + result.get("prefill_energy", [])
    into["rss_peak_bytes"] = max(into["rss_peak_bytes"], result["rss_peak_bytes"])
    into["load_s"] = min(into["load_s"], result["load_s"])
    return into


def _available(name: str) -> Optional[str]:
    """None when the runner can run here, else why not."""
    import importlib.util

    need = {"mlx-lm": "mlx_lm", "torch": "transformers", "llama.cpp": "llama_cpp"}.get(R.package_of(name))
    if need and importlib.util.find_spec(need) is None:
        return f"{name}: not installed ({R.INSTALL[R.package_of(name)]})"
    if need == "transformers" and importlib.util.find_spec("torch") is None:
        return f"{name}: not installed ({R.INSTALL['torch']})"
    if name.startswith(("mlx", "mlx-lm")) and importlib.util.find_spec("mlx") is None:
        return f"{name}: MLX is not installed (pip install mlx)"
    if name == "mlx-gpu" and not R.gpu_available():
        return "mlx-gpu: MLX has no GPU on this machine"
    return None


def plan_runners(tiers: str, peers: str) -> tuple:
    """(runner names, notes on what was left out and why)."""
    notes = []
    if tiers == "auto":
        names = [t for t in R.TIERS if t != "mlx-gpu" or R.gpu_available()]
    else:
        names = [t for t in tiers.split(",") if t and t != "none"]
    if peers == "auto":
        why = {p: _available(p) for p in ("mlx-lm", "torch", "llama.cpp", "llama.cpp-1t")}
        names += [p for p, w in why.items() if w is None]
        notes += [w for w in why.values() if w is not None]
    else:
        names += [p for p in peers.split(",") if p and p != "none"]
    for n in names:
        if n not in R.TIERS + R.PEERS:
            raise SystemExit(f"error: unknown runner {n!r}; tiers: {', '.join(R.TIERS)}; peers: {', '.join(R.PEERS)}")
    kept = []
    for n in dict.fromkeys(names):
        why = _available(n)
        if why:
            notes.append(why)
        else:
            kept.append(n)
    return kept, notes


def measure_idle(kind: str, watts: Optional[float], seconds: float, device: str, gpu_index: int = 0) -> Optional[dict]:
    """Power of the idle machine over ``seconds`` by the same meter (measured meters only)."""
    from .energy import pick_meter

    meter, _ = pick_meter(kind, device=device, watts=watts, gpu_index=gpu_index)
    if meter is None or not meter.measured or seconds <= 0:
        return None
    meter.start()
    try:
        t0 = meter.mark()
        time.sleep(seconds)
        t1 = meter.mark()
    finally:
        meter.stop()
    j = meter.joules(t0, t1)
    return {"meter": meter.label, "seconds": t1 - t0, "watts": j["total"] / (t1 - t0),
            "components_w": {k: v / (t1 - t0) for k, v in j.items()}}


def ratios(rows: list) -> list:
    """Every tier against every peer on the same weights, prompt length and generation length."""
    out = []
    for a in rows:
        if a["runner"] not in R.TIERS:
            continue
        for b in rows:
            if b["runner"] not in R.PEERS or _case(a) != _case(b):
                continue
            r = {"form": a["form"], "prompt_tokens": a["prompt_tokens"], "gen_tokens": a["gen_tokens"],
                 "tier": a["runner"], "peer": b["runner"]}
            for key in ("prompt_tps", "gen_tps"):
                r[key] = a[key] / b[key] if a[key] and b[key] else None
            ja, jb = a["j_per_gen_token"], b["j_per_gen_token"]
            r["j_per_gen_token"] = ja / jb if ja and jb and a["measured_energy"] == b["measured_energy"] else None
            out.append(r)
    return out


def _fmt(v, spec=".1f", scale=1.0, suffix=""):
    return "—" if v is None else f"{v * scale:{spec}}{suffix}"


def print_tables(report: dict, file=None) -> None:
    p = lambda *a: print(*a, file=file or sys.stdout)  # noqa: E731
    p(f"# {report['machine']}; commit {report['commit']}; median of {report['args']['trials']} trials x {report['args'].get('rounds', 1)} round(s), each process "
      f"after {report['args']['warmup']} warm-up")
    p("")
    p("| weights | runner | backend | device | prompt | gen | prompt tok/s | gen tok/s | TTFT ms | backend peak MB | "
      "RSS peak MB | J/prompt tok | J/gen tok | same tokens | gen GB/s |")
    p("| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    info = {(r["runner"], r["form"]): r.get("info", {}) for r in report["results"]}
    for row in report["summary"]:
        i = info.get((row["runner"], row["form"]), {})
        est = "" if row["measured_energy"] else " (est.)"
        p(f"| {row['form']} | {row['runner']} | {i.get('backend', '')} | {i.get('device', '')} | "
          f"{row['prompt_tokens']} | {row['gen_tokens']} | {_fmt(row['prompt_tps'])} | {_fmt(row['gen_tps'])} | "
          f"{_fmt(row['ttft_s'], '.0f', 1e3)} | {_fmt(row['peak_bytes'], '.0f', 1e-6)} | "
          f"{_fmt(row['rss_peak_bytes'], '.0f', 1e-6)} | "
          f"{_fmt(row['j_per_prompt_token'], '.4f')}{est if row['j_per_prompt_token'] else ''} | "
          f"{_fmt(row['j_per_gen_token'], '.3f')}{est if row['j_per_gen_token'] else ''} | "
          f"{_fmt(row.get('agree'), '.0f', 100, '%')} | {_fmt(row.get('gen_gbps'))} |")
    bw = report.get("bandwidth")
    if bw:
        p("")
        p("Memory read bandwidth measured here (engine threads streaming 512 MB, best of 5): "
          + ", ".join(f"{v:.1f} GB/s on {k} thread(s)" for k, v in sorted(bw.items(), key=lambda kv: int(kv[0]))))
        p("gen GB/s = generation tok/s x the weight bytes the engine reads per token (codes, scales, biases, float rows).")
    for r in report["results"]:
        if "error" in r:
            p(f"| {r['form']} | {r['runner']} | failed: {r['error']} |")
    if report["ratios"]:
        p("")
        p("| weights | prompt | gen | tier | peer | prompt tok/s ratio | gen tok/s ratio | J/gen tok ratio |")
        p("| --- | ---: | ---: | --- | --- | ---: | ---: | ---: |")
        for r in report["ratios"]:
            p(f"| {r['form']} | {r['prompt_tokens']} | {r['gen_tokens']} | {r['tier']} | {r['peer']} | {_fmt(r['prompt_tps'], '.2f', 1, 'x')} "
              f"| {_fmt(r['gen_tps'], '.2f', 1, 'x')} | {_fmt(r['j_per_gen_token'], '.2f', 1, 'x')} |")
    meters = {r["meter"]["label"] for r in report["results"] if r.get("meter")}
    if meters:
        p("")
        p("Energy: " + "; ".join(sorted(meters)))
    if report.get("idle"):
        p(f"Idle power ({report['idle']['meter']}): {report['idle']['watts']:.2f} W over {report['idle']['seconds']:.1f} s")
    th = report.get("thermal")
    if th and "thermal" in th:
        t = th["thermal"]
        v = t["verdict"]
        p("")
        p(f"Thermal run ({th['runner']}, {th['form']}): {t['seconds']:.0f} s, tokens/s per {t['window_s']:.0f}-s window: "
          + ", ".join(f"{w['tps']:.1f}" for w in t["windows"]))
        p(f"  tokens/s of the last window vs the first: {-v['drop_pct']:+.1f}%; OS signal: {v['os_signal']}; "
          f"throttled: {v['throttled']} ({v['basis']})")
    elif th:
        p(f"\nThermal run failed: {th.get('error')}")
    for note in report["notes"]:
        p(f"- {note}")


def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mlx_synapse.bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model directory (or hub id) instead of the default model's forms")
    p.add_argument("--forms", default="q4", help="weight forms of the default model: q4, bf16, f32 (comma list)")
    p.add_argument("--gguf", default=None, help="GGUF file for the llama.cpp peers (default model: found for q4)")
    p.add_argument("--torch-model", default=None, help="float checkpoint for the PyTorch peer (default: the "
                                                       "default model dequantized to float32)")
    p.add_argument("--prompt-tokens", default="128,512", help="prompt lengths, comma separated")
    p.add_argument("--gen-tokens", default="128", help="generation lengths, comma separated (each >= 2)")
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=1, help="run every runner this many times, alternating, "
                                                         "in fresh processes (trials pooled)")
    p.add_argument("--tiers", default="auto", help=f"auto or a comma list of {', '.join(R.TIERS)}")
    p.add_argument("--peers", default="auto", help=f"auto, none or a comma list of {', '.join(R.PEERS)}")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                   else os.cpu_count(), help="threads for the all-core CPU runners")
    p.add_argument("--energy", default="auto", help="auto, powermetrics, nvml, rapl, estimate or none")
    p.add_argument("--watts", type=float, default=None, help="stated power for --energy estimate (or auto's fallback)")
    p.add_argument("--idle-seconds", type=float, default=2.0, help="measure idle power first (measured meters)")
    p.add_argument("--energy-seconds", type=float, default=2.0,
                   help="length of the back-to-back prompt runs that measure prompt energy (measured meters)")
    p.add_argument("--gpu-index", type=int, default=0)
    p.add_argument("--thermal-seconds", type=float, default=45.0, help="sustained run length; 0 skips it")
    p.add_argument("--thermal-window", type=float, default=5.0)
    p.add_argument("--thermal-runner", default=None, help="runner of the sustained run (default: the fastest tier)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds one runner may take before it is stopped")
    p.add_argument("--out", default=DEFAULT_OUT, help="folder for bench.json and the plots")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--report", metavar="JSON", default=None,
                   help="print the tables (and redraw the plots into --out) of a saved bench.json; run nothing")
    p.add_argument("--worker", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.worker:
        spec = json.loads(Path(args.worker[0]).read_text())
        Path(args.worker[1]).write_text(json.dumps(run_worker(spec)))
        return 0

    if args.report:
        try:
            report = json.loads(Path(args.report).read_text())
        except (OSError, ValueError) as e:
            p.error(f"--report {args.report}: not a readable bench.json ({e})")
        summarize(report)
        print_tables(report)
        if not args.no_plots:
            _plots(report, Path(args.out))
        return 0

    try:
        plens = [int(x) for x in args.prompt_tokens.split(",") if x]
    except ValueError:
        p.error(f"--prompt-tokens takes comma-separated integers, got {args.prompt_tokens!r}")
    try:
        glens = [int(x) for x in str(args.gen_tokens).split(",") if x]
    except ValueError:
        p.error(f"--gen-tokens takes comma-separated integers, got {args.gen_tokens!r}")
    if not plens or min(plens) < 1 or not glens or min(glens) < 2 or args.trials < 1 or args.warmup < 0 or args.rounds < 1:
        p.error("need prompt lengths >= 1, --gen-tokens >= 2, --trials >= 1, --rounds >= 1 and --warmup >= 0")
    if args.thermal_seconds and args.thermal_seconds < 2 * args.thermal_window:
        p.error("--thermal-seconds must cover at least two --thermal-window windows (or be 0 to skip)")
    if args.energy == "estimate" and args.watts is None:
        p.error("--energy estimate needs --watts W: the power figure the estimate is stated from")

    names, notes = plan_runners(args.tiers, args.peers)
    if args.model:
        from mlx_synapse.loader import resolve_model_path

        forms = {Path(args.model).name: resolve_model_path(args.model)}
        torch_dir = args.torch_model or str(forms[next(iter(forms))])
    else:
        forms = prepare_forms([f for f in args.forms.split(",") if f])
        torch_dir = args.torch_model or (str(prepare_forms(["f32"])["f32"]) if any(
            R.package_of(n) == "torch" for n in names) else None)
    default_gguf = None
    if args.gguf is None and not args.model and any(R.package_of(n) == "llama.cpp" for n in names):
        from mlx_synapse.defaults import find_default_gguf

        default_gguf = str(find_default_gguf())

    report = {"machine": machine(), "commit": commit(), "versions": versions(), "args": vars(args), "notes": notes,
              "gpu": R.gpu_kind(), "results": [], "summary": [], "ratios": []}
    if args.energy != "none":
        from .energy import pick_meter

        uses_gpu = any(n in ("mlx-gpu", "mlx-lm", "torch") for n in names)
        device = (R.gpu_kind() if uses_gpu else None) or "cpu"
        _, meter_notes = pick_meter(args.energy, device=device, watts=args.watts, gpu_index=args.gpu_index)
        notes += meter_notes
        report["idle"] = measure_idle(args.energy, args.watts, args.idle_seconds, device, args.gpu_index)

    if any(n in ("numpy", "single-thread") for n in names):
        from mlx_synapse.backends.numpy.engine import default_threads
        from mlx_synapse.kernels.native import read_bandwidth

        counts = sorted({1, args.threads or default_threads()})
        bw = {str(t): read_bandwidth(t) for t in counts}
        report["bandwidth"] = {k: v for k, v in bw.items() if v is not None}

    base_env = dict(os.environ)
    for form, path in forms.items():
        ids = [prompt_ids(Path(path), n) for n in plens]
        runs = []
        for name in names:
            gguf = args.gguf or (default_gguf if form == "q4" else None)
            if R.package_of(name) == "llama.cpp" and not gguf:
                notes.append(f"{name} on {form}: no GGUF of these weights (pass --gguf)")
                continue
            if args.peers == "auto" and name == "mlx-lm" and form == "q4" and not R.gpu_available():
                notes.append("mlx-lm on q4: left out with no GPU, since MLX's CPU backend runs 4-bit matmuls "
                             "hundreds of times slower than float ones; ask for it with --peers mlx-lm")
                continue
            runs.append({"runner": name, "form": form, "model_dir": str(path), "torch_dir": torch_dir, "gguf": gguf,
                         "prompts": ids, "gen_tokens": glens, "trials": args.trials, "warmup": args.warmup,
                         "threads": args.threads, "energy": args.energy, "watts": args.watts,
                         "energy_seconds": args.energy_seconds, "gpu_index": args.gpu_index, "mode": "speed"})
        # Rounds alternate the runners (A B C A B C ...) so a slow spell of a shared machine
        # does not fall on one runner alone.
        merged: dict = {}
        for rnd in range(args.rounds):
            for spec in runs:
                name = spec["runner"]
                env = R.one_thread_env(base_env) if name in R.ONE_THREAD else base_env
                print(f"[bench] {form} {name}" + (f" (round {rnd + 1}/{args.rounds})" if args.rounds > 1 else ""),
                      file=sys.stderr, flush=True)
                merged[name] = merge_rounds(merged.get(name), _spawn(spec, args.timeout, env), rnd)
        report["results"] += merged.values()
    summarize(report)

    if args.thermal_seconds > 0:
        ours = [r for r in report["summary"] if r["runner"] in R.TIERS and r["gen_tps"]]
        name = args.thermal_runner or (max(ours, key=lambda r: r["gen_tps"])["runner"] if ours else None)
        if name:
            form = next(iter(forms))
            spec = {"runner": name, "form": form, "model_dir": str(forms[form]), "torch_dir": torch_dir,
                    "gguf": args.gguf or default_gguf, "prompts": [prompt_ids(Path(forms[form]), min(plens))],
                    "gen_tokens": glens, "trials": 0, "warmup": 0, "threads": args.threads,
                    "energy": args.energy, "watts": args.watts, "gpu_index": args.gpu_index, "mode": "thermal",
                    "thermal_seconds": args.thermal_seconds, "thermal_window": args.thermal_window}
            print(f"[bench] thermal run: {form} {name}, {args.thermal_seconds:.0f} s ...", file=sys.stderr, flush=True)
            env = R.one_thread_env(base_env) if name in R.ONE_THREAD else base_env
            report["thermal"] = _spawn(spec, args.timeout + args.thermal_seconds, env)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(report, indent=1))
    print_tables(report)
    if not args.no_plots:
        _plots(report, out)
    print(f"wrote {out / 'bench.json'}")
    return 0


def _plots(report: dict, out: Path) -> None:
    from .plots import plot_report

    out.mkdir(parents=True, exist_ok=True)
    try:
        paths = plot_report(report, out)
    except ImportError:
        print("plots skipped: matplotlib is not installed (pip install matplotlib)")
        return
    for path in paths:
        print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
