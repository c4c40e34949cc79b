"""Sleep over the memory bank, measured: recall from weights alone, drift, a bad sleep, forgetting.

    python -m mlx_synapse.benchmarks.sleep_bench --facts 100 --iters 800 --hellaswag 1000 --json sleep.json
    python -m mlx_synapse.benchmarks.sleep_bench --quick --dequantize      # a tiny run for MLX's CPU

One user tells ``--facts`` fictional facts ("My cousin lives in Tartu.", "My boss works as a
farrier.", ...: roles x {city, job, origin, favourite dish}, values from the conversation
suite's vocabularies), stored through ``Assistant.learn`` into a memory bank. Then:

1. baseline: the bare model's recall (greedy reply to the question contains the value),
   WikiText-2 perplexity, HellaSwag (``--hellaswag N``);
2. sleep (``learn.bank_sleep.sleep_bank``), timed; the bank is then EMPTIED and the adapter
   reloaded from disk: recall from weights alone, perplexity drift, HellaSwag change;
3. a bad sleep (learning rate x100) must be rolled back by the gate: the adapter file's
   hash before/after and the gate's before/after figures are reported;
4. forget one fact (``forget_from_adapter``): its recall against the baseline, the others'.

Questions: city and job use the conversation suite's held-out question families ("In which
town is {s} based?", "How does {s} make money?", "Which city is my flat in?", "What is my
trade?"); origin and dish use this file's own phrasings. None is a training (TRAIN) or gate
(GATE) phrasing: checked at start.
"""

from __future__ import annotations

import argparse
import bz2
import hashlib
import json
import math
import random
import sys
import tempfile
import time
import zlib
from pathlib import Path

import mlx.core as mx
import numpy as np

from mlx_synapse.assistant import Assistant
from mlx_synapse.generate import generate_step
from mlx_synapse.learn import load_adapter, load_trainable, remove_lora
from mlx_synapse.learn.bank_sleep import SleepConfig, forget_from_adapter, general_text_path, sleep_bank, sleep_dir
from mlx_synapse.learn.data import _template
from mlx_synapse.learn.fact_pairs import GATE, TRAIN, pick_facts, questions
from mlx_synapse.memory.bank import MemoryBank

from .conversation.generator import _an
from .conversation.vocab import vocab

ROLES = ("sister", "brother", "mother", "father", "son", "daughter", "wife", "husband", "partner", "aunt", "uncle",
         "cousin", "niece", "nephew", "grandmother", "grandfather", "stepmother", "stepfather", "sister-in-law",
         "brother-in-law", "best friend", "boss", "roommate", "neighbour", "colleague", "teacher", "doctor",
         "landlord", "mentor", "coach")
# attribute: (statement, third-person question, first-person statement, first-person question)
ATTRS = {
    "city": ("{S} lives in {v}.", "In which town is {s} based?", "I live in {v}.", "Which city is my flat in?"),
    "job": ("{S} works as a {v}.", "How does {s} make money?", "I work as a {v}.", "What is my trade?"),
    "origin": ("{S} is from {v}.", "What place does {s} hail from?", "I am from {v}.", "What place do I hail from?"),
    "food": ("{S}'s favourite dish is {v}.", "Which dish would {s} pick above all others?",
             "My favourite dish is {v}.", "Which dish would I pick above all others?"),
}
POOL = {"city": "city", "job": "job", "origin": "city", "food": "food"}


class HashWords:
    """A bag-of-words encoder (seeded random vector per word): the bank needs one, the benchmark
    does not search."""

    dim, name = 64, "sleep-bench-bow-64"

    def __call__(self, texts):
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split() or ["<empty>"]:
                out[i] += np.random.default_rng(zlib.crc32(w.encode())).standard_normal(self.dim)
            out[i] /= np.linalg.norm(out[i]) + 1e-9
        return out


