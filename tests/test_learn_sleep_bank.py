"""Sleep over the memory bank: which facts, which pairs, atomic adapter + manifest, rollback, forgetting, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

mx = pytest.importorskip("mlx.core")

from mlx_synapse.learn import load_trainable  # noqa: E402
from mlx_synapse.learn.bank_sleep import (  # noqa: E402
    MANIFEST, SleepConfig, forget_from_adapter, read_manifest, sleep_bank, sleep_dir)
from mlx_synapse.learn.fact_pairs import GATE, TRAIN, answer_of, pick_facts, questions, training_examples  # noqa: E402
from mlx_synapse.memory.bank import MemoryBank  # noqa: E402

from .learn_util import tiny_model_dir  # noqa: E402
from .test_memory_bank import BagOfWords  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GENERAL = ("The harbour was quiet in the early morning and the fishing boats went out one by one. " * 40 + "\n") * 6


def _fact(bank, text, slot, subject, value, user="me", **extra):
    meta = {"kind": "fact", "slot": slot, "subject": subject, "value": value, "valid_from": 0.0,
            "superseded_by": None, "raw_id": None, **extra}
    return bank.add(text, user=user, metadata=meta, force=True)


@pytest.fixture
def bank(tmp_path):
    b = MemoryBank(tmp_path / "m.db", BagOfWords(), backend="numpy")
    ids = {
        "city": _fact(b, "My sister lives in Tampere.", "sister.city", "sister", "Tampere"),
        "job": _fact(b, "I work as a glazier.", "user.job", "user", "glazier"),
        "old": _fact(b, "My uncle is from Graz.", "uncle.origin", "uncle", "Graz"),
        "dish": _fact(b, "My aunt's favorite dish is laksa.", "aunt.favorite.dish", "aunt", "laksa"),
    }
    new = _fact(b, "My uncle is from Kobe.", "uncle.origin", "uncle", "Kobe")
    old = b.get(ids["old"])
    b.update(ids["old"], metadata=dict(old.metadata, superseded_by=new))
    ids["new"] = new
    ids["msg"] = b.add("Long day at work today, I am tired.", user="me", metadata={"kind": "message"}, force=True)
    ids["other"] = _fact(b, "My brother lives in Oulu.", "brother.city", "brother", "Oulu", user="them")
    yield b, ids
    b.close()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, smollm2_dir):
    return tiny_model_dir(tmp_path_factory.mktemp("tiny") / "m", bits=None, seed=3, tokenizer_from=smollm2_dir,
                          num_hidden_layers=2, hidden_size=32, intermediate_size=64)


@pytest.fixture
def general(tmp_path):
    p = tmp_path / "wiki.txt"
    p.write_text(GENERAL, encoding="utf-8")
    return p


def test_pick_facts_current_of_this_user_only(bank):
    b, ids = bank
    got = [f.id for f in pick_facts(b, "me")]
    assert got == [ids["city"], ids["job"], ids["dish"], ids["new"]]  # superseded, message, other user: out
    assert [f.id for f in pick_facts(b, "me", exclude=[ids["job"]], only_new=[ids["city"]])] == [ids["dish"], ids["new"]]
    with pytest.raises(ValueError, match="no memories"):
        pick_facts(b, "nobody")


def test_pairs_from_slot_templates_and_gate_phrasings_unseen(bank):
    b, ids = bank
    facts = {f.id: f for f in pick_facts(b, "me")}
    city, job, dish = facts[ids["city"]], facts[ids["job"]], facts[ids["dish"]]
    assert questions(city) == ["Where does my sister live?", "What city does my sister live in?"]
    assert questions(job) == ["What do I do for a living?", "What is my job?"]
    assert questions(dish)[0] == "What is my aunt's favorite dish?"
    assert answer_of(city) == "Your sister lives in Tampere." and answer_of(job) == "You work as a glazier."
    ex = training_examples([city])
    assert ex[-1] == {"text": "My sister lives in Tampere."}
    assert [e["messages"][1]["content"] for e in ex[:-1]] == ["Your sister lives in Tampere."] * 2
    train = {q for k in TRAIN for side in TRAIN[k] for q in side}
    gate = {q for k in GATE for side in GATE[k] for q in side}
    assert not train & gate
    assert all(q not in {x for f in facts.values() for x in questions(f, TRAIN)}
               for f in facts.values() for q in questions(f, GATE))


def _model(tiny):
    return load_trainable(tiny)


def _cfg(**kw):
    return SleepConfig(**dict(dict(iters=2, rank=2, num_layers=-1, batch_size=2, general_chunks=2,
                                   chunk_tokens=16, min_recall=0.0, max_ppl_drift=float("inf")), **kw))


def test_accepted_sleep_writes_adapter_and_manifest_rejected_keeps_bytes(bank, tiny, general):
    b, ids = bank
    model, tok = _model(tiny)
    res = sleep_bank(b, "me", model, tok, config=_cfg(), general_text=general, base_model=str(tiny))
    out = sleep_dir(b.path, "me")
    assert res.accepted and res.adapter_dir == out
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapters.safetensors", MANIFEST]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary left
    man = json.loads((out / MANIFEST).read_text())
    assert man["memory_ids"] == [ids["city"], ids["job"], ids["dish"], ids["new"]]
    assert man["base_model"] == str(tiny) and man["gate"]["accepted"] and "ppl_drift" in man["gate"]
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # the gate cannot pass: nothing is written, the previous adapter stays byte for byte
    res2 = sleep_bank(b, "me", model, tok, config=_cfg(min_recall=1.01, seed=1), general_text=general)
    assert not res2.accepted and "recall" in res2.report.reason
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_forget_re_sleeps_without_the_id(bank, tiny, general):
    b, ids = bank
    model, tok = _model(tiny)
    out = sleep_dir(b.path, "me")
    sleep_bank(b, "me", model, tok, config=_cfg(), general_text=general)
    res = forget_from_adapter([ids["job"]], model, tok, adapter_dir=out, config=_cfg(), general_text=general)
    assert res.accepted
    man = read_manifest(out)
    assert ids["job"] not in man["memory_ids"] and man["forgotten_ids"] == [ids["job"]]
    assert all("glazier" not in f["text"] for f in man["facts"])
    # a later sleep over the bank keeps it out while the bank still holds it
    sleep_bank(b, "me", model, tok, config=_cfg(), general_text=general)
    assert ids["job"] not in read_manifest(out)["memory_ids"]
    with pytest.raises(ValueError, match="not consolidated"):
        forget_from_adapter([ids["job"]], model, tok, adapter_dir=out, config=_cfg(), general_text=general)
    # a rejected re-sleep deletes the adapter rather than keep one that knows the fact
    res = forget_from_adapter([ids["city"]], model, tok, adapter_dir=out, config=_cfg(min_recall=1.01),
                              general_text=general)
    assert not res.accepted and not out.exists() and res.notes


def test_no_facts_is_an_error(tmp_path, tiny, general):
    b = MemoryBank(tmp_path / "m.db", BagOfWords(), backend="numpy")
    b.add("Just chatting.", user="me", metadata={"kind": "message"}, force=True)
    model, tok = _model(tiny)
    with pytest.raises(ValueError, match="no current facts"):
        sleep_bank(b, "me", model, tok, config=_cfg(), general_text=general)
    b.close()


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "mlx_synapse", "sleep", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_cli_bad_input_is_one_line_exit_2(bank, tmp_path, tiny, general):
    b, ids = bank
    r = _cli("--db", str(tmp_path / "absent.db"), "--user", "me")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "does not exist" in r.stderr
    r = _cli("--db", str(b.path), "--user", "nobody")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no memories" in r.stderr
    r = _cli("--db", str(b.path), "--user", "me", "--forget", str(ids["job"]))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "nothing to forget" in r.stderr
    r = _cli("--db", str(b.path), "--user", "me", "--model", str(tmp_path / "nomodel"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "cannot load model" in r.stderr
    r = _cli("--db", str(b.path), "--user", "me", "--model", str(tiny), "--general-text", str(general),
             "--num-layers", "-1", "--rank", "2", "--iters", "1", "--batch-size", "2", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "dry run: 4 facts" in r.stdout and "estimated" in r.stdout
