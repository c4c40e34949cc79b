"""Random bad input to the memory CLI and the MemoryBank API: every call ends in success or
in one clear line (a ValueError-family error from the API), within a time bound, and the
file stays sound with every earlier entry intact."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlx_synapse.memory import __main__ as cli
from mlx_synapse.memory.bank import EXPORT_FORMAT, MemoryBank
from mlx_synapse.memory.store import MemoryStore

from .test_memory_bank import BagOfWords

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEEPER = "keeper"  # the baseline entries' user; random input never names it
BASELINE = ["my sister ana lives in porto", "the cat is called miso", "green tea in the morning"]
SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

odd_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " ", "\n\t", "a\x00b", "\x00", "\ud800", "x\udcffy", "é東京", "x" * 70_000, "-"]),
)
odd_user = st.one_of(st.sampled_from(["ann", "bob"]), odd_text.filter(lambda u: u.strip() != KEEPER))
odd_int = st.one_of(st.integers(-3, 60), st.sampled_from([0, -1, 2**63, -(2**63) - 1, 2**70]))


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(a.tobytes()).decode()


vector = st.one_of(
    st.none(),
    st.just("not a dict"),
    st.fixed_dictionaries({"dtype": st.sampled_from(["int8", "float16", "float64", 3]),
                           "scale": st.one_of(st.floats(allow_nan=True), st.sampled_from([0, -1, 1e308, True, "1"])),
                           "data": st.one_of(st.just(_b64(np.ones(64, np.int8))),
                                             st.just(_b64(np.zeros(64, np.int8))),
                                             st.just(_b64(np.full(64, np.inf, "<f2"))),
                                             st.just(_b64(np.ones(64, "<f2"))),
                                             st.just("@@not base64"), st.just(_b64(np.ones(5, np.int8))))}),
)
line = st.one_of(
    st.just("{not json"),
    st.just("[1, 2]"),
    st.text(max_size=20),
    st.builds(lambda u, t, v, tier, enc: json.dumps({"user": u, "text": t, "vector": v, "tier": tier,
                                                      "encoder": enc}),
              odd_user, odd_text, vector, st.sampled_from(["hot", "warm", "cold", "boiling", None]),
              st.sampled_from(["test-bow-64-a", "other"])),
)
import_file = st.tuples(st.sampled_from([json.dumps({"format": EXPORT_FORMAT}), "{}", "", "\xff"]),
                        st.lists(line, max_size=4))


def _write_import(path: str, spec) -> str:
    head, lines = spec
    with open(path, "w", encoding="utf-8", errors="surrogatepass") as f:
        f.write("\n".join([head, *lines]) + "\n")
    return path


def _check_sound(db: str, baseline) -> None:
    with MemoryStore(db) as s:
        assert s.integrity_check() == "ok"
        got = {e["id"]: e["text"] for e in s.iter_entries(KEEPER)}
    assert got == baseline


@pytest.fixture
def world(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "_encoder", lambda spec, backend: BagOfWords())
    db = str(tmp_path / "m.db")
    with MemoryBank(db, BagOfWords(), backend="numpy") as b:
        ids = b.add_many(BASELINE, user=KEEPER)
    os.mkdir(tmp_path / "adir")
    return {"db": db, "dir": str(tmp_path / "adir"), "tmp": str(tmp_path), "baseline": dict(zip(ids, BASELINE))}


@st.composite
def cli_argv(draw, world):
    cmd = draw(st.sampled_from(["add", "search", "list", "forget", "export", "import", "stats"]))
    db = draw(st.sampled_from([world["db"], world["db"], world["dir"], world["db"] + "\x00x"]))
    argv = [cmd, "--db", db]
    if draw(st.booleans()):
        argv += ["--user", draw(odd_user)]
    if draw(st.integers(0, 9)) == 0:
        argv += ["--budget-mb", draw(st.sampled_from(["-1", "0", "nan", "inf", "x"]))]
    if cmd == "add":
        argv.append(draw(odd_text))
        if draw(st.booleans()):
            argv += ["--metadata", draw(st.sampled_from(["{", "[1]", "NaN", '"x"', "\ud800"]))]
    elif cmd == "search":
        argv += [draw(odd_text), "-k", str(draw(odd_int))]
        if draw(st.booleans()):
            argv += ["--min-score", draw(st.sampled_from(["nan", "-inf", "2", "x", "0.5"]))]
    elif cmd == "list":
        argv += ["--limit", str(draw(odd_int))]
    elif cmd == "forget":
        argv += draw(st.one_of(st.lists(odd_int.map(str), min_size=1, max_size=3),
                               st.just(["--all"]), st.just([]), st.just(["--contains", "tea"]),
                               st.tuples(odd_text).map(lambda t: ["--contains", t[0]])))
    elif cmd == "export":
        argv.append(draw(st.sampled_from([world["dir"], os.path.join(world["tmp"], "nope", "x.jsonl"),
                                          os.path.join(world["tmp"], "out.jsonl"), ""])))
    elif cmd == "import":
        argv.append(_write_import(os.path.join(world["tmp"], "in.jsonl"), draw(import_file)))
        if draw(st.booleans()):
            argv.append("--keep-users")
    return argv


@contextlib.contextmanager
def _stdin(f):
    old, sys.stdin = sys.stdin, f
    try:
        yield
    finally:
        sys.stdin = old


@given(data=st.data())
@SETTINGS
def test_cli_random_bad_input(world, data):
    argv = data.draw(cli_argv(world))
    out, err = io.StringIO(), io.StringIO()
    t0 = time.monotonic()
    stdin = io.TextIOWrapper(io.BytesIO(data.draw(st.sampled_from([b"from stdin", b"", b"\xff\xfe"]))))
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), _stdin(stdin):
        try:
            code = cli.main(argv)
        except SystemExit as e:  # argparse
            code = e.code
    assert time.monotonic() - t0 < 10
    if code != 0:
        assert code in (1, 2)
        msg = err.getvalue()
        assert msg.startswith("error: ") and msg.count("\n") == 1 and "Traceback" not in msg, (argv, msg)
    _check_sound(world["db"], world["baseline"])


@given(data=st.data())
@SETTINGS
def test_api_random_bad_input(world, data):
    op = data.draw(st.sampled_from(["add", "search", "list", "forget", "get", "update", "import", "export"]))
    user = data.draw(odd_user)
    t0 = time.monotonic()
    try:
        with MemoryBank(world["db"], BagOfWords(), backend="numpy", timeout=5) as b:
            if op == "add":
                b.add(data.draw(odd_text), user=user, surprise=data.draw(st.sampled_from([None, 1.0, float("nan")])))
            elif op == "search":
                b.search(data.draw(odd_text), data.draw(odd_int), user=user,
                         min_score=data.draw(st.sampled_from([None, float("nan"), 0.2])))
            elif op == "list":
                b.list(user=user, limit=data.draw(odd_int))
            elif op == "forget":
                b.forget(data.draw(st.one_of(odd_int, st.lists(odd_int, max_size=3))), user=user)
            elif op == "get":
                b.get(data.draw(odd_int), user=user)
            elif op == "update":
                b.update(data.draw(odd_int), user=user, text=data.draw(odd_text))
            elif op == "import":
                b.import_(_write_import(os.path.join(world["tmp"], "in.jsonl"), data.draw(import_file)), user=user)
            else:
                b.export(data.draw(st.sampled_from([world["dir"], os.path.join(world["tmp"], "nope", "x"),
                                                    os.path.join(world["tmp"], "out.jsonl")])), user=user)
    except (ValueError, KeyError, FileNotFoundError) as e:
        msg = e.args[0] if isinstance(e, KeyError) else str(e)
        assert msg.startswith("[memory") and "\n" not in msg, msg
    assert time.monotonic() - t0 < 10
    _check_sound(world["db"], world["baseline"])


@pytest.mark.parametrize("argv, says", [
    (["add", "x", "--user", ""], "user must be non-empty"),
    (["list", "--limit", "-1"], "limit must be an int >= 0"),
    (["list", "--db", "{dir}"], "is not a regular file"),
    (["export", "{dir}"], "is a directory"),
    (["search", "x", "-k", "zero"], "invalid int value: 'zero'"),
])
def test_cli_subprocess_errors_are_one_line(world, argv, says):
    argv = [a.format(dir=world["dir"]) for a in argv]
    if "--db" not in argv:
        argv += ["--db", world["db"]]
    # a model that cannot load: every case must be refused before one is needed
    p = subprocess.run([sys.executable, "-m", "mlx_synapse.memory", *argv, "--encoder", "hidden:/nonexistent"],
                       capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.startswith("error: ") and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr, p.stderr
    assert says in p.stderr
    _check_sound(world["db"], world["baseline"])