def make_facts(n: int, seed: int = 0):
    """``n`` (statement, question, value) triples, the user's own first, then roles x attributes."""
    r = random.Random(f"sleep-bench:{seed}")
    pools = {k: vocab("dev")[k] + vocab("heldout")[k] for k in ("city", "job", "food")}
    keys = [(None, a) for a in ATTRS] + [(role, a) for role in ROLES for a in ATTRS]
    if n > len(keys):
        raise ValueError(f"[sleep_bench] at most {len(keys)} distinct facts; asked for {n}.")
    own, rest = keys[:len(ATTRS)], keys[len(ATTRS):]
    r.shuffle(rest)
    out = []
    for role, a in (own + rest)[:n]:
        v = r.choice(pools[POOL[a]])
        say, ask, say1, ask1 = ATTRS[a]
        if role is None:
            out.append((_an(say1.format(v=v)), ask1, v))
        else:
            out.append((_an(say.format(S="My " + role, v=v)), ask.format(s="my " + role), v))
    return out


def prompt_ids(tok, q: str) -> list:
    return _template(tok, [{"role": "user", "content": q}], add_generation_prompt=True)


def recall(model, tok, items, max_tokens: int = 20) -> list:
    """Per (question, value): whether the greedy reply contains the value (case-insensitive)."""
    eos = set(getattr(tok, "eos_token_ids", None) or [tok.eos_token_id])
    hits = []
    for q, v in items:
        out = []
        for t, _ in generate_step(mx.array(prompt_ids(tok, q)), model, max_tokens=max_tokens):
            t = int(t)
            if t in eos:
                break
            out.append(t)
        hits.append(v.lower() in tok.decode(out).lower())
    return hits


def wikitext_ppl(model, tok, n_tokens: int) -> float:
    text = general_text_path().read_text(encoding="utf-8")
    ids = tok.encode(text[: 8 * n_tokens])[:n_tokens]
    nll, count = 0.0, 0
    for i in range(0, len(ids) - 1, 512):
        x = mx.array([ids[i: i + 513]])
        logits = model(x[:, :-1]).astype(mx.float32)
        lp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        tgt = mx.take_along_axis(lp, x[:, 1:, None], axis=-1)
        nll -= tgt.sum().item()
        count += x.shape[1] - 1
    return math.exp(nll / count)


