""".synapse bundles: a moved bundle gives the same greedy tokens and memories; wrong base, damage and zip-slip refused."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")

from mlx_synapse.learn import apply_lora, load_adapter, lora_layers, save_adapter  # noqa: E402
from mlx_synapse.learn.bank_sleep import sleep_dir  # noqa: E402
from mlx_synapse.learn.bundle import (  # noqa: E402
    adapters_dir, export_bundle, import_bundle, main, read_bundle,
)
from mlx_synapse.loader import load_model  # noqa: E402
from mlx_synapse.memory.bank import MemoryBank  # noqa: E402

from .learn_util import tiny_model_dir  # noqa: E402
from .test_memory_bank import BagOfWords  # noqa: E402

PROMPT = [5, 17, 42, 3, 88, 1, 60]
MEMORIES = ["my sister ana lives in porto", "the cat is called miso", "I work as a farrier"]


def greedy(model, ids, n=12):
    ids = list(ids)
    for _ in range(n):
        ids.append(int(mx.argmax(model(mx.array([ids]))[0, -1]).item()))
    return ids[len(PROMPT):]


def _adapter(model_dir, out, seed, manifest=None):
    model, _ = load_model(model_dir)
    mx.random.seed(seed)
    apply_lora(model, num_layers=2, rank=4, scale=2.0)
    rng = np.random.default_rng(seed)
    for layer in lora_layers(model).values():
        layer.lora_b = mx.array(rng.normal(0, 0.3, layer.lora_b.shape).astype(np.float32))
    save_adapter(model, out)
    if manifest is not None:
        (out / "manifest.json").write_text(json.dumps(manifest))
    return greedy(model, PROMPT)


@pytest.fixture
def home(tmp_path):
    """Machine A: a tiny base, a bank with two users, 'me''s sleep adapter and one named adapter."""
    model_dir = tiny_model_dir(tmp_path / "a" / "model", bits=None)
    db = tmp_path / "a" / "m.db"
    with MemoryBank(db, BagOfWords(), backend="numpy") as bank:
        ids = [bank.write(t, user="me").id for t in MEMORIES]
        bank.write("someone else's note", user="you")
        bank.search("where does my sister live", 1, user="me")  # a hit to carry over
    facts = [{"id": i, "text": t} for i, t in zip(ids, MEMORIES)]
    tokens = _adapter(model_dir, sleep_dir(db, "me"), 1, {"memory_ids": ids, "facts": facts, "forgotten_ids": [9]})
    travel = tmp_path / "a" / "travel"
    _adapter(model_dir, travel, 2)
    return dict(model=model_dir, db=db, tokens=tokens, travel=travel, root=tmp_path)


def _entries(db, user="me"):
    with MemoryBank(db, BagOfWords(), backend="numpy") as bank:
        return [(e.text, e.hits, e.tier, e.source) for e in bank.list(user=user)]


def test_moved_bundle_gives_the_same_answers_and_memories(home):
    out = home["root"] / "me.synapse"
    man = export_bundle(out, user="me", db=home["db"], model=home["model"], adapters={"travel": home["travel"]},
                        config={"temperature": 0.0})
    assert man["memories"] == 3 and man["adapters"] == ["sleep", "travel"]
    # machine B: the same base in another directory, a fresh database
    model_b = shutil.copytree(home["model"], home["root"] / "b" / "model")
    db_b = home["root"] / "b" / "fresh.db"
    with MemoryBank(db_b, BagOfWords(), backend="numpy") as bank:  # B's bank already holds another entry
        bank.write("an older entry on machine b", user="me")
    res = import_bundle(out, db=db_b, model=model_b, encoder=BagOfWords())
    assert res["user"] == "me" and res["memories"] == 3 and res["config"] == {"temperature": 0.0}
    assert res["adapters"]["sleep"] == str(sleep_dir(db_b, "me"))
    assert _entries(db_b)[1:] == _entries(home["db"]) and len(_entries(db_b)) == 4
    assert _entries(db_b, "you") == []
    model, _ = load_model(model_b)
    load_adapter(model, res["adapters"]["sleep"])
    assert greedy(model, PROMPT) == home["tokens"]
    base, _ = load_model(model_b)
    assert greedy(base, PROMPT) != home["tokens"]  # the adapter matters to the answer
    assert (adapters_dir(db_b, "me") / "travel" / "adapters.safetensors").read_bytes() == \
        (home["travel"] / "adapters.safetensors").read_bytes()
    # the sleep manifest now names the memories' ids in B's bank
    m = json.loads((sleep_dir(db_b, "me") / "manifest.json").read_text())
    with MemoryBank(db_b, BagOfWords(), backend="numpy") as bank:
        by_text = {e.text: e.id for e in bank.list(user="me")}
    assert m["memory_ids"] == [by_text[t] for t in MEMORIES] and m["forgotten_ids"] == []
    # a second import does not overwrite the adapters unless asked to
    with pytest.raises(ValueError, match="--replace"):
        import_bundle(out, db=db_b, model=model_b, encoder=BagOfWords())
    import_bundle(out, db=db_b, model=model_b, encoder=BagOfWords(), replace=True)
    assert len(_entries(db_b)) == 4  # memories already there are skipped


