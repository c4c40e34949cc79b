"""Sleep over the memory bank: consolidate a user's current facts into a LoRA adapter, gated.

:func:`sleep_bank` picks the user's facts (:func:`.fact_pairs.pick_facts`), builds the
training pairs, mixes in replayed general text (WikiText-2, a part of the file the gate
does not read), trains a fresh adapter from the base and gates it with
:func:`.sleep.consolidate` (recall on phrasings never trained on, perplexity drift on
general text). Only an accepted adapter is written: to a temporary directory beside
``<db>.sleep/<user>/``, then renamed into place, with ``manifest.json`` (the facts
consolidated, the gate figures, the base model, the time). A rejected sleep writes
nothing, so the previous adapter's bytes stay as they were.

:func:`forget_from_adapter` removes memories from the adapter honestly: it trains again
from the base over the manifest's facts without them; if that sleep is rejected the
adapter is deleted (none is better than one that still knows the forgotten facts).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Sequence

import mlx.core as mx
import mlx.nn as nn

from .adapters import save_adapter
from .data import _fmt, tokenize
from .fact_pairs import FactItem, gate_pairs, pick_facts, training_examples
from .lora import apply_lora, lora_layers, remove_lora
from .sleep import Gate, SleepReport, answer_recall, consolidate
from .trainer import TrainingArgs, loss_fn, make_batch

MANIFEST = "manifest.json"
DATA_ENV = "MLX_SYNAPSE_DATA"


@dataclass
class SleepConfig:
    """Training and gate settings of one sleep."""

    iters: int = 800
    learning_rate: float = 1e-4
    rank: int = 16
    num_layers: int = 16
    scale: float = 2.0  # 20 (mlx-lm's) with fitted replay drove perplexity +2145% on the default model
    batch_size: int = 8
    replay_share: float = 0.25  # share of every batch that is general text
    distill: float = 1.0  # > 0: general text is held to the base model's distribution (KL), not fitted
    check_every: int = 100  # measure the gate every that many steps, stop at the first pass (0: only at the end)
    min_recall: float = 0.9
    max_ppl_drift: float = 0.01
    general_chunks: int = 16  # chunks of general text the gate's perplexity reads
    chunk_tokens: int = 128
    seed: int = 0

    def __post_init__(self):
        if not 0 <= self.replay_share < 1:
            raise ValueError(f"[sleep] replay share must be in [0, 1) but got {self.replay_share}.")
        if self.distill < 0 or self.check_every < 0:
            raise ValueError(f"[sleep] distill and check-every must be >= 0 but got {self.distill}, {self.check_every}.")
        for k in ("iters", "rank", "batch_size", "general_chunks", "chunk_tokens"):
            if getattr(self, k) < 1:
                raise ValueError(f"[sleep] {k.replace('_', '-')} must be at least 1 but got {getattr(self, k)}.")


@dataclass
class SleepResult:
    accepted: bool
    report: Optional[SleepReport]
    facts: List[FactItem]
    adapter_dir: Path
    manifest: Optional[dict] = None
    estimate_s: float = 0.0
    notes: List[str] = field(default_factory=list)


def sleep_dir(db_path, user: str) -> Path:
    """Where a user's consolidated adapter lives: ``<db>.sleep/<user>/``."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", user) or "_"
    return Path(str(db_path) + ".sleep") / safe


def general_text_path(path=None) -> Path:
    """WikiText-2 raw test: ``path``, else ``$MLX_SYNAPSE_DATA/eval/``, else ``shared/data/eval/`` beside
    the working directory or the source tree, or up to a few folders above them."""
    if path is not None:
        cands = [Path(path)]
    else:
        ups = list(Path.cwd().resolve().parents)[:4] + list(Path(__file__).resolve().parents)[2:6]
        roots = ([Path(os.environ[DATA_ENV])] if os.environ.get(DATA_ENV) else []) + [
            u / "shared" / "data" for u in ups]
        cands = [r / "eval" / "wikitext2_raw_test.txt" for r in roots]
    for c in cands:
        if c.is_file():
            return c
    raise FileNotFoundError(f"[sleep] general text not found (looked for {cands[0]}); pass --general-text FILE "
                            f"(WikiText-2 raw test, see ../shared/data/README.md) or set {DATA_ENV}.")


def general_sets(tokenizer, config: SleepConfig, n_replay: int, path=None) -> tuple:
    """(gate set, replay examples): token chunks from the file's first part for the gate, and
    text examples from its second half for replay, so training never sees what the gate reads."""
    text = general_text_path(path).read_text(encoding="utf-8")
    half = len(text) // 2
    ids = tokenizer.encode(text[: min(half, 4 * config.chunk_tokens * config.general_chunks + 1000)])
    n = config.chunk_tokens
    gate = [(ids[i: i + n], 0) for i in range(0, len(ids) - n + 1, n)][: config.general_chunks]
    paras = [p.strip() for p in text[half:].split("\n") if len(p.strip()) > 200 and not p.strip().startswith("=")]
    replay = [{"text": p[:4 * n]} for p in paras[:n_replay]]
    return gate, replay


