"""Does the chat remember? Accuracy on fictional personal facts with and without the
memory bank, against the number of stored facts, after corrections; proof that the
frozen model forgets nothing; and the latency memory adds to a turn.

    python -m mlx_synapse.benchmarks.personalization [--facts 300] [--questions-per-fact 2]
        [--ask 100] [--scales 1 10 100 1000] [--scale-questions 20] [--corrections 15]
        [--session-questions 40] [--session-turns 5] [--hellaswag 100] [--writes 10000]
        [--max-tokens 24] [--k 3] [--margin M] [--lexical W] [--copy-bonus B] [--skip a b c d e f]
        [--json out.json]

The defaults take ~15 min on a 2-core machine; ``--hellaswag 1000`` adds ~20 min.

Facts, questions and distractors come from :mod:`mlx_synapse.benchmarks.personal_facts`
(seeded). Every turn goes through :class:`mlx_synapse.assistant.Assistant` (greedy,
``--max-tokens`` per reply); "without memory" is the same assistant on a user with an
empty bank, so the prompt is the bare question. A reply is right when a normalised
accepted answer appears in it (whole reply, and first sentence only); no model judges.

(a) accuracy without / with memory (the facts and distractors of one user in a fresh
bank; ``--ask`` questions sampled from facts x questions-per-fact, the same ones in
both conditions) and the difference, the Instant Adaptation Score; also how often the
asked-about fact was among the memories shown (retrieval) and accuracy given that.
(b) accuracy when 1, 10, 100, 1000 facts (+ the distractors) are stored per user; as
many users as it takes to ask ``--scale-questions`` questions.
(c) corrections: ask, say "Actually, it's <new value>." through ``respond`` (so
``learn`` rewrites the memory), ask another paraphrase in a fresh session, score
against the new value.
(d) zero forgetting: SHA-256 of every weight array, WikiText-2 perplexity (first 512
tokens) and HellaSwag accuracy on a seeded sample, with an empty bank and after
``--writes`` bank writes: they must be identical, bit for bit. Without the eval data
(``EVAL_DIR``) the run stops at once with exit status 2 unless ``--skip d``.
(e) latency per turn: retrieval, prompt tokens, time to first token, with and without.
(f) questions asked five to a session, the earlier turns kept in the prompt as in a
chat, against (a)'s fresh sessions.
"""

from __future__ import annotations

import argparse
import bz2
import dataclasses
import hashlib
import json
import math
import os
import platform
import random
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from mlx_synapse.benchmarks.common import EVAL_DIR
from mlx_synapse.benchmarks.personal_facts import (
    FactSet,
    build,
    first_sentence,
    matches,
)