def test_wrong_base_is_refused(home):
    out = home["root"] / "me.synapse"
    export_bundle(out, user="me", db=home["db"], model=home["model"])
    other = tiny_model_dir(home["root"] / "other", bits=None, seed=1)
    db_b = home["root"] / "b.db"
    with pytest.raises(ValueError, match="was made for base model 'model'.*pass --model with the bundle's base"):
        import_bundle(out, db=db_b, model=other, encoder=BagOfWords())
    assert not db_b.exists() and not sleep_dir(db_b, "me").exists()


def _rewrite(src, dst, edit):
    """Copy bundle ``src`` to ``dst`` with ``edit(manifest, members)`` applied (members: name -> bytes)."""
    with zipfile.ZipFile(src) as z:
        members = {n: z.read(n) for n in z.namelist()}
    man = json.loads(members.pop("manifest.json"))
    edit(man, members)
    with zipfile.ZipFile(dst, "w") as z:
        z.writestr("manifest.json", json.dumps(man))
        for n, b in members.items():
            z.writestr(n, b)
    return dst


def _list(man, name, blob):
    man["files"][name] = {"size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}


@pytest.mark.parametrize("evil", ["../evil.txt", "/tmp/evil.txt", "adapters/../../evil.txt", "adapters/./x",
                                  "C:/evil.txt", "a\\..\\..\\evil.txt"])
def test_zip_slip_is_refused(home, evil):
    out = home["root"] / "me.synapse"
    export_bundle(out, user="me", db=home["db"], model=home["model"])

    def edit(man, members):
        members[evil] = b"pwned"
        _list(man, evil, b"pwned")

    bad = _rewrite(out, home["root"] / "evil.synapse", edit)
    db_b = home["root"] / "deep" / "b.db"
    with pytest.raises(ValueError, match="refused"):
        import_bundle(bad, db=db_b, model=home["model"], encoder=BagOfWords())
    assert not list(home["root"].rglob("evil.txt")) and not (home["root"] / "deep").exists()


def test_damaged_bundles_are_refused(home):
    out = home["root"] / "me.synapse"
    export_bundle(out, user="me", db=home["db"], model=home["model"])
    raw = out.read_bytes()
    cases = {}
    cases["truncated"] = raw[: len(raw) // 2]
    cases["not a zip"] = b"hello, not a bundle"
    flipped = bytearray(raw)
    with zipfile.ZipFile(out) as z:
        info = z.getinfo("adapters/sleep/adapters.safetensors")
    flipped[info.header_offset + 30 + len(info.filename) + 5] ^= 0xFF  # inside the stored data
    cases["flipped"] = bytes(flipped)
    for name, blob in cases.items():
        p = home["root"] / f"{name}.synapse"
        p.write_bytes(blob)
        with pytest.raises(ValueError, match=r"\[bundle\]"):
            read_bundle(p)

    def unlisted(man, members):
        members["extra.bin"] = b"x"

    def missing(man, members):
        del members["memory.jsonl"]

    def tampered(man, members):
        members["config.json"] = b'{"evil": 1}\n'
        man["files"]["config.json"]["size"] = len(members["config.json"])

    for edit, match in [(unlisted, "does not list"), (missing, "truncated"), (tampered, "SHA-256")]:
        with pytest.raises(ValueError, match=match):
            read_bundle(_rewrite(out, home["root"] / "x.synapse", edit))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_bundle(home["root"] / "nope.synapse")


def test_cli(home, monkeypatch, capsys):
    import mlx_synapse.memory.__main__ as memory_cli

    monkeypatch.setattr(memory_cli, "_encoder", lambda spec, backend: BagOfWords())
    out = home["root"] / "me.synapse"
    from mlx_synapse.__main__ import main as dispatch

    assert dispatch(["bundle", "export", "--user", "me", "--out", str(out), "--db", str(home["db"]),
                     "--model", str(home["model"])]) == 0
    assert "3 memories, adapters sleep" in capsys.readouterr().out
    db_b = home["root"] / "b" / "m.db"
    assert main(["import", str(out), "--db", str(db_b), "--model", str(home["model"])]) == 0
    assert "imported 3 memories for me" in capsys.readouterr().out
    assert main(["import", str(out), "--db", str(db_b), "--model", str(home["model"])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--replace" in err


@pytest.mark.parametrize("argv, message", [
    (["import", "{root}/nope.synapse"], "does not exist"),
    (["import", "{root}/junk.synapse"], "not a readable .synapse bundle"),
    (["export", "--user", "me", "--out", "{root}/x.synapse", "--db", "{root}/none.db"], "no memory database"),
    (["export", "--user", "me", "--out", "{root}/x.synapse", "--db", "{db}", "--model", "{root}"],
     "not a model directory"),
    (["export", "--user", "me", "--out", "{root}/x.synapse", "--db", "{db}", "--model", "{model}",
      "--adapter", "travel"], "NAME=DIR"),
])
def test_cli_errors_are_one_line(home, argv, message):
    (home["root"] / "junk.synapse").write_bytes(b"\x00" * 100)
    argv = [a.format(root=home["root"], db=home["db"], model=home["model"]) for a in argv]
    proc = subprocess.run([sys.executable, "-m", "mlx_synapse", "bundle", *argv], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and message in proc.stderr and "Traceback" not in proc.stderr