def hellaswag_acc(model, tok, n: int, seed: int = 0) -> float:
    path = general_text_path().parent / "hellaswag_val_full.txt.bz2"
    with bz2.open(path, "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    items = [(lines[i], int(lines[i + 1]), lines[i + 2:i + 6]) for i in range(0, len(lines) - 5, 6)]
    items = random.Random(seed).sample(items, min(n, len(items)))
    right = 0
    for ctx, gold, endings in items:
        c = tok.encode(ctx)
        scores = []
        for e in endings:
            ids = c + tok.encode(" " + e.strip(), add_special_tokens=False)
            x = mx.array([ids])
            logits = model(x[:, :-1]).astype(mx.float32)[0, len(c) - 1:]
            lp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
            tail = mx.take_along_axis(lp, mx.array(ids[len(c):])[:, None], axis=-1)
            scores.append(tail.mean().item())  # acc_norm: per ending token
        right += int(np.argmax(scores) == gold)
    return right / max(len(items), 1)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--facts", type=int, default=100)
    p.add_argument("--iters", type=int, default=800)
    p.add_argument("--learning-rate", type=float, default=1e-4)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--num-layers", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--model", default=None, help="default: the package's default model")
    p.add_argument("--dequantize", action="store_true", help="train over float32 copies (faster on MLX's CPU)")
    p.add_argument("--ppl-tokens", type=int, default=4096)
    p.add_argument("--hellaswag", type=int, default=0, help="HellaSwag items (1000 for the acceptance figure)")
    p.add_argument("--min-recall", type=float, default=0.9)
    p.add_argument("--max-ppl-drift", type=float, default=0.01)
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--quick", action="store_true",
                   help="4 facts, 12 steps at lr 1e-3 on the last 4 blocks, 256 perplexity tokens, a 5%% drift gate: "
                        "a CPU check that everything runs, not an acceptance figure")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.quick:
        a.facts, a.iters, a.ppl_tokens, a.num_layers, a.rank, a.batch_size = 4, 12, 256, 4, 8, 2
        a.learning_rate, a.min_recall, a.max_ppl_drift = 1e-3, min(a.min_recall, 0.5), max(a.max_ppl_drift, 0.05)
    facts = make_facts(a.facts, a.seed)
    seen = {q for k in list(TRAIN) + list(GATE) for t in (TRAIN.get(k, ()) + GATE.get(k, ())) for q in t}
    assert not any(q in seen for _, q, _ in facts), "an evaluation question is a training or gate phrasing"
    model, tok = load_trainable(a.model, dequantize=a.dequantize)
    cfg = SleepConfig(iters=a.iters, learning_rate=a.learning_rate, rank=a.rank, num_layers=a.num_layers,
                      batch_size=a.batch_size, min_recall=a.min_recall, max_ppl_drift=a.max_ppl_drift, seed=a.seed,
                      **(dict(general_chunks=4, chunk_tokens=64) if a.quick else {}))
    res = {"device": str(mx.default_device()), "model": a.model or "default", "facts": a.facts,
           "config": vars(a), "question_families": "city/job: conversation held-out; origin/dish: sleep_bench's own"}
    with tempfile.TemporaryDirectory() as tmp:
        bank = MemoryBank(Path(tmp) / "bank.db", HashWords(), backend="numpy", policy="lru")
        asst = Assistant(None, tok, bank, user="u")
        for i, (say, _, _) in enumerate(facts):
            asst.learn(say, ts=1.7e9 + i)
        stored = pick_facts(bank, "u")
        res["facts_stored"] = len(stored)
        log(f"{len(facts)} facts said, {len(stored)} current facts in the bank")
        items = [(q, v) for _, q, v in facts]
        t0 = time.perf_counter()
        base = dict(recall=recall(model, tok, items), ppl=wikitext_ppl(model, tok, a.ppl_tokens))
        if a.hellaswag:
            base["hellaswag"] = hellaswag_acc(model, tok, a.hellaswag, a.seed)
        log(f"baseline: recall {np.mean(base['recall']):.2f}, ppl {base['ppl']:.3f} ({time.perf_counter() - t0:.0f} s)")
        out = sleep_dir(bank.path, "u")
        from tqdm import tqdm

        bar = tqdm(total=cfg.iters, desc="sleep", unit="step", file=sys.stderr)
        t0 = time.perf_counter()
        good = sleep_bank(bank, "u", model, tok, config=cfg, base_model=str(a.model or "default"), report=log,
                          progress=lambda s: bar.update(1))
        sleep_s = time.perf_counter() - t0
        bar.close()
        log(good.report.summary())
        res["sleep"] = dict(good.report.as_dict(), seconds_total=sleep_s, estimate_s=good.estimate_s)
        res["sleep"].pop("train_loss", None)
        # a bad sleep: learning rate x100 must be rolled back, the adapter file untouched
        wfile = out / "adapters.safetensors"
        h0 = sha(wfile) if wfile.exists() else None
        bad_cfg = SleepConfig(**dict(vars(cfg), learning_rate=cfg.learning_rate * 100))
        bad = sleep_bank(bank, "u", model, tok, config=bad_cfg, base_model=str(a.model or "default"))
        res["bad_sleep"] = dict(bad.report.as_dict(), adapter_sha_before=h0,
                                adapter_sha_after=sha(wfile) if wfile.exists() else None)
        res["bad_sleep"].pop("train_loss", None)
        log(bad.report.summary())
        # the bank emptied: what is left is in the weights
        bank.forget(user="u")
        assert not bank.list(user="u")
        remove_lora(model)
        after = {}
        if good.accepted:
            load_adapter(model, out)
            after = dict(recall=recall(model, tok, items), ppl=wikitext_ppl(model, tok, a.ppl_tokens))
            if a.hellaswag:
                after["hellaswag"] = hellaswag_acc(model, tok, a.hellaswag, a.seed)
        # forget the first fact the adapter holds
        forgot = {}
        if good.accepted:
            fid = good.facts[0].id
            f0 = good.facts[0]  # the statement said, else the first with its value (extraction may reword)
            fidx = next((i for i, (say, _, _) in enumerate(facts) if say == f0.text),
                        next((i for i, (_, _, v) in enumerate(facts) if v == f0.value), 0))
            t0 = time.perf_counter()
            fres = forget_from_adapter([fid], model, tok, adapter_dir=out, config=cfg)
            forgot = dict(fact=facts[fidx][0], accepted=fres.accepted, seconds=time.perf_counter() - t0,
                          notes=fres.notes)
            remove_lora(model)
            if fres.accepted and out.exists():
                load_adapter(model, out)
            rec = recall(model, tok, items)
            forgot.update(forgotten_recall=rec[fidx], forgotten_baseline=base["recall"][fidx],
                          others_recall=float(np.mean([h for i, h in enumerate(rec) if i != fidx])))
        bank.close()
    res["baseline"] = dict(base, recall=float(np.mean(base["recall"])))
    if after:
        res["after"] = dict(after, recall=float(np.mean(after["recall"])),
                            ppl_drift=after["ppl"] / base["ppl"] - 1)
        if a.hellaswag:
            res["after"]["hellaswag_delta_points"] = 100 * (after["hellaswag"] - base["hellaswag"])
    res["forget"] = forgot
    rows = [("facts said / stored", f"{a.facts} / {res['facts_stored']}"),
            ("recall, no training", f"{res['baseline']['recall']:.3f}"),
            ("sleep", f"{'accepted' if good.accepted else 'REJECTED: ' + good.report.reason}, "
                      f"{sleep_s:.1f} s (estimated {good.estimate_s:.0f} s), {res['device']}"),
            ("gate recall (held-out phrasings)", f"{good.report.recall_before:.3f} -> {good.report.recall_after:.3f}")]
    if after:
        rows += [("recall from weights, bank empty", f"{res['after']['recall']:.3f}"),
                 ("WikiText-2 ppl", f"{base['ppl']:.3f} -> {after['ppl']:.3f} ({100 * res['after']['ppl_drift']:+.2f}%)")]
        if a.hellaswag:
            rows.append((f"HellaSwag acc_norm ({a.hellaswag})",
                         f"{base['hellaswag']:.3f} -> {after['hellaswag']:.3f}"))
    b = res["bad_sleep"]
    rows.append(("bad sleep (lr x100)", f"{'ACCEPTED' if b['accepted'] else 'rolled back'}: {b['reason']}; recall "
                 f"{b['recall_before']:.2f} -> {b['recall_after']:.2f}, gate ppl {b['ppl_before']:.2f} -> "
                 f"{b['ppl_after']:.2f}; adapter file " + ("none before or after" if b['adapter_sha_before'] is None and b['adapter_sha_after'] is None else 'unchanged' if b['adapter_sha_before'] == b['adapter_sha_after'] else 'CHANGED')))
    if forgot:
        rows.append(("forget one fact", f"its recall {int(forgot['forgotten_recall'])} (baseline "
                     f"{int(forgot['forgotten_baseline'])}), others {forgot['others_recall']:.3f}, "
                     f"re-sleep {forgot['seconds']:.1f} s{'' if forgot['accepted'] else ' REJECTED'}"))
    w = max(len(r[0]) for r in rows)
    print("\n".join(f"{k:<{w}}  {v}" for k, v in rows))
    print(json.dumps(res, default=str))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
