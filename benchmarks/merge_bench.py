"""Merging two domains' adapters: how much of each one's gain survives TIES, DARE+TIES and linear merges.

    python -m mlx_synapse.benchmarks.merge_bench --workdir /tmp/mb --json results/merge/cpu_tiny.json  # tiny model: CPU, ~20 min
    python -m mlx_synapse.benchmarks.merge_bench --model default --json results/merge/default.json     # the default model: GPU

Two disjoint synthetic domains of fictional facts, question -> answer, trained on the
answer tokens only:

- ``births``: "Where was Valo Tresk born?" -> "Valo Tresk was born in Quenmarra."
- ``codes``:  "What is the code of the amber lantern of Zoqu?" -> "The amber lantern of Zoqu has code 4-7-1."

One LoRA adapter is trained per domain from the same base (same seed, layers, rank),
then the two are merged in the dense delta space (``learn.merge``) and the merge is
folded into the base weights exactly (``apply_deltas``; the ``+svd`` rows write it
as a rank-2r adapter instead and report the SVD's error). For each domain:

- ``loss``: mean cross-entropy of the answer tokens (teacher forced);
- ``recall``: the share of facts whose answer greedy decoding reproduces exactly
  (every answer token is the argmax after the true prefix);
- ``kept``: the merge's gain over the base as a share of the domain's own adapter's
  gain, for loss and for recall ((base - merged) / (base - own)).

Each adapter's training set is its domain's facts plus a ``--replay-share`` of replayed
general examples (the tiny base's pretraining facts, as the package's learner replays
general text; none on a real model). The facts measured are the training facts: a tiny
model cannot generalise to paraphrases, so the gain measured is what each adapter
learned, and the question is how much of it a merge keeps. Without ``--model`` the base is a random 4-block Llama (hidden 128) over
UTF-8 bytes (vocabulary 256), built in memory from ``--seed``; ``--model default`` (or a
directory) runs the same on a real model with its tokenizer. The tiny base is first
trained in full (``--pretrain-iters``) on other facts of both templates, so that it knows
the formats and the bytes of English before the adapters are trained: otherwise most of
an adapter's gain is the format, which any merge keeps, and the figures flatter merging.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from mlx_synapse.learn import apply_lora, remove_lora, save_adapter
from mlx_synapse.learn.merge import adapter_deltas, apply_deltas, merge_adapters, save_merged_adapter
from mlx_synapse.learn.trainer import TrainingArgs, evaluate, make_batch, train

SYL = ("ka", "lo", "ven", "tri", "mar", "qu", "sel", "do", "ran", "bex", "ul", "fen", "zo", "pra", "nim", "gor")
ADJ = ("amber", "silent", "crooked", "velvet", "hollow", "gilded", "frozen", "rusty", "lunar", "scarlet",
       "woven", "tidal")
NOUN = ("lantern", "compass", "kettle", "harp", "anchor", "mirror", "ledger", "thimble", "bell", "spindle")
TINY = dict(model_type="llama", hidden_size=128, num_hidden_layers=4, intermediate_size=256, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=256, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
            max_position_embeddings=512)


def _name(rng: random.Random, parts: int) -> str:
    return "".join(rng.choice(SYL) for _ in range(parts)).capitalize()


def domains(n: int, seed: int) -> dict:
    """{domain: [(question, answer)]}, ``n`` facts each, no subject repeated."""
    rng = random.Random(seed)
    births, people = [], set()
    while len(births) < n:
        person = f"{_name(rng, 2)} {_name(rng, 2)}"
        if person not in people:
            people.add(person)
            births.append((f"Where was {person} born?", f"{person} was born in {_name(rng, 3)}."))
    codes, things = [], set()
    while len(codes) < n:
        thing = f"{rng.choice(ADJ)} {rng.choice(NOUN)} of {_name(rng, 2)}"
        if thing not in things:
            things.add(thing)
            code = "-".join(str(rng.randrange(10)) for _ in range(3))
            codes.append((f"What is the code of the {thing}?", f"The {thing} has code {code}."))
    return {"births": births, "codes": codes}


def encode_pairs(pairs, encode: Callable[[str], List[int]]) -> list:
    """[(ids, offset)]: ``Q: ...\\nA:`` then the answer; the loss covers the answer only."""
    out = []
    for q, a in pairs:
        prompt = encode(f"Q: {q}\nA:")
        out.append((prompt + encode(f" {a}\n"), len(prompt)))
    return out


def recall(model: nn.Module, dataset: list, batch_size: int = 16) -> float:
    """Share of examples whose every answer token is the argmax after its true prefix (greedy reproduces it)."""
    hits = 0
    for i in range(0, len(dataset), batch_size):
        chunk = dataset[i:i + batch_size]
        tokens, offsets, lengths = make_batch(chunk)
        pred = mx.argmax(model(tokens[:, :-1]), axis=-1)
        pos = mx.arange(1, tokens.shape[1])[None]
        mask = (pos >= offsets[:, None]) & (pos < lengths[:, None])
        wrong = ((pred != tokens[:, 1:]) & mask).sum(axis=1)
        hits += int((wrong == 0).sum().item())
    return hits / len(dataset)


def measure(model, data: dict) -> dict:
    model.eval()
    return {d: {"loss": evaluate(model, ds, 16), "recall": recall(model, ds)} for d, ds in data.items()}


def kept(base: dict, own: dict, merged: dict) -> dict:
    out = {}
    for key in ("loss", "recall"):
        gain = (base[key] - own[key]) if key == "loss" else (own[key] - base[key])
        got = (base[key] - merged[key]) if key == "loss" else (merged[key] - base[key])
        out[key] = got / gain if abs(gain) > 1e-9 else float("nan")
    return out


def setup_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mlx_synapse.benchmarks.merge_bench", description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="'default', a model directory, or none: a tiny random byte model")
    p.add_argument("--facts", type=int, default=24, help="facts per domain")
    p.add_argument("--iters", type=int, default=None, help="training steps per adapter (default 150 tiny, 200 real)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--learning-rate", type=float, default=None, help="(default 1e-3 tiny, 2e-4 real)")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--scale", type=float, default=None, help="LoRA scale (default 2 tiny, 20 real)")
    p.add_argument("--num-layers", type=int, default=None, help="adapted blocks from the end (default 2 tiny, 16 real)")
    p.add_argument("--merges", default="linear:1:1,linear:1:2,ties:0.2:1,ties:0.5:1,ties:1:1,ties:0.2:2,dare_ties:0.2:1,"
                                       "dare_ties:0.5:1,dare_linear:0.5:1",
                   help="comma-separated method:density:lam")
    p.add_argument("--svd", default="ties:0.2:1", help="merges also written as a rank-2r adapter (comma-separated)")
    p.add_argument("--pretrain-iters", type=int, default=150,
                   help="full training steps of the tiny base on other facts of both templates")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=None, help="where the adapters (and the pretrained tiny base, reused by "
                                                   "later runs) are written (default: a temporary directory)")
    p.add_argument("--replay-share", type=float, default=0.5,
                   help="share of each adapter's training examples replayed from the tiny base's general facts")
    p.add_argument("--reuse-adapters", action="store_true",
                   help="take the domains' adapters already in --workdir (same settings) instead of training them")
    p.add_argument("--json", default=None, help="also write the figures here")
    return p


def load_base(spec: Optional[str], seed: int, pretrain: list = (), pretrain_iters: int = 0, log=print,
              cache: Optional[str] = None):
    """(make_model, encode, description): a fresh copy of the base each call.

    The tiny base is trained in full on ``pretrain`` (ids, offset) examples first."""
    if spec is None:
        from mlx_synapse.models.llama import Model, ModelArgs

        mx.random.seed(seed)
        proto = Model(ModelArgs.from_dict(TINY))
        cached = Path(cache) / f"tiny_base_s{seed}_p{pretrain_iters}_n{len(pretrain)}.safetensors" if cache else None
        if cached is not None and cached.is_file():
            proto.load_weights(str(cached))
            log(f"base: the pretrained tiny base from {cached}")
        elif pretrain_iters:
            train(proto, list(pretrain), TrainingArgs(iters=pretrain_iters, batch_size=16, learning_rate=2e-3,
                                                      seed=seed + 1, steps_per_report=max(pretrain_iters // 4, 1),
                                                      steps_per_eval=10**9, save_every=10**9), report=log)
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                mx.save_safetensors(str(cached), dict(nn.utils.tree_flatten(proto.parameters())))
        weights = list(nn.utils.tree_flatten(proto.parameters()))

        def make():
            m = Model(ModelArgs.from_dict(TINY))
            m.load_weights(weights)
            mx.eval(m.parameters())
            return m

        return make, lambda s: list(s.encode("utf-8")), (f"tiny llama (4x128, byte vocabulary, {pretrain_iters} "
                                                          "full steps on other facts)")
    from mlx_synapse.learn import load_trainable

    path = None if spec == "default" else spec
    _, tok = load_trainable(path)

    def make():
        return load_trainable(path, dequantize=mx.default_device() == mx.cpu)[0]

    return make, lambda s: tok.encode(s, add_special_tokens=False), str(spec)


def main(argv: Optional[List[str]] = None) -> int:
    args = setup_arg_parser().parse_args(argv)
    tiny = args.model is None
    iters = args.iters or (150 if tiny else 200)
    lr = args.learning_rate or (1e-3 if tiny else 2e-4)
    scale = args.scale or (2.0 if tiny else 20.0)
    num_layers = args.num_layers or (2 if tiny else 16)
    try:
        merges = [(m, float(d), float(lam)) for m, d, lam in (s.split(":") for s in args.merges.split(","))]
        svd = {tuple(s.split(":")) for s in args.svd.split(",")} if args.svd else set()
    except ValueError:
        print(f"error: [merge_bench] --merges must be method:density:lam,... but got {args.merges!r}.", file=sys.stderr)
        return 2
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    n_pre = 4 * args.facts if tiny else 0
    allfacts = domains(args.facts + n_pre, args.seed)  # one draw: the pretraining facts share no subject
    byte = lambda s: list(s.encode("utf-8"))  # noqa: E731
    pre = [x for pairs in allfacts.values() for x in encode_pairs(pairs[args.facts:], byte)]
    if not 0 <= args.replay_share < 1:
        print(f"error: [merge_bench] --replay-share must be in [0, 1) but got {args.replay_share}.", file=sys.stderr)
        return 2
    make, encode, desc = load_base(args.model, args.seed, pre, args.pretrain_iters if tiny else 0, log,
                                   args.workdir)
    data = {d: encode_pairs(p[:args.facts], encode) for d, p in allfacts.items()}
    import tempfile

    work = Path(args.workdir or tempfile.mkdtemp(prefix="merge_bench_"))
    log(f"base: {desc}; device {mx.default_device()}; {args.facts} facts per domain; {iters} steps, lr {lr}, "
        f"rank {args.rank}, scale {scale}")
    model = make()
    result = {"model": desc, "device": str(mx.default_device()), "facts": args.facts, "iters": iters, "lr": lr,
              "commit": _commit(),
              "rank": args.rank, "scale": scale, "num_layers": num_layers, "replay_share": args.replay_share,
              "seed": args.seed, "base": measure(model, data), "own": {},
              "train_seconds": {}, "merges": []}
    log(f"base: {json.dumps(result['base'])}")
    paths = []
    # replayed general examples (the tiny base's own pretraining facts), as the package's learner mixes in
    # general text: without them an adapter also rewrites the other template's answers
    n_replay = round(args.replay_share / (1 - args.replay_share) * args.facts) if tiny else 0
    replay = random.Random(args.seed).sample(pre, min(n_replay, len(pre))) if n_replay else []
    result["replay_examples"] = len(replay)
    for d, ds in data.items():
        model = make()
        if args.reuse_adapters and (work / d / "adapters.safetensors").is_file():
            from mlx_synapse.learn import load_adapter

            load_adapter(model, work / d)
            log(f"adapter {d}: reused from {work / d}")
        else:
            mx.random.seed(args.seed)
            apply_lora(model, num_layers=num_layers, rank=args.rank, scale=scale)
            t0 = time.perf_counter()
            train(model, ds + replay, TrainingArgs(iters=iters, batch_size=args.batch_size, learning_rate=lr, seed=args.seed,
                                          steps_per_report=max(iters // 4, 1), steps_per_eval=10**9,
                                          save_every=10**9), report=log)
            result["train_seconds"][d] = time.perf_counter() - t0
            save_adapter(model, work / d)
        paths.append(work / d)
        result["own"][d] = measure(model, data)
        log(f"adapter {d}: {json.dumps(result['own'][d])}")
    for method, density, lam in merges:
        deltas, config = merge_adapters(paths, method=method, density=density, lam=lam, seed=args.seed)
        forms = [("fused", None)]
        if (method, f"{density:g}", f"{lam:g}") in svd or (method, str(density), str(lam)) in svd:
            forms.append(("svd", 2 * args.rank))
        for form, rank in forms:
            model = make()
            row = {"method": method, "density": density, "lam": lam, "form": form}
            if rank is None:
                apply_deltas(model, deltas)
            else:
                from mlx_synapse.learn import load_adapter

                out = work / f"{method}_{density:g}_{lam:g}"
                row["svd_rank"], row["svd_relative_error"] = rank, save_merged_adapter(
                    deltas, config, out, rank)["overall"]
                load_adapter(model, out)
            row["scores"] = measure(model, data)
            row["kept"] = {d: kept(result["base"][d], result["own"][d][d], row["scores"][d]) for d in data}
            result["merges"].append(row)
            remove_lora(model)
    print(report(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


def _commit() -> str:
    from .common import commit

    return commit()


def report(r: dict) -> str:
    lines = [f"{r['model']} on {r['device']}: {r['facts']} facts per domain, {r['iters']} steps, lr {r['lr']}, "
             f"rank {r['rank']}", "",
             "| model | births loss | births recall | codes loss | codes recall | births kept (loss/recall) | "
             "codes kept (loss/recall) |", "|---|---|---|---|---|---|---|"]

    def row(name, s, k=None):
        pct = lambda x: "n/a" if x != x else f"{x:.0%}"  # noqa: E731  (nan: the adapter gained nothing)
        ks = [f"{pct(k[d]['loss'])} / {pct(k[d]['recall'])}" if k else "" for d in ("births", "codes")]
        return (f"| {name} | {s['births']['loss']:.3f} | {s['births']['recall']:.0%} | {s['codes']['loss']:.3f} | "
                f"{s['codes']['recall']:.0%} | {ks[0]} | {ks[1]} |")

    lines.append(row("base", r["base"]))
    for d in ("births", "codes"):
        lines.append(row(f"{d} adapter", r["own"][d]))
    for m in r["merges"]:
        name = f"{m['method']} d={m['density']:g} λ={m['lam']:g}"
        if m["form"] == "svd":
            name += f" (rank {m['svd_rank']} SVD, error {m['svd_relative_error']:.2f})"
        lines.append(row(name, m["scores"], m["kept"]))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
