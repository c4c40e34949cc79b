"""Deleted and corrected text leaves the file's bytes (database, ``-wal``, ``-shm``), and
when another process's open read keeps it there, ``forget`` says so instead of
reporting success, then finishes as soon as the reader is gone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from mlx_synapse.memory.bank import MemoryBank, ScrubPending
from mlx_synapse.memory.store import PENDING_SCRUB_KEY, MemoryStore

from .test_memory_bank import BagOfWords, _file_bytes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET = "zebra passport number 7731 quokka"
READER = textwrap.dedent(
    """
    import sqlite3, sys
    db = sqlite3.connect(sys.argv[1], isolation_level=None)
    db.execute("BEGIN")
    db.execute("SELECT count(*) FROM entries").fetchone()  # a read transaction, held open
    print("ready", flush=True)
    sys.stdin.readline()
    db.execute("COMMIT")
    db.close()
    """
)


class Reader:
    """A second process holding a read transaction on ``path`` until ``close()``."""

    def __init__(self, path):
        self.p = subprocess.Popen([sys.executable, "-c", READER, str(path)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        assert self.p.stdout.readline().strip() == "ready"

    def close(self):
        if self.p.poll() is None:
            self.p.stdin.write("done\n")
            self.p.stdin.flush()
            self.p.wait(timeout=30)


@pytest.fixture
def db_with_secret(tmp_path):
    db = tmp_path / "m.db"
    with MemoryBank(db, BagOfWords(), backend="numpy") as b:
        b.add(SECRET, user="u")
        b.add("the cat is called miso", user="v")
    assert SECRET.encode() in _file_bytes(db)
    return db


def test_cli_forget_with_a_reader_says_so_and_scrubs_when_it_closes(db_with_secret):
    db = db_with_secret
    r = Reader(db)
    try:
        t0 = time.monotonic()
        p = subprocess.run([sys.executable, "-m", "mlx_synapse.memory", "forget", "--all", "--db", str(db),
                            "--user", "u"], capture_output=True, text=True, timeout=20, cwd=ROOT)
        took = time.monotonic() - t0
        assert p.returncode == 1 and p.stdout == ""
        line = p.stderr.strip()
        assert "\n" not in line and "Traceback" not in line
        assert f"pid {r.p.pid} " in line and "still in the bytes" in line
        assert took < 15  # a bounded wait, not the 30 s busy timeout
        assert SECRET.encode() in _file_bytes(db)  # honest: the reader's snapshot keeps it
    finally:
        r.close()
    # The reader was the last connection: its close checkpointed; the mark goes at the next open.
    assert SECRET.encode() not in _file_bytes(db)
    with MemoryStore(db) as s:
        assert s.get_meta(PENDING_SCRUB_KEY) is None and not s.scrub_pending
        assert [e["text"] for e in s.iter_entries()] == ["the cat is called miso"]
        assert s.integrity_check() == "ok"


def test_api_forget_with_a_reader_raises_and_finishes_at_next_use(db_with_secret):
    db = db_with_secret
    b = MemoryBank(db, BagOfWords(), backend="numpy", timeout=5)
    r = Reader(db)
    try:
        with pytest.raises(ScrubPending, match=f"pid {r.p.pid} ") as ei:
            b.forget(user="u")
        assert ei.value.count == 1 and any(str(r.p.pid) in x for x in ei.value.readers)
        assert b.store.scrub_pending and b.store.get_meta(PENDING_SCRUB_KEY) is not None
    finally:
        r.close()
    # our connection is still open, so the reader's close left the WAL: the bank's next use scrubs
    assert [e.text for e in b.list()] == ["the cat is called miso"]
    assert not b.store.scrub_pending
    assert SECRET.encode() not in _file_bytes(db)
    assert b.store.get_meta(PENDING_SCRUB_KEY) is None
    b.close()


def test_update_scrubs_the_old_text(tmp_path):
    db = tmp_path / "m.db"
    with MemoryBank(db, BagOfWords(), backend="numpy") as b:
        i = b.add(SECRET, user="u")
        b.update(i, user="u", text="my passport number is 4410")
        assert SECRET.encode() not in _file_bytes(db)
        assert b.get(i).text == "my passport number is 4410"


KILLED = textwrap.dedent(
    """
    import os, signal, sys
    from mlx_synapse.memory.bank import MemoryBank
    from tests.test_memory_bank import BagOfWords
    b = MemoryBank(sys.argv[1], BagOfWords(), backend="numpy")
    i = b.add(sys.argv[2], user="u")
    b.update(i, user="u", text="my passport number is 4410")
    os.kill(os.getpid(), signal.SIGKILL)  # no close, no cleanup
    """
)


def test_update_then_sigkill_leaves_no_old_text(tmp_path):
    db = tmp_path / "m.db"
    p = subprocess.run([sys.executable, "-c", KILLED, str(db), SECRET], cwd=ROOT, capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == -signal.SIGKILL, p.stderr
    raw = _file_bytes(db)  # read without opening it in SQLite (which would checkpoint)
    assert b"my passport number is 4410" in raw and SECRET.encode() not in raw


@pytest.mark.parametrize("platform", ["linux", "darwin"])
def test_holders_names_the_reader(db_with_secret, monkeypatch, platform):
    from mlx_synapse.memory import files

    if platform != "linux" and files.shutil.which("lsof") is None:
        pytest.skip("lsof is not installed")
    monkeypatch.setattr(files.sys, "platform", platform)  # darwin: the lsof path, as on macOS
    r = Reader(db_with_secret)
    try:
        got = files.holders(str(db_with_secret))
    finally:
        r.close()
    assert any(g.startswith(f"pid {r.p.pid} (") for g in got), got
    assert not any(g.startswith(f"pid {os.getpid()} ") for g in got)
