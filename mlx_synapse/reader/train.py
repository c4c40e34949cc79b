"""python -m mlx_synapse.reader.train: train the reader adapter and report what it costs.

    python -m mlx_synapse.reader.train --out runs/reader            # the real run (a GPU: ~5 min on an H100)
    python -m mlx_synapse.reader.train --out /tmp/r --iters 4 --examples 64 --valid 16 --batch-size 2 \\
        --ppl-tokens 256 --dequantize                                # a CPU smoke run

Steps: synthetic memory-grounded QA (:mod:`.data`, loss on the answer only) with
replayed WikiText-2 paragraphs in every batch (the file's second half: the perplexity
below reads its start), held to the base model's own distribution by a KL term
(``--distill``; 0 fits them by cross-entropy instead), LoRA on the default model in its trainable form (:func:`mlx_synapse.learn.load_trainable`,
4-bit layers kept), AdamW; every ``--steps-per-eval`` the validation loss and the
perplexity drift; the adapter kept is the one with the lowest validation loss among
those within ``--max-ppl-drift`` (early stop after ``--patience`` evaluations without a
better one). Then, with the adapter off (the base model) and on: WikiText-2 perplexity,
HellaSwag (``--hellaswag N``), and the share of validation answers greedy decoding
reproduces, per category. ``OUT`` gets ``adapter_config.json`` + ``adapters.safetensors``
(copy them into ``$MLX_SYNAPSE_CACHE/reader/`` to use them) and ``report.json``.
"""

from __future__ import annotations

import argparse
import bz2
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

MAX_SEQ = 384


def setup_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mlx_synapse.reader.train", description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="directory for the adapter and report.json")
    p.add_argument("--model", default=None, help="model directory or .gguf (default: the default model)")
    p.add_argument("--iters", type=int, default=700)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--learning-rate", type=float, default=5e-5)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--scale", type=float, default=10.0)
    p.add_argument("--num-layers", type=int, default=16)
    p.add_argument("--examples", type=int, default=12000, help="synthetic QA examples to train on")
    p.add_argument("--valid", type=int, default=480, help="validation examples (another seed)")
    p.add_argument("--replay-share", type=float, default=0.25, help="share of every batch that is general text")
    p.add_argument("--distill", type=float, default=1.0,
                   help="weight of KL(base || adapted) on the general text (0: fit the text by cross-entropy instead)")
    p.add_argument("--steps-per-eval", type=int, default=50)
    p.add_argument("--patience", type=int, default=4, help="evaluations without a better adapter before stopping")
    p.add_argument("--ppl-tokens", type=int, default=8192, help="WikiText-2 tokens the perplexity reads")
    p.add_argument("--max-ppl-drift", type=float, default=0.05, help="largest relative perplexity rise accepted")
    p.add_argument("--hellaswag", type=int, default=0, help="HellaSwag items (0: skip)")
    p.add_argument("--general-text", default=None, help="WikiText-2 raw test file (default: MLX_SYNAPSE_DATA/eval)")
    p.add_argument("--dequantize", action="store_true", help="train over float32 copies (faster on MLX's CPU)")
    p.add_argument("--seed", type=int, default=0)
    return p


def check(a) -> None:
    for k in ("iters", "batch_size", "rank", "num_layers", "examples", "valid", "steps_per_eval", "patience",
              "ppl_tokens"):
        if getattr(a, k) < 1:
            raise ValueError(f"--{k.replace('_', '-')} must be at least 1 but got {getattr(a, k)}.")
    if a.ppl_tokens < 64:
        raise ValueError(f"--ppl-tokens must be at least 64 but got {a.ppl_tokens}.")
    if not 0 <= a.replay_share < 1:
        raise ValueError(f"--replay-share must be in [0, 1) but got {a.replay_share}.")
    if not (a.learning_rate > 0 and math.isfinite(a.learning_rate)):
        raise ValueError(f"--learning-rate must be a positive number but got {a.learning_rate}.")
    if a.scale <= 0 or a.max_ppl_drift < 0 or a.hellaswag < 0 or a.distill < 0:
        raise ValueError("--scale must be > 0, --max-ppl-drift, --hellaswag and --distill >= 0.")
    if a.valid < a.batch_size:
        raise ValueError(f"--valid {a.valid} is smaller than --batch-size {a.batch_size}.")


