"""``python -m mlx_synapse.memory``: every command, and errors that change nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mlx_synapse.memory import __main__ as cli

from .conftest import _or_skip
from .test_memory_bank import BagOfWords


@pytest.fixture
def run(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_encoder", lambda spec, backend: BagOfWords())
    db = str(tmp_path / "cli.db")

    def go(*argv, user="me"):
        code = cli.main([argv[0], "--db", db, "--user", user, *argv[1:]])
        out, err = capsys.readouterr()
        return code, out, err

    go.db = db
    return go


def test_commands_end_to_end(run, tmp_path):
    assert run("add", "my sister ana lives in porto", "--source", "chat")[:2] == (0, "added [1]\n")
    assert run("add", "the cat is called miso", "--metadata", '{"k": 1}')[1] == "added [2]\n"
    code, out, _ = run("add", "My sister Ana lives in Porto")
    assert code == 0 and out.startswith("refreshed [1] (near-duplicate, cosine 1.000)")
    assert run("add", "another user's note", user="you")[1] == "added [3]\n"
    code, out, _ = run("search", "where does my sister live", "-k", "1", "--json")
    hits = json.loads(out)
    assert code == 0 and [h["id"] for h in hits] == [1] and hits[0]["source"] == "chat"
    assert 0 < hits[0]["score"] <= 1
    code, out, _ = run("list")
    assert out.splitlines() == [
        "[1] my sister ana lives in porto  (hot, hits 2, chat)",
        "[2] the cat is called miso  (hot, hits 0, cli)",
    ]
    assert len(run("list", "--all-users")[1].splitlines()) == 3
    st = json.loads(run("stats", "--json")[1])
    assert st["entries"] == 3 and st["users"] == {"me": 2, "you": 1} and st["tiers"]["hot"] == 3
    out_file = tmp_path / "me.jsonl"
    assert run("export", str(out_file))[1] == f"exported 2 entries to {out_file}\n"
    assert run("forget", "--contains", "CAT")[1] == "forgot 1 entry\n"
    assert run("import", str(out_file))[1] == f"imported 1 entries from {out_file}\n"
    assert run("forget", "--all")[1] == "forgot 2 entries\n"
    assert run("list")[1] == ""
    assert run("list", user="you")[1].startswith("[3]")


def test_stdin_and_errors(run, monkeypatch):
    class Stdin:
        def __init__(self, data):
            self.buffer = __import__("io").BytesIO(data)

    monkeypatch.setattr(sys, "stdin", Stdin("from standard input\n".encode()))
    assert run("add", "-")[1] == "added [1]\n"
    monkeypatch.setattr(sys, "stdin", Stdin(b"bad \xff bytes"))
    code, _, err = run("add", "-")
    assert code == 2 and "not valid UTF-8" in err
    for argv, msg in [
        (("add", "   "), "text must be non-empty"),
        (("add", "x" * 70000), "over the 65536-byte limit"),
        (("add", "ok", "--metadata", "{nope"), "--metadata is not JSON"),
        (("search", "x", "-k", "0"), "k must be an int >= 1"),
        (("forget",), "forget what?"),
        (("forget", "1", "--all"), "not both"),
        (("import", "/nonexistent/file.jsonl"), "cannot read"),
    ]:
        code, out, err = run(*argv)
        assert code == 2 and msg in err, (argv, err)
    assert [line for line in run("list")[1].splitlines()] == ["[1] from standard input  (hot, hits 0, cli)"]


def test_budget_option_evicts(run):
    for i in range(40):
        assert run("add", f"note number {i} about thing {i * 13}", "--budget-mb", str(3000 / 2**20))[0] == 0
    st = json.loads(run("stats", "--json", "--budget-mb", str(3000 / 2**20))[1])
    assert st["bytes"] <= st["budget_bytes"] == 3000 and st["entries"] < 40
    code, _, err = run("list", "--budget-mb", "-1")
    assert code == 2 and "budget_mb must be a positive number" in err


def test_corrupted_database_is_reported_not_touched(tmp_path, run):
    with open(run.db, "wb") as f:
        f.write(os.urandom(8192))
    before = open(run.db, "rb").read()
    code, _, err = run("list")
    assert code == 2 and "not an SQLite database" in err
    assert open(run.db, "rb").read() == before


def test_real_minilm_from_a_shell(tmp_path):
    from mlx_synapse.memory import find_minilm_dir

    _or_skip(find_minilm_dir)
    env = dict(os.environ, MLX_SYNAPSE_MEMORY_DB=str(tmp_path / "m.db"), MLX_SYNAPSE_USER="ana")

    def sh(*args):
        r = subprocess.run([sys.executable, "-m", "mlx_synapse", "memory", *args], env=env,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        return r.stdout

    sh("add", "My daughter Lily is allergic to peanuts.")
    sh("add", "I work as a nurse at the city hospital.")
    sh("add", "Our dog Biscuit is a golden retriever.")
    hits = json.loads(sh("search", "Does my kid have any food allergies?", "-k", "3", "--json"))
    assert hits[0]["text"] == "My daughter Lily is allergic to peanuts." and hits[0]["score"] > 0.4
    assert os.stat(tmp_path / "m.db").st_mode & 0o777 == 0o600
