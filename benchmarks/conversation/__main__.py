"""python -m mlx_synapse.benchmarks.conversation: the conversation-memory suite.

    python -m mlx_synapse.benchmarks.conversation --split dev --systems assistant,plain_rag --limit 40 \\
        --out results/conversation_dev.json
    python -m mlx_synapse.benchmarks.conversation --split heldout --only locomo --out results/locomo_heldout.json

Per category (and per facts-per-user scale) the share of right answers with a Wilson
95% interval, the wrong-abstention rate on answerable questions and how often an old
value was named; the systems in the same run and table. LoCoMo-style evidence recall@k
of the bank; retrieval time per turn at ``--timing-memories`` memories and time to first
token with and without memory.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

PARTS = ("categories", "scale", "locomo", "timing")


def setup_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mlx_synapse.benchmarks.conversation",
                                description="Conversation-memory evaluation (categories with 95% CIs, scale, "
                                            "LoCoMo-style evidence recall, timings).")
    p.add_argument("--split", choices=("dev", "heldout"), default="dev",
                   help="dev: tune on it; heldout: only for the reported figure")
    p.add_argument("--systems", default="assistant,plain_rag", help="comma-separated: assistant, plain_rag")
    p.add_argument("--limit", type=int, default=40, help="questions per category and per scale")
    p.add_argument("--scales", default="1,10,100,1000", help="facts per user for the scale runs")
    p.add_argument("--scale-limit", type=int, default=None, help="questions per scale (default: --limit)")
    p.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts to run: {', '.join(PARTS)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--model", default=None, help="model directory or .gguf (default: SmolLM2-135M-Instruct)")
    p.add_argument("--backend", default="numpy")
    p.add_argument("--locomo-dialogues", type=int, default=10)
    p.add_argument("--locomo-file", default=None,
                   help="the public LoCoMo data (locomo10.json, its zip, or a folder of its .json files): "
                        "evidence recall measured on it too (part 'locomo')")
    p.add_argument("--timing-memories", type=int, default=10000)
    p.add_argument("--timing-queries", type=int, default=20)
    p.add_argument("--out", default=None, help="write every question, reply and figure here (JSON)")
    return p


def _list(s: str, allowed: Sequence[str], what: str) -> List[str]:
    items = [x.strip() for x in s.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad or not items:
        raise ValueError(f"{what} {s!r}: unknown {', '.join(bad) or '(empty)'}; choose from {', '.join(allowed)}.")
    return items


def check_args(args) -> Dict[str, Any]:
    from .systems import SYSTEMS

    systems = _list(args.systems, list(SYSTEMS), "--systems")
    parts = _list(args.only, PARTS, "--only")
    try:
        scales = [int(x) for x in args.scales.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"--scales {args.scales!r}: give whole numbers separated by commas, e.g. 1,10,100.") from None
    if args.scale_limit is None:
        args.scale_limit = args.limit
    for name, v in (("--limit", args.limit), ("--scale-limit", args.scale_limit), ("--max-tokens", args.max_tokens),
                    ("--locomo-dialogues", args.locomo_dialogues), ("--timing-memories", args.timing_memories),
                    ("--timing-queries", args.timing_queries), *(("--scales", s) for s in scales)):
        if v < 1:
            raise ValueError(f"{name} must be >= 1 but got {v}.")
    if args.locomo_file and not Path(args.locomo_file).exists():
        raise FileNotFoundError(f"--locomo-file {args.locomo_file} not found; give the path of locomo10.json "
                                "(github.com/snap-research/locomo, data/locomo10.zip) or leave it out.")
    if args.out and not Path(args.out).resolve().parent.is_dir():
        raise ValueError(f"--out {args.out}: the folder {Path(args.out).resolve().parent} does not exist; create it.")
    return dict(systems=systems, parts=parts, scales=scales)


def _bar(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, dynamic_ncols=True)


def run(args, systems: List[str], parts: List[str], scales: List[int], save=None) -> Dict[str, Any]:
    from mlx_synapse.benchmarks.common import commit, machine
    from mlx_synapse.memory import MemoryBank
    from mlx_synapse.memory.encoders import MiniLMEncoder

    from . import locomo, runner
    from .families import CATEGORIES
    from .generator import build_scale_user
    from .systems import AssistantSystem, make_system

    res: Dict[str, Any] = dict(
        command="python -m mlx_synapse.benchmarks.conversation " + " ".join(shlex.quote(a) for a in args.argv),
        machine=machine(), commit=commit(), split=args.split, seed=args.seed, limit=args.limit, scale_limit=args.scale_limit, max_tokens=args.max_tokens,
        systems=systems, model=args.model or "SmolLM2-135M-Instruct Q4_1 (default)", backend=args.backend)
    t_start = time.perf_counter()
    enc = MiniLMEncoder()
    need_model = bool({"categories", "scale", "timing"} & set(parts))
    model = tok = None
    if need_model:
        from mlx_synapse import load

        model, tok = load(args.model, backend=args.backend)
    with tempfile.TemporaryDirectory() as tmp:
        def bank(name: str, **kw):
            return MemoryBank(Path(tmp) / f"{name}.db", encoder=enc, backend="numpy", policy="lru", **kw)

        def fresh(tag: str):  # each system over a bank of its own (plain RAG never merges)
            return {n: make_system(n, model, tok, bank(f"{tag}-{n}", **({"dedup": None} if n == "plain_rag" else {})),
                                   args.max_tokens) for n in systems}

        rows: List[dict] = []
        if "categories" in parts:
            users = runner.pick_users(args.split, args.limit, args.seed)
            with _bar(sum(len(u.questions) for u in users) * len(systems), "categories") as bar:
                rows += runner.run_users(fresh("cat"), users, bar.update)
            if save is not None:
                save(dict(res, summary=runner.summarize(rows), rows=rows, partial=True))
        if "scale" in parts:
            groups = runner.scale_users(args.split, scales, args.scale_limit, args.seed)
            with _bar(sum(len(u.questions) for us in groups.values() for u in us) * len(systems), "scale") as bar:
                for s, us in groups.items():
                    rows += runner.run_users(fresh(f"scale{s}"), us, bar.update, label=f"scale {s}")
                    if save is not None:
                        save(dict(res, summary=runner.summarize(rows), rows=rows, partial=True))
        if rows:
            res["summary"] = runner.summarize(rows)
            res["rows"] = rows
        if "locomo" in parts:
            ds = locomo.build_dialogues(args.split, args.locomo_dialogues, args.seed)
            with _bar(len(ds), "locomo") as bar:
                res["locomo"] = locomo.evidence_recall(bank("locomo", dedup=None), ds, progress=bar)
            if args.locomo_file:
                pub = locomo.load_locomo(args.locomo_file)
                with _bar(len(pub), "locomo (public)") as bar:
                    res["locomo_public"] = locomo.evidence_recall(bank("locomo-public", dedup=None), pub, progress=bar)
                res["locomo_public"]["file"] = str(args.locomo_file)
            if save is not None:
                save(dict(res, partial=True))
        if "timing" in parts:
            texts: List[str] = []
            i = 0
            while len(set(texts)) < args.timing_memories:
                texts += [m.text for m in build_scale_user(args.split, 1000, 1, seed=10_000 + i).messages]
                i += 1
            texts = list(dict.fromkeys(texts))[:args.timing_memories]
            b = bank("timing", dedup=None)
            a = AssistantSystem(model, tok, b, max_tokens=1)
            qs = [q.text for u in runner.pick_users(args.split, 3, args.seed + 1) for q in u.questions]
            qs = qs[:args.timing_queries]
            res["timing"] = dict(retrieval=runner.retrieval_timing(a._for("t"), b, "t", texts, qs))
            tb = bank("ttft")
            w, wo = AssistantSystem(model, tok, tb, max_tokens=1), AssistantSystem(model, tok, tb, max_tokens=1)
            u = build_scale_user(args.split, 100, args.timing_queries, seed=20_000)  # asked about its own facts
            w.ingest(u.id, u.messages)
            res["timing"]["ttft"] = runner.ttft_timing(w, wo, u.id, [q.text for q in u.questions])
    res["seconds"] = time.perf_counter() - t_start
    return res


def report(res: Dict[str, Any]) -> str:
    from .runner import table

    out = [f"split: {res['split']}  limit: {res['limit']} questions per category, {res.get('scale_limit')} per scale  "
           f"model: {res['model']}  backend: {res['backend']}"]
    if res.get("summary"):
        out += ["", table(res["summary"], "right"), "", table(res["summary"], "wrong_abstention"),
                "", table(res["summary"], "old_value")]
    for key, what in (("locomo", "LoCoMo-style evidence recall (generated dialogues)"),
                      ("locomo_public", "LoCoMo evidence recall (public snap-research/locomo data)")):
        lo = res.get(key)
        if lo:
            out += ["", f"{what}: {lo['dialogues']} dialogues, {lo['turns']:.0f} turns each on average, "
                        f"{lo['questions']} questions, {lo['evidence_per_question']:.2f} evidence turns per question"]
            out += [f"  {k}: {v:.3f}" for k, v in lo.items() if k.startswith("recall@")]
    if res.get("timing"):
        r, t = res["timing"]["retrieval"], res["timing"]["ttft"]
        out += ["", f"retrieval per turn at {r['memories']} memories (search + re-rank, encoding excluded): "
                    f"p50 {r['retrieval_ms_p50']:.2f} ms, p90 {r['retrieval_ms_p90']:.2f} ms "
                    f"(without the access-count write {r['search_no_touch_ms_p50']:.2f} ms; "
                    f"query encoding p50 {r['encode_ms_p50']:.1f} ms)",
                f"time to first token: with memory {1e3 * t['ttft_s_p50_with']:.0f} ms, without "
                f"{1e3 * t['ttft_s_p50_without']:.0f} ms (p50 of {t['questions']}; ratio {t['ratio']:.2f}x)"]
    out.append(f"\n{res['seconds']:.0f} s")
    return "\n".join(out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = setup_arg_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        checked = check_args(args)
        save = None
        if args.out:
            def save(r):
                Path(args.out).write_text(json.dumps(r, indent=1, default=str))
        res = run(args, **checked, save=save)
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report(res))
    if args.out:
        Path(args.out).write_text(json.dumps(res, indent=1, default=str))
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