def log(msg: str) -> None:
    print(f"[personalization {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class CachedEncoder:
    """Wraps an encoder and remembers the vectors of texts stored in batches (same
    ``name`` and ``dim``, so the bank sees the same encoder): the benchmark stores the
    same distractors many times. Single texts (queries) are always encoded afresh."""

    def __init__(self, encoder):
        self.inner, self.cache = encoder, {}

    @property
    def name(self):
        return self.inner.name

    @property
    def dim(self):
        return self.inner.dim

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        if len(texts) == 1:  # a query (or a chat write): encoded every time, as in real use
            return self.inner(texts)
        new = list(dict.fromkeys(t for t in texts if t not in self.cache))
        if new:
            for t, v in zip(new, self.inner(new)):
                self.cache[t] = np.asarray(v, np.float32)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([self.cache[t] for t in texts])


# ---------------------------------------------------------------- one turn


@dataclasses.dataclass
class Turn:
    question: str
    reply: str
    right: bool
    right_first: bool
    in_context: bool
    shown: int
    retrieval_ms: float
    prompt_tokens: int
    ttft_s: float
    turn_s: float


def generate(model, tokenizer, ids, max_tokens: int, processors=None):
    """Greedy reply to prompt ``ids``: ``(text, time to first token in s)``."""
    from mlx_synapse.generate import stream_generate

    text, ttft, t0 = "", None, time.perf_counter()
    for r in stream_generate(model, tokenizer, ids, max_tokens=max_tokens, temp=0.0, logits_processors=processors):
        if ttft is None:
            ttft = time.perf_counter() - t0
        text += r.text
    return text.strip(), (ttft or 0.0)


def ask(a, question: str, accepted: Sequence[str], fact_text: Optional[str] = None, gen=generate,
        fresh: bool = True) -> Turn:
    """One turn of assistant ``a`` (no learning), timed piece by piece: in a fresh session,
    or (``fresh=False``) after the session's earlier turns, this one then added to them."""
    if fresh:
        a.reset()
    t0 = time.perf_counter()
    mems = a.retrieve(question)
    t1 = time.perf_counter()
    ids = a._prompt_ids(a.build_messages(question, mems))
    text, ttft = gen(a.model, a.tokenizer, ids, a.max_tokens, a.processors(ids, mems))
    t2 = time.perf_counter()
    if not fresh:
        a.history.append((question, text))
    return Turn(question, text, matches(text, accepted), matches(first_sentence(text), accepted),
                any(e.text == fact_text for e, _ in mems), len(mems), (t1 - t0) * 1e3, len(ids), ttft + (t1 - t0), t2 - t0)


def _rate(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def _ci(p: float, n: int) -> float:
    """Half-width of a 95% Wilson-free normal interval (enough to read the tables)."""
    return 1.96 * math.sqrt(max(p * (1 - p), 1e-12) / n) if n else float("nan")


# ---------------------------------------------------------------- (a), (b), (c)


def _store(bank, user: str, fs: FactSet, n_facts: int) -> None:
    items = [dict(text=f.text, force=True, source="bench") for f in fs.facts[:n_facts]]
    items += [dict(text=d, force=True, source="bench") for d in fs.distractors]
    bank.add_many(items, user=user)


def accuracy_with_without(model, tok, bank, fs: FactSet, per_fact: int, n_ask: int, seed: int,
                          max_tokens: int, gen=generate, examples: int = 6,
                          opts: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    from mlx_synapse.assistant import Assistant

    _store(bank, "a-user", fs, len(fs.facts))
    qs = fs.questions(per_fact)
    if n_ask and n_ask < len(qs):
        qs = random.Random(seed).sample(qs, n_ask)
    with_mem = Assistant(model, tok, bank, user="a-user", max_tokens=max_tokens, auto_learn=False, **(opts or {}))
    without = Assistant(model, tok, bank, user="a-nobody", max_tokens=max_tokens, auto_learn=False, **(opts or {}))
    turns_w, turns_wo = [], []
    for j, (i, q) in enumerate(qs):
        f = fs.facts[i]
        turns_wo.append(ask(without, q, f.accepted, f.text, gen))
        turns_w.append(ask(with_mem, q, f.accepted, f.text, gen))
        if j % 25 == 0:
            log(f"(a) {j + 1}/{len(qs)}: with {_rate(t.right for t in turns_w):.3f} "
                f"without {_rate(t.right for t in turns_wo):.3f}")
    wrong = [(fs.facts[i].answer, t) for (i, _), t in zip(qs, turns_w) if not t.right]
    by_cat: Dict[str, List[bool]] = {}
    for (i, _), t in zip(qs, turns_w):
        by_cat.setdefault(fs.facts[i].category, []).append(t.right)
    ctx = [t for t in turns_w if t.in_context]
    res = dict(
        n=len(qs), stored_facts=len(fs.facts), stored_distractors=len(fs.distractors),
        without=_rate(t.right for t in turns_wo), without_first=_rate(t.right_first for t in turns_wo),
        with_=_rate(t.right for t in turns_w), with_first=_rate(t.right_first for t in turns_w),
        in_context=_rate(t.in_context for t in turns_w), with_given_context=_rate(t.right for t in ctx),
        by_category={k: (len(v), _rate(v)) for k, v in sorted(by_cat.items())},
        wrong_examples=[dict(question=t.question, expected=ans, reply=t.reply, fact_in_context=t.in_context)
                        for ans, t in wrong[:examples]],
        no_memory_examples=[dict(question=t.question, reply=t.reply) for t in turns_wo[:3]],
        turns_with=[dataclasses.asdict(t) for t in turns_w], turns_without=[dataclasses.asdict(t) for t in turns_wo],
    )
    res["failure_modes"] = failure_modes(fs, res["turns_with"])
    return res


def failure_modes(fs: FactSet, turns: Sequence[Dict[str, Any]]) -> Dict[str, int]:
    """Why wrong replies were wrong: the fact was not shown ('retrieval miss'), another
    stored fact's value was given ('wrong memory'), a worked example was copied,
    the value was misspelt (its first four letters are there: 'garbled value'), or 'other'."""
    from mlx_synapse.benchmarks.personal_facts import normalize

    from mlx_synapse.assistant import EXAMPLES

    by_q = {q: f for f in fs.facts for q in f.questions}
    values = [(f, f.accepted) for f in fs.facts]
    out: Dict[str, int] = {}
    for t in turns:
        f = by_q.get(t["question"])
        if f is None or t["right"]:
            continue
        words = normalize(t["reply"]).split()
        if not t["in_context"]:
            why = "retrieval miss"
        elif any(g is not f and matches(t["reply"], acc) for g, acc in values):
            why = "wrong memory"
        elif any(matches(t["reply"], [a.rstrip(".").split()[-1]]) for _, _, a in EXAMPLES):
            why = "copied a worked example"
        elif any(w[:4] == normalize(f.answer).split()[-1][:4] for w in words):
            why = "garbled value"
        else:
            why = "other"
        out[why] = out.get(why, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def accuracy_vs_scale(model, tok, bank, scales: Sequence[int], per_fact: int, n_questions: int, seed: int,
                      max_tokens: int, gen=generate, opts: Optional[Dict[str, Any]] = None) -> List[Dict[str, Any]]:
    from mlx_synapse.assistant import Assistant

    rows, top = [], max(scales)
    for s in scales:
        turns, users, modes = [], 0, {}
        r = random.Random(f"{seed}:scale:{s}")
        while len(turns) < n_questions:
            fs = build(seed + 1000 + users, top)
            user = f"scale{s}-{users}"
            _store(bank, user, fs, s)
            a = Assistant(model, tok, bank, user=user, max_tokens=max_tokens, auto_learn=False, **(opts or {}))
            qs = [(i, q) for i, f in enumerate(fs.facts[:s]) for q in f.questions[:per_fact]]
            for i, q in r.sample(qs, min(len(qs), n_questions - len(turns))):
                f = fs.facts[i]
                turns.append(ask(a, q, f.accepted, f.text, gen))
                for why, count in failure_modes(fs, [dataclasses.asdict(turns[-1])]).items():
                    modes[why] = modes.get(why, 0) + count
            users += 1
        rows.append(dict(stored=s, distractors=len(fs.distractors), users=users, n=len(turns),
                         acc=_rate(t.right for t in turns), acc_first=_rate(t.right_first for t in turns),
                         in_context=_rate(t.in_context for t in turns),
                         retrieval_ms=float(np.median([t.retrieval_ms for t in turns])),
                         prompt_tokens=float(np.mean([t.prompt_tokens for t in turns])), failure_modes=modes,
                         examples=[dict(question=t.question, reply=t.reply) for t in turns if not t.right][:3]))
        log(f"(b) {s} facts: {rows[-1]['acc']:.3f} on {len(turns)} questions ({users} users)")
    return rows


def _current(bank, entry_id: int, user: str):
    """The memory that now stands for ``entry_id``: a correction supersedes a fact with a new
    entry (metadata ``superseded_by``) and keeps the old one as history; follow the chain."""
    e = bank.get(entry_id, user=user)
    for _ in range(100):
        nxt = e.metadata.get("superseded_by") if isinstance(e.metadata, dict) else None
        n = bank.get(nxt, user=user) if nxt is not None else None
        if n is None:
            return e
        e = n
    return e


def corrections(model, tok, bank, fs: FactSet, n: int, seed: int, max_tokens: int, gen=generate,
                examples: int = 4, opts: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    from mlx_synapse.assistant import Assistant

    _store(bank, "c-user", fs, len(fs.facts))
    ids = {e.text: e.id for e in bank.list(user="c-user")}
    a = Assistant(model, tok, bank, user="c-user", max_tokens=max_tokens, auto_learn=True, **(opts or {}))
    picks = random.Random(f"{seed}:corrections").sample(range(len(fs.facts)), min(n, len(fs.facts)))
    rows = []
    for j, i in enumerate(picks):
        f = fs.facts[i]
        a.reset()
        r1 = a.respond(f.questions[0])  # the turn whose memories the correction refers to
        shown = any(e.id == ids[f.text] for e, _ in r1.memories)
        said = f"Actually, it's {f.correction}."
        r2 = a.respond(said)
        stored = _current(bank, ids[f.text], "c-user").text
        after = ask(a, f.questions[1 % len(f.questions)], f.correction_accepted, f.corrected_text, gen)
        rows.append(dict(question=f.questions[0], old=f.answer, new=f.correction, said=said, learned=r2.learned,
                         right_memory_first=shown, stored_after=stored, reply_before=r1.text,
                         right_before=matches(r1.text, f.accepted),
                         question_after=after.question, reply_after=after.reply, right_after=after.right,
                         shown_after=after.in_context,
                         right_after_first=after.right_first, old_in_reply=matches(after.reply, f.accepted),
                         stored_has_new=matches(stored, f.correction_accepted) and stored == f.corrected_text))
        if j % 10 == 0:
            log(f"(c) {j + 1}/{len(picks)}: corrected {_rate(r['right_after'] for r in rows):.3f}")
    return dict(
        n=len(rows), before=_rate(r["right_before"] for r in rows), after=_rate(r["right_after"] for r in rows),
        after_first=_rate(r["right_after_first"] for r in rows),
        old_in_reply=_rate(r["old_in_reply"] for r in rows),
        learned_corrected=_rate(r["learned"] == "corrected" for r in rows),
        right_memory_first=_rate(r["right_memory_first"] for r in rows),
        stored_has_new=_rate(r["stored_has_new"] for r in rows),
        failures=[r for r in rows if not r["right_after"]][:examples], rows=rows,
    )


def sessions(model, tok, bank, fs: FactSet, n: int, turns: int, seed: int, max_tokens: int,
             gen=generate, opts: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """(f) the same kind of questions asked ``turns`` at a time in one session, so the
    earlier questions and replies are in the prompt (history), against fresh sessions."""
    from mlx_synapse.assistant import Assistant

    _store(bank, "s-user", fs, len(fs.facts))
    a = Assistant(model, tok, bank, user="s-user", max_tokens=max_tokens, auto_learn=False, **(opts or {}))
    qs = random.Random(f"{seed}:sessions").sample(fs.questions(2), min(n, 2 * len(fs.facts)))
    rows = []
    for j in range(0, len(qs), turns):
        a.reset()
        for pos, (i, q) in enumerate(qs[j:j + turns]):
            f = fs.facts[i]
            t = ask(a, q, f.accepted, f.text, gen, fresh=False)
            rows.append(dict(position=pos, question=q, reply=t.reply, right=t.right, in_context=t.in_context,
                             prompt_tokens=t.prompt_tokens))
        log(f"(f) {len(rows)}/{len(qs)}: {_rate(r['right'] for r in rows):.3f}")
    by_pos = {p: _rate(r["right"] for r in rows if r["position"] == p) for p in range(turns)}
    return dict(n=len(rows), turns=turns, acc=_rate(r["right"] for r in rows), by_position=by_pos,
                in_context=_rate(r["in_context"] for r in rows),
                prompt_tokens=float(np.mean([r["prompt_tokens"] for r in rows])) if rows else 0.0,
                failures=[r for r in rows if not r["right"]][:4], rows=rows)


# ---------------------------------------------------------------- (d) zero forgetting


def _arrays(obj, prefix: str = ""):
    if isinstance(obj, np.ndarray):
        yield prefix, obj
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for fld in dataclasses.fields(obj):
            yield from _arrays(getattr(obj, fld.name), f"{prefix}.{fld.name}")
    elif isinstance(obj, dict):
        for k in sorted(obj):
            yield from _arrays(obj[k], f"{prefix}.{k}")
    elif isinstance(obj, (list, tuple)):
        for k, v in enumerate(obj):
            yield from _arrays(v, f"{prefix}.{k}")


def weights_digest(model) -> Dict[str, Any]:
    """SHA-256 over every weight array's name, dtype, shape and bytes."""
    h, n, count = hashlib.sha256(), 0, 0
    for name, arr in _arrays(getattr(model, "weights", model)):
        h.update(f"{name}:{arr.dtype}:{arr.shape}".encode())
        h.update(np.ascontiguousarray(arr).tobytes())
        n += arr.size
        count += 1
    return dict(sha256=h.hexdigest(), arrays=count, parameters=n)


def _logprobs(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    m = x.max(-1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(-1, keepdims=True)))


WIKITEXT, HELLASWAG = "wikitext2_raw_test.txt", "hellaswag_val_full.txt.bz2"


def missing_eval_data(n_hellaswag: int) -> List[Path]:
    """The files (d) needs that are not in ``EVAL_DIR``: WikiText-2 always, HellaSwag
    when ``n_hellaswag > 0``."""
    need = [EVAL_DIR / WIKITEXT] + ([EVAL_DIR / HELLASWAG] if n_hellaswag > 0 else [])
    return [p for p in need if not p.is_file()]


def _require_eval_data(n_hellaswag: int) -> None:
    missing = missing_eval_data(n_hellaswag)
    if missing:
        raise FileNotFoundError(
            f"[personalization] (d) zero forgetting cannot be measured: {', '.join(map(str, missing))} "
            f"not found; put the eval data there (see ../shared/data/README.md) or skip the phase with --skip d.")


def wikitext_ppl(model, tok, n_tokens: int = 512) -> float:
    _require_eval_data(0)
    path = EVAL_DIR / WIKITEXT
    ids = np.array(tok.encode(path.read_text(encoding="utf-8")[:20000])[:n_tokens])
    lp = _logprobs(np.asarray(model(ids[:-1])))
    return float(np.exp(-lp[np.arange(len(ids) - 1), ids[1:]].mean()))


def load_hellaswag(n: int, seed: int) -> List[tuple]:
    if n <= 0:
        return []
    _require_eval_data(n)
    path = EVAL_DIR / HELLASWAG
    with bz2.open(path, "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    items = [(lines[i], int(lines[i + 1]), lines[i + 2:i + 6]) for i in range(0, len(lines) - 5, 6)]
    return random.Random(seed).sample(items, min(n, len(items)))


def hellaswag(model, tok, items) -> Dict[str, Any]:
    """acc (sum of ending log-probs) and acc_norm (per ending token), plus every score."""
    scores, right, right_norm = [], 0, 0
    cached = hasattr(model, "make_cache") and hasattr(model, "prefill")
    for ctx, gold, endings in items:
        c = tok.encode(ctx)
        s, sn = [], []
        if cached:  # the context once, then each ending on top of it (the cache trimmed back)
            cache = model.make_cache()
            model.prefill(np.array(c[:-1]), cache)
        for e in endings:
            ids = np.array(c + tok.encode(" " + e.strip()))
            if cached:
                lp = _logprobs(np.asarray(model(ids[len(c) - 1:-1], cache=cache)))
                for layer in cache:
                    layer.trim(len(ids) - len(c))
                tail = lp[np.arange(len(ids) - len(c)), ids[len(c):]]
            else:
                lp = _logprobs(np.asarray(model(ids[:-1])))
                tail = lp[np.arange(len(c) - 1, len(ids) - 1), ids[len(c):]]
            s.append(float(tail.sum()))
            sn.append(float(tail.mean()))
        scores.append(s)
        right += int(np.argmax(s) == gold)
        right_norm += int(np.argmax(sn) == gold)
    n = max(len(items), 1)
    return dict(n=len(items), acc=right / n, acc_norm=right_norm / n, scores=scores)


def zero_forgetting(model, tok, bank, n_writes: int, n_hellaswag: int, seed: int) -> Dict[str, Any]:
    """Raises FileNotFoundError when the eval data is missing: a comparison of nothing with
    nothing would read as "identical"."""
    _require_eval_data(n_hellaswag)
    items = load_hellaswag(n_hellaswag, seed)

    def snapshot():
        t0 = time.perf_counter()
        out = dict(weights=weights_digest(model), ppl=wikitext_ppl(model, tok), hellaswag=hellaswag(model, tok, items))
        out["seconds"] = time.perf_counter() - t0
        return out

    log(f"(d) empty bank: hashing, perplexity, HellaSwag on {len(items)} items")
    before = snapshot()
    t0, written, actions = time.perf_counter(), 0, {}
    u = 0
    while written < n_writes:
        fs = build(seed + 5000 + u, min(1000, n_writes - written), n_distractors=100)
        texts = [f.text for f in fs.facts] + fs.distractors
        texts = texts[: n_writes - written]
        for r in bank.write_many([dict(text=t, force=True, source="bench") for t in texts], user=f"w{u}"):
            actions[r.action] = actions.get(r.action, 0) + 1
        written += len(texts)
        u += 1
    write_s = time.perf_counter() - t0
    log(f"(d) {written} writes in {write_s:.1f} s; measuring again")
    after = snapshot()
    sb, sa = np.array(before["hellaswag"]["scores"]), np.array(after["hellaswag"]["scores"])
    return dict(
        writes=written, users=u, write_actions=actions, write_seconds=write_s,
        entries_after=bank.stats().get("entries") if hasattr(bank, "stats") else None,
        before={k: v for k, v in before.items() if k != "hellaswag"} | {"hellaswag": _hs(before)},
        after={k: v for k, v in after.items() if k != "hellaswag"} | {"hellaswag": _hs(after)},
        identical=(before["weights"] == after["weights"] and before["ppl"] == after["ppl"]
                   and sb.shape == sa.shape and bool(np.array_equal(sb, sa))),
        max_score_diff=float(np.abs(sb - sa).max()) if sb.size else 0.0,
    )


def _hs(snap):
    h = snap["hellaswag"]
    return dict(n=h["n"], acc=h["acc"], acc_norm=h["acc_norm"])


# ---------------------------------------------------------------- report


def latency(a_result: Dict[str, Any]) -> Dict[str, Any]:
    def stats(turns, key):
        x = np.array([t[key] for t in turns], dtype=np.float64)
        return dict(mean=float(x.mean()), p50=float(np.median(x)), p90=float(np.percentile(x, 90)))

    w, wo = a_result["turns_with"], a_result["turns_without"]
    return {k: dict(with_=stats(w, k), without=stats(wo, k))
            for k in ("retrieval_ms", "prompt_tokens", "ttft_s", "turn_s")}


def machine() -> str:
    return (f"{platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores visible, "
            f"{platform.system()} {platform.release()}, Python {platform.python_version()}, NumPy {np.__version__}")


def _pct(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


def report(res: Dict[str, Any]) -> str:
    out = [f"## Personalization benchmark\n\nmachine: {res['machine']}\n\ncommand: `{res['command']}`\n",
           f"model: {res['model']} (backend {res['backend']}), greedy, max {res['max_tokens']} tokens, "
           f"at most {res.get('k', 3)} memories shown, assistant options {res.get('assistant') or 'defaults'}; "
           f"seed {res['seed']}; total {res['seconds']:.0f} s\n"]
    a = res.get("a")
    if a:
        ias = a["with_"] - a["without"]
        out += ["### (a) Instant adaptation\n",
                f"{a['stored_facts']} facts + {a['stored_distractors']} distractors stored; {a['n']} questions "
                f"(95% CI ±{100 * _ci(a['with_'], a['n']):.1f} pts)\n",
                "| condition | accuracy (whole reply) | accuracy (first sentence) |", "| --- | --- | --- |",
                f"| without memory | {_pct(a['without'])} | {_pct(a['without_first'])} |",
                f"| with memory | {_pct(a['with_'])} | {_pct(a['with_first'])} |",
                f"| **Instant Adaptation Score** (difference) | **{100 * ias:+.1f} pts** | "
                f"{100 * (a['with_first'] - a['without_first']):+.1f} pts |\n",
                f"asked-about fact among the memories shown: {_pct(a['in_context'])}; accuracy when it was: "
                f"{_pct(a['with_given_context'])}\n",
                "| category | n | with memory |", "| --- | --- | --- |"]
        out += [f"| {k} | {n} | {_pct(v)} |" for k, (n, v) in a["by_category"].items()]
        out.append("\nwrong replies with memory: " + ", ".join(f"{k} {v}" for k, v in a["failure_modes"].items())
                   + "\n")
    if res.get("b"):
        out += ["### (b) Accuracy vs facts stored per user\n",
                "| facts stored (+ distractors) | users | questions | accuracy | first sentence | fact in context "
                "| retrieval p50 | prompt tokens |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        out += [f"| {r['stored']} (+{r['distractors']}) | {r['users']} | {r['n']} | {_pct(r['acc'])} | "
                f"{_pct(r['acc_first'])} | {_pct(r['in_context'])} | {r['retrieval_ms']:.1f} ms | "
                f"{r['prompt_tokens']:.0f} |" for r in res["b"]]
        out.append("\nwrong replies: " + "; ".join(
            f"{r['stored']} facts: " + (", ".join(f"{k} {v}" for k, v in r["failure_modes"].items()) or "none")
            for r in res["b"]) + "\n")
    c = res.get("c")
    if c:
        out += ["### (c) Corrections (\"Actually, it's X.\" through respond, asked again in a fresh session)\n",
                "| n | right before | learn() said 'corrected' | fact was shown | fact now reads exactly with X "
                "| answer is X after | first sentence | old value still in reply |",
                "| --- | --- | --- | --- | --- | --- | --- | --- |",
                f"| {c['n']} | {_pct(c['before'])} | {_pct(c['learned_corrected'])} | "
                f"{_pct(c['right_memory_first'])} | {_pct(c['stored_has_new'])} | {_pct(c['after'])} | "
                f"{_pct(c['after_first'])} | {_pct(c['old_in_reply'])} |\n"]
    f = res.get("f")
    if f:
        out += [f"### (f) Questions within one session ({f['turns']} per session, earlier turns in the prompt)\n",
                "| n | accuracy | fact in context | prompt tokens (mean) | " +
                " | ".join(f"turn {p + 1}" for p in range(f["turns"])) + " |",
                "| --- | --- | --- | --- | " + " | ".join("---" for _ in range(f["turns"])) + " |",
                f"| {f['n']} | {_pct(f['acc'])} | {_pct(f['in_context'])} | {f['prompt_tokens']:.0f} | " +
                " | ".join(_pct(f["by_position"][p]) for p in range(f["turns"])) + " |\n"]
    d = res.get("d")
    if d:
        b, f = d["before"], d["after"]
        out += [f"### (d) Zero forgetting: empty bank vs after {d['writes']:,} writes ({d['users']} users, "
                f"{d['write_seconds']:.0f} s)\n", "| measure | empty bank | after writes |", "| --- | --- | --- |",
                f"| SHA-256 of {b['weights']['arrays']} weight arrays ({b['weights']['parameters']:,} values) | "
                f"`{b['weights']['sha256'][:16]}…` | `{f['weights']['sha256'][:16]}…` |",
                f"| WikiText-2 perplexity (first 512 tokens) | {b['ppl']!r} | {f['ppl']!r} |",
                f"| HellaSwag acc ({b['hellaswag']['n']} items) | {_pct(b['hellaswag']['acc'])} | "
                f"{_pct(f['hellaswag']['acc'])} |" if b["hellaswag"]["n"] else "| HellaSwag | not measured | |",
                f"| HellaSwag acc_norm | {_pct(b['hellaswag']['acc_norm'])} | {_pct(f['hellaswag']['acc_norm'])} |",
                f"| max abs difference of the {4 * b['hellaswag']['n']} ending scores | | {d['max_score_diff']!r} |\n",
                f"identical: **{d['identical']}**" + ("" if b["hellaswag"]["n"] else " (weights and perplexity only)")
                + "\n"]
    e = res.get("e")
    if e:
        out += ["### (e) Latency per turn (from (a); p50, mean in brackets)\n",
                "| | without memory | with memory | added |", "| --- | --- | --- | --- |"]
        for k, label, scale, unit in (("retrieval_ms", "retrieval", 1, "ms"), ("prompt_tokens", "prompt tokens", 1, ""),
                                      ("ttft_s", "time to first token (incl. retrieval)", 1e3, "ms"),
                                      ("turn_s", "whole turn", 1e3, "ms")):
            w, wo = e[k]["with_"], e[k]["without"]
            out.append(f"| {label} | {wo['p50'] * scale:.1f} {unit} ({wo['mean'] * scale:.1f}) | "
                       f"{w['p50'] * scale:.1f} {unit} ({w['mean'] * scale:.1f}) | "
                       f"{(w['p50'] - wo['p50']) * scale:+.1f} {unit} |")
        out.append("")
    return "\n".join(out)


def main(argv=None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model directory or .gguf (default: SmolLM2-135M-Instruct)")
    p.add_argument("--backend", default="numpy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--facts", type=int, default=300, help="facts stored for (a) and (c)")
    p.add_argument("--distractors", type=int, default=120)
    p.add_argument("--questions-per-fact", type=int, default=2)
    p.add_argument("--ask", type=int, default=100, help="questions asked in (a), sampled; 0 = all")
    p.add_argument("--scales", type=int, nargs="*", default=[1, 10, 100, 1000])
    p.add_argument("--scale-questions", type=int, default=20)
    p.add_argument("--corrections", type=int, default=15)
    p.add_argument("--hellaswag", type=int, default=100)
    p.add_argument("--writes", type=int, default=10000)
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--k", type=int, default=3, help="at most k memories in the prompt (Assistant's k)")
    p.add_argument("--margin", type=float, default=None, help="Assistant's margin (default: its own)")
    p.add_argument("--lexical", type=float, default=None, help="Assistant's lexical weight (default: its own)")
    p.add_argument("--copy-bonus", type=float, default=None, help="Assistant's copy bias (default: its own)")
    p.add_argument("--session-questions", type=int, default=40, help="questions asked in multi-turn sessions (f)")
    p.add_argument("--session-turns", type=int, default=5)
    p.add_argument("--skip", nargs="*", default=[], choices=list("abcdef"))
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if "d" not in args.skip and missing_eval_data(args.hellaswag):
        try:  # before the model loads and the other phases run for minutes
            _require_eval_data(args.hellaswag)
        except FileNotFoundError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None

    from mlx_synapse import load
    from mlx_synapse.memory import MemoryBank
    from mlx_synapse.memory.encoders import MiniLMEncoder

    opts = dict(k=args.k, margin=args.margin, lexical=args.lexical, copy_bonus=args.copy_bonus)
    opts = {k: v for k, v in opts.items() if v is not None}
    t0 = time.perf_counter()
    model, tok = load(args.model, backend=args.backend)
    enc = CachedEncoder(MiniLMEncoder())
    fs = build(args.seed, args.facts, n_distractors=args.distractors)
    res: Dict[str, Any] = dict(machine=machine(), command="python -m mlx_synapse.benchmarks.personalization "
                               + " ".join(shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:])),
                               model=args.model or "SmolLM2-135M-Instruct (default)", backend=model.backend,
                               max_tokens=args.max_tokens, seed=args.seed, k=args.k, assistant=opts)
    with tempfile.TemporaryDirectory() as tmp:
        def fresh(name):
            return MemoryBank(Path(tmp) / f"{name}.db", encoder=enc, backend="numpy", policy="lru")

        if "a" not in args.skip:
            res["a"] = accuracy_with_without(model, tok, fresh("a"), fs, args.questions_per_fact, args.ask,
                                             args.seed, args.max_tokens, opts=opts)
            res["e"] = latency(res["a"])
        if "b" not in args.skip and args.scales:
            res["b"] = accuracy_vs_scale(model, tok, fresh("b"), args.scales, args.questions_per_fact,
                                         args.scale_questions, args.seed, args.max_tokens, opts=opts)
        if "c" not in args.skip and args.corrections:
            res["c"] = corrections(model, tok, fresh("c"), fs, args.corrections, args.seed, args.max_tokens,
                                   opts=opts)
        if "f" not in args.skip and args.session_questions:
            res["f"] = sessions(model, tok, fresh("f"), fs, args.session_questions, args.session_turns, args.seed,
                                args.max_tokens, opts=opts)
        if "d" not in args.skip:
            res["d"] = zero_forgetting(model, tok, fresh("d"), args.writes, args.hellaswag, args.seed)
    res["seconds"] = time.perf_counter() - t0
    print(report(res))
    if res.get("a"):
        print("\nWrong answers with memory (examples):")
        for w in res["a"]["wrong_examples"]:
            print(f"- {w['question']!r} expected {w['expected']!r}, got {w['reply']!r} "
                  f"(fact in context: {w['fact_in_context']})")
        print("Without memory (examples):")
        for w in res["a"]["no_memory_examples"]:
            print(f"- {w['question']!r} -> {w['reply']!r}")
    if res.get("c"):
        print("\nCorrection failures (examples):")
        for r in res["c"]["failures"]:
            print(f"- {r['question']!r} old {r['old']!r} -> {r['said']!r}: learned={r['learned']}, stored "
                  f"{r['stored_after']!r}; asked {r['question_after']!r} -> {r['reply_after']!r}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))
    return res


if __name__ == "__main__":
    main()