# ---------------------------------------------------------------- general ability

def wikitext_ppl(model, ids: List[int], window: int = 512) -> float:
    """Perplexity of ``ids`` in windows of ``window`` tokens (each window read on its own)."""
    import mlx.core as mx

    nll, count = 0.0, 0
    for i in range(0, len(ids) - 1, window):
        x = mx.array([ids[i: i + window + 1]])
        if x.shape[1] < 2:
            break
        logits = model(x[:, :-1]).astype(mx.float32)
        lp = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        nll -= mx.take_along_axis(lp, x[:, 1:, None], axis=-1).sum().item()
        count += x.shape[1] - 1
    return math.exp(nll / max(count, 1))


def hellaswag_items(path: Path, n: int, seed: int) -> list:
    if not path.is_file():
        raise FileNotFoundError(f"HellaSwag not found at {path}; put hellaswag_val_full.txt.bz2 beside the WikiText "
                                "file (see ../shared/data/README.md) or pass --hellaswag 0.")
    with bz2.open(path, "rt", encoding="utf-8") as fh:
        lines = fh.read().split("\n")
    items = [(lines[i], int(lines[i + 1]), lines[i + 2:i + 6]) for i in range(0, len(lines) - 5, 6)]
    return random.Random(seed).sample(items, min(n, len(items)))


def hellaswag_acc(model, tok, items) -> float:
    """acc_norm: the ending with the best mean log-probability per token, the four endings in one batch."""
    import mlx.core as mx
    import numpy as np

    right = 0
    for ctx, gold, endings in items:
        c = tok.encode(ctx)
        seqs = [c + tok.encode(" " + e.strip(), add_special_tokens=False) for e in endings]
        L = max(len(s) for s in seqs)
        x = mx.array(np.array([s + [0] * (L - len(s)) for s in seqs], np.int32))
        logits = model(x[:, :-1]).astype(mx.float32)
        lp = np.array(logits - mx.logsumexp(logits, axis=-1, keepdims=True))
        scores = [float(np.mean([lp[k, j - 1, s[j]] for j in range(len(c), len(s))])) for k, s in enumerate(seqs)]
        right += int(np.argmax(scores) == gold)
    return right / max(len(items), 1)


def answer_match(model, pairs: list) -> Dict[str, float]:
    """Per category, the share of answers greedy decoding reproduces exactly (teacher-forced)."""
    import mlx.core as mx

    hits: Dict[str, list] = {}
    for cat, ids, off in pairs:
        x = mx.array([ids])
        pred = mx.argmax(model(x[:, :-1])[0, off - 1:], axis=-1)
        hits.setdefault(cat, []).append(bool(mx.all(pred == x[0, off:]).item()))
    out = {c: sum(h) / len(h) for c, h in sorted(hits.items())}
    out["all"] = sum(sum(h) for h in hits.values()) / max(sum(len(h) for h in hits.values()), 1)
    return out


# ---------------------------------------------------------------- training