def _tok(examples: Sequence[dict], tokenizer) -> list:
    out = []
    for i, ex in enumerate(examples):
        ids, off = tokenize(ex, _fmt(ex, f"[sleep] example {i}"), tokenizer)
        if len(ids) >= 2 and off < len(ids):
            out.append((ids, off))
    return out


def recall_pairs(facts: Sequence[FactItem], tokenizer) -> list:
    """(prompt ids, answer ids) of the gate questions, for :func:`.sleep.answer_recall`."""
    out = []
    for q, a in gate_pairs(facts):
        ids, off = tokenize({"prompt": q, "completion": a}, "completions", tokenizer)
        out.append((ids[:off], ids[off:]))
    return out


def estimate_seconds(model: nn.Module, data: list, config: SleepConfig, n_recall: int, n_general: int) -> float:
    """Seconds a sleep will take, from two timed gradient evaluations (nothing is updated)."""
    grad = nn.value_and_grad(model, lambda m, *b: loss_fn(m, *b)[0])
    batch = make_batch(data[: config.batch_size])
    mx.eval(grad(model, *batch))  # warm-up
    t0 = time.perf_counter()
    for _ in range(2):
        mx.eval(grad(model, *batch))
    step = (time.perf_counter() - t0) / 2
    return step * config.iters + step * 0.4 * (2 * (n_recall + n_general / config.batch_size))


def read_manifest(adapter_dir) -> Optional[dict]:
    """The manifest of a user's adapter directory (None when there is none); finishes an
    interrupted swap first (see :func:`_install`)."""
    d = Path(adapter_dir)
    old = d.parent / f".{d.name}.old"
    if not d.exists() and old.exists():  # a crash between the two renames: the old one is whole
        os.replace(old, d)
    f = d / MANIFEST
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"[sleep] {f} is not valid JSON ({e.msg}); delete {d} to start over.") from None


def _install(tmp: Path, dest: Path) -> None:
    """Put the complete directory ``tmp`` at ``dest``: the old one is renamed aside, the new one
    renamed in, the old one deleted. Each rename is atomic; a reader finding ``dest`` missing
    restores the aside copy (:func:`read_manifest`)."""
    old = dest.parent / f".{dest.name}.old"
    if old.exists():
        shutil.rmtree(old)
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    if old.exists():
        shutil.rmtree(old)


def _remove(dest: Path) -> None:
    if dest.exists():
        old = dest.parent / f".{dest.name}.gone"
        os.replace(dest, old)
        shutil.rmtree(old)


def _check_writable(dest: Path) -> None:
    parent = dest.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"[sleep] cannot create {parent} ({e.strerror}); pass --out DIR somewhere writable.") from None
    if not os.access(parent, os.W_OK):
        raise OSError(f"[sleep] {parent} is not writable; pass --out DIR somewhere writable.")


def sleep_facts(facts: Sequence[FactItem], model: nn.Module, tokenizer, *, adapter_dir, base_model: str = "",
                user: str = "", config: SleepConfig = SleepConfig(), general_text=None, forgotten: Iterable[int] = (),
                dry_run: bool = False, report: Callable[[str], None] = lambda m: None,
                progress: Optional[Callable[[int], None]] = None) -> SleepResult:
    """Train a fresh adapter on ``facts`` and keep it (written to ``adapter_dir``) if the gate passes.

    ``model``: the trainable base (``learn.load_trainable``); any adapter on it is removed first.
    ``progress(step)`` is called after each training step.
    """
    adapter_dir = Path(adapter_dir)
    facts = list(facts)
    if not facts:
        raise ValueError(f"[sleep] user {user!r} has no current facts to consolidate (only kind='fact' memories "
                         "that are not superseded are; say some facts first).")
    _check_writable(adapter_dir)
    examples = training_examples(facts)
    n_rep = min(int(round(config.batch_size * config.replay_share)), config.batch_size - 1)
    gate_set, replay = general_sets(tokenizer, config, max(4 * n_rep, 256) if n_rep else 0, general_text)
    data = _tok(examples, tokenizer)
    rep_data = _tok(replay, tokenizer)
    n_rep = min(n_rep, len(rep_data))
    pairs = recall_pairs(facts, tokenizer)
    if lora_layers(model):
        remove_lora(model)
    mx.random.seed(config.seed)
    try:
        apply_lora(model, num_layers=config.num_layers, rank=config.rank, scale=config.scale)
    except (ValueError, AttributeError, TypeError) as e:
        raise ValueError(f"[sleep] this model cannot take a LoRA adapter ({e}).") from None
    est = estimate_seconds(model, data, config, len(pairs), len(gate_set))
    res = SleepResult(False, None, facts, adapter_dir, estimate_s=est)
    report(f"{len(facts)} facts -> {len(examples)} training examples, {n_rep} of every {config.batch_size} "
           f"in a batch general text ({'held to the base model' if config.distill > 0 else 'fitted'}); "
           f"{len(pairs)} gate questions; estimated {est:.0f} s on {mx.default_device()}")
    if dry_run:
        return res
    bs = min(config.batch_size - n_rep, len(data)) + n_rep
    args = TrainingArgs(iters=config.iters, batch_size=bs, learning_rate=config.learning_rate,
                        steps_per_report=1, steps_per_eval=10**9, seed=config.seed)

    def on_report(msg: str) -> None:
        m = re.match(r"step (\d+): train loss", msg)
        if m and progress is not None:
            progress(int(m.group(1)))
        elif "gate recall" in msg:
            report(msg)

    rep = consolidate(model, data, args, lambda m: answer_recall(m, pairs), gate_set,
                      Gate(config.min_recall, config.max_ppl_drift), report=on_report, replay_set=rep_data,
                      replay_per_batch=n_rep, distill=config.distill, check_every=config.check_every)
    res.report, res.accepted = rep, rep.accepted
    if not rep.accepted:
        return res
    manifest = {
        "user": user, "base_model": base_model, "created": time.time(),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "memory_ids": [f.id for f in facts], "facts": [f.as_dict() for f in facts],
        "forgotten_ids": sorted(set(int(i) for i in forgotten)), "gate": rep.as_dict(),
        "config": asdict(config), "device": str(mx.default_device()),
    }
    manifest["gate"].pop("train_loss", None)
    tmp = Path(tempfile.mkdtemp(prefix=f".{adapter_dir.name}.tmp-", dir=adapter_dir.parent))
    try:
        save_adapter(model, tmp, extra={"base_model": base_model})
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        _install(tmp, adapter_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    res.manifest = manifest
    return res


def sleep_bank(bank, user: str, model: nn.Module, tokenizer, *, adapter_dir=None, only_new: bool = False,
               **kw) -> SleepResult:
    """:func:`sleep_facts` over the user's current facts in ``bank`` (those forgotten from the
    adapter before stay out). ``adapter_dir``: default :func:`sleep_dir` of the bank's file.
    ``only_new``: leave out facts the current adapter already holds (a fresh adapter is still
    trained: pass only_new only to see or train what is new)."""
    adapter_dir = Path(adapter_dir) if adapter_dir is not None else sleep_dir(bank.path, user)
    prev = read_manifest(adapter_dir) or {}
    forgotten = set(prev.get("forgotten_ids", []))
    facts = pick_facts(bank, user, exclude=forgotten, only_new=prev.get("memory_ids", []) if only_new else ())
    return sleep_facts(facts, model, tokenizer, adapter_dir=adapter_dir, user=user, forgotten=forgotten, **kw)


def forget_from_adapter(ids: Iterable[int], model: nn.Module, tokenizer, *, adapter_dir, **kw) -> SleepResult:
    """Remove memories ``ids`` from a user's adapter: train again from the base over the manifest's
    other facts (gated). A rejected re-sleep deletes the adapter: none is kept that still holds them.

    Raises:
        ValueError: no adapter there, or none of ``ids`` was consolidated into it.
    """
    adapter_dir = Path(adapter_dir)
    man = read_manifest(adapter_dir)
    if man is None:
        raise ValueError(f"[sleep] no consolidated adapter at {adapter_dir}; nothing to forget from.")
    ids = {int(i) for i in ids}
    held = set(man["memory_ids"])
    if not ids & held:
        raise ValueError(f"[sleep] memory id(s) {sorted(ids)} were not consolidated into {adapter_dir} "
                         f"(it holds {len(held)} ids).")
    forgotten = set(man.get("forgotten_ids", [])) | ids
    facts = [FactItem(**f) for f in man["facts"] if f["id"] not in forgotten]
    kw.setdefault("user", man.get("user", ""))
    kw.setdefault("base_model", man.get("base_model", ""))
    if not facts:
        _remove(adapter_dir)
        return SleepResult(True, None, [], adapter_dir, notes=["no facts left: the adapter was deleted"])
    res = sleep_facts(facts, model, tokenizer, adapter_dir=adapter_dir, forgotten=forgotten, **kw)
    if not res.accepted and not kw.get("dry_run"):
        _remove(adapter_dir)
        res.notes.append("the re-sleep without the forgotten memories was rejected: the adapter was deleted")
    return res