def run(a, log=print) -> dict:
    import mlx.core as mx
    import mlx.optimizers as optim
    import numpy as np
    from mlx.utils import tree_flatten, tree_unflatten
    import mlx.nn as nn

    from ..learn import apply_lora, load_trainable, remove_lora, save_adapter
    from ..learn.bank_sleep import SleepConfig, general_sets, general_text_path
    from ..learn.data import tokenize
    from ..learn.trainer import base_log_probs, evaluate, iterate_batches, make_batch, replay_loss
    from .apply import default_dir
    from .data import generate

    t_start = time.perf_counter()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if not out.is_dir():
        raise ValueError(f"--out {out} is not a directory.")
    text_path = general_text_path(a.general_text)
    model, tok = load_trainable(a.model, dequantize=a.dequantize)
    log(f"model loaded ({time.perf_counter() - t_start:.1f} s); device {mx.default_device()}")

    def tok_all(examples):
        res = []
        for ex in examples:
            ids, off = tokenize(ex, "chat", tok)
            if len(ids) <= MAX_SEQ and off < len(ids):
                res.append((ex.get("category", "text"), ids, off))
        return res

    train_qa = tok_all(generate(a.examples, seed=a.seed))
    valid_qa = tok_all(generate(a.valid, seed=a.seed + 10_000))
    n_rep = min(int(round(a.batch_size * a.replay_share)), a.batch_size - 1)
    n_replay = max(4 * n_rep, int(round(len(train_qa) * a.replay_share / (1 - a.replay_share)))) if n_rep else 0
    _, replay = general_sets(tok, SleepConfig(chunk_tokens=128, general_chunks=1), n_replay, text_path)
    qa_set = [(ids, off) for _, ids, off in train_qa]
    replay_set = [(ids[:MAX_SEQ], 0) for ids, _ in (tokenize(r, "text", tok) for r in replay)]
    n_rep = min(n_rep, len(replay_set))
    train_set = qa_set + replay_set
    valid_set = [(ids, off) for _, ids, off in valid_qa]
    text = text_path.read_text(encoding="utf-8")
    ppl_ids = tok.encode(text[: 8 * a.ppl_tokens])[: a.ppl_tokens]
    log(f"{len(train_qa)} QA + {len(train_set) - len(train_qa)} replayed paragraphs; {len(valid_set)} validation; "
        f"perplexity on the first {len(ppl_ids)} WikiText-2 tokens")

    model.eval()
    before = {"ppl": wikitext_ppl(model, ppl_ids), "answers": answer_match(model, valid_qa)}
    items = hellaswag_items(text_path.parent / "hellaswag_val_full.txt.bz2", a.hellaswag, a.seed) if a.hellaswag else []
    if items:
        before["hellaswag"] = hellaswag_acc(model, tok, items)
    log(f"base model: perplexity {before['ppl']:.3f}, answers {before['answers']['all']:.3f}"
        + (f", HellaSwag {before['hellaswag']:.3f}" if items else ""))

    mx.random.seed(a.seed)
    apply_lora(model, num_layers=a.num_layers, rank=a.rank, scale=a.scale)
    opt = optim.AdamW(learning_rate=a.learning_rate, weight_decay=0.0)
    grad_fn = nn.value_and_grad(model, lambda m, qa, rep, blp: replay_loss(m, qa, rep, blp, a.distill))
    batches = iterate_batches(qa_set, a.batch_size - n_rep, a.seed)
    rep_batches = iterate_batches(replay_set, n_rep, a.seed + 1) if n_rep else None
    history: Dict[str, list] = {"train_loss": [], "val_loss": [], "ppl": []}
    best: Optional[dict] = None
    since_best, step_s = 0, []

    def snapshot():
        return {k: mx.array(v) for k, v in tree_flatten(model.trainable_parameters())}

    def evaluate_at(step: int) -> bool:
        nonlocal best, since_best
        model.eval()
        v = evaluate(model, valid_set, a.batch_size, -1)
        p = wikitext_ppl(model, ppl_ids)
        model.train()
        drift = p / before["ppl"] - 1
        history["val_loss"].append((step, v))
        history["ppl"].append((step, p))
        ok = drift <= a.max_ppl_drift
        if ok and (best is None or v < best["val_loss"]):
            best, since_best = {"step": step, "val_loss": v, "ppl": p, "weights": snapshot()}, 0
        else:
            since_best += 1
        log(f"step {step}: val loss {v:.4f}, perplexity {p:.3f} ({100 * drift:+.2f}%)"
            + ("" if ok else " over the drift bound") + (" *" if best is not None and best["step"] == step else ""))
        return since_best >= a.patience

    evaluate_at(0)  # the adapter as initialised (B = 0): the base model's validation loss
    model.train()
    stopped_early = False
    for step in range(1, a.iters + 1):
        t0 = time.perf_counter()
        rep = make_batch(next(rep_batches)) if rep_batches is not None else None
        base_logp = base_log_probs(model, rep[0]) if rep is not None and a.distill > 0 else None
        (loss, _), grads = grad_fn(model, make_batch(next(batches)), rep, base_logp)
        opt.update(model, grads)
        mx.eval(model.parameters(), opt.state, loss)
        step_s.append(time.perf_counter() - t0)
        history["train_loss"].append((step, loss.item()))
        if step % 10 == 0 or step == 1:
            eta = (a.iters - step) * sum(step_s[-10:]) / len(step_s[-10:])
            log(f"step {step}/{a.iters}: train loss {loss.item():.4f}, {step_s[-1]:.2f} s/step, ~{eta:.0f} s left")
        if step % a.steps_per_eval == 0 or step == a.iters:
            if evaluate_at(step):
                stopped_early = True
                log(f"stopped early at step {step}: no better adapter in {a.patience} evaluations")
                break
    model.eval()
    if best is None:
        remove_lora(model)
        raise RuntimeError(f"no adapter stayed within --max-ppl-drift {a.max_ppl_drift}; nothing written "
                           "(lower --learning-rate or --scale, or raise --replay-share)")
    model.update(tree_unflatten(list(best["weights"].items())))
    mx.eval(model.parameters())
    base_name = str(getattr(model, "model_path", a.model or "default"))
    save_adapter(model, out, extra={"base_model": base_name, "purpose": "reader",
                                    "trained": {"iters": best["step"], "learning_rate": a.learning_rate,
                                                "examples": a.examples, "replay_share": a.replay_share, "distill": a.distill,
                                                "seed": a.seed}})
    after = {"ppl": wikitext_ppl(model, ppl_ids), "answers": answer_match(model, valid_qa)}
    if items:
        after["hellaswag"] = hellaswag_acc(model, tok, items)
    remove_lora(model)
    off = wikitext_ppl(model, ppl_ids)  # the adapter off again: the base model's figure, bit for bit
    report = {
        "adapter": {"rank": a.rank, "scale": a.scale, "num_layers": a.num_layers, "best_step": best["step"],
                    "best_val_loss": best["val_loss"], "stopped_early": stopped_early,
                    "bytes": (out / "adapters.safetensors").stat().st_size},
        "args": {k: v for k, v in vars(a).items()},
        "device": str(mx.default_device()),
        "data": {"train_qa": len(train_qa), "replay": len(train_set) - len(train_qa), "valid": len(valid_set)},
        "base": before, "reader_on": after, "ppl_off_after_removal": off,
        "ppl_drift": after["ppl"] / before["ppl"] - 1,
        "history": history,
        "median_step_s": float(np.median(step_s)) if step_s else None,
        "seconds": time.perf_counter() - t_start,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    log(f"adapter (step {best['step']}) and report.json written to {out}; perplexity {before['ppl']:.3f} -> "
        f"{after['ppl']:.3f} ({100 * report['ppl_drift']:+.2f}%), answers {before['answers']['all']:.3f} -> "
        f"{after['answers']['all']:.3f}" + (f", HellaSwag {before['hellaswag']:.3f} -> {after['hellaswag']:.3f}"
                                            if items else "") + f"; {report['seconds']:.0f} s in all")
    log(f"to use it: cp {out}/adapter_config.json {out}/adapters.safetensors {default_dir()}/")
    return report


def main(argv=None) -> int:
    a = setup_arg_parser().parse_args(argv)
    try:
        check(a)
        run(a, log=lambda m: print(m, flush=True))
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as e:
        print(f"[reader.train] {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("[reader.train] interrupted; nothing written past the last message.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
