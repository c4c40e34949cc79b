"""The durable store of the memory bank: one SQLite file, the only module that speaks SQL.

``MemoryStore(path)`` keeps memory entries (text, provenance, usage statistics and
an optional embedding) per user, plus a small key/value ``meta`` table. Everything
crosses the API as plain Python types and NumPy arrays.

Durability and privacy:

* WAL journal with ``synchronous=FULL``: once a write method returns, the write
  survives a crash of the process (and of the machine, as far as the disk honours
  ``fsync``). Each call is one transaction: a batch is stored whole or not at all.
* ``secure_delete=ON`` and ``temp_store=MEMORY``: deleted text is overwritten in
  the database pages; :meth:`MemoryStore.scrub` then checkpoints and truncates the
  ``-wal`` file so that no older copy of a page remains there either. Another
  process's open read can keep old pages in place: ``scrub`` waits a bounded time,
  then names the holders and leaves a pending-scrub mark in ``meta`` that the next
  open, close or ``scrub`` completes.
* A new database file is created with mode 0600 (owner only); SQLite gives the
  ``-wal`` and ``-shm`` files the same mode. Existing files keep their mode.
* Several processes may use one file at once; writers wait up to ``timeout``
  seconds for each other.

Vectors: an entry's embedding is stored per its tier, ``'hot'`` as float16 bytes
(``scale`` NULL) and ``'warm'``/``'cold'`` as per-entry symmetric int8 bytes with a
float ``scale`` (see :mod:`mlx_synapse.memory.int8`). Changing an entry's tier
re-encodes its vector. :meth:`MemoryStore.load_vectors` returns every vector as
int8 codes and scales, ready for the in-memory bank.

Full-text search: an FTS5 table over the entries' texts (external content: the text is
stored once), kept in step by triggers; :meth:`MemoryStore.text_search` ranks a user's
entries by BM25. Deleting or rewriting text merges the index (``'optimize'``) so that
the deleted words leave its pages too. Schema version 3 adds it; older files are
indexed when first opened.

Schema versions: ``PRAGMA user_version`` holds the schema version, and
``_MIGRATIONS[i]`` upgrades version ``i`` to ``i + 1`` inside one transaction.
A database written by a newer mlx_synapse is refused without being modified.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import threading
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from .files import holders, make_private_dirs, permission_error
from .int8 import quantize
from .records import (  # noqa: F401  (TIERS is part of this module's API)
    MAX_DIM,
    MAX_SCALE,
    TIERS,
    _err,
    _check_optional_str,
    _check_str,
    _check_json_value,
    _to_json,
    _check_real,
    _check_int,
    _check_tier,
    _encode_vector,
    _to_f16,
    _decode_vector,
    _ids_of,
)

__all__ = ["MemoryStore", "SCHEMA_VERSION", "TIERS", "DEFAULT_MAX_TEXT_BYTES", "fts_match"]

DEFAULT_TIER = "warm"
DEFAULT_MAX_TEXT_BYTES = 64 * 1024
MAX_METADATA_BYTES = 64 * 1024
MAX_NAME_BYTES = 1024  # user, encoder
# Meta keys carry a user name behind a short prefix ("gate:<user>"), so they may be longer.
MAX_META_KEY_BYTES = MAX_NAME_BYTES + 64
PENDING_SCRUB_KEY = "pending_scrub"  # set while deleted text may remain in the file's bytes
MAX_SOURCE_BYTES = 4096
APPLICATION_ID = 0x4D53594E  # "MSYN" in the SQLite header: marks our files
_SQLITE_MAGIC = b"SQLite format 3\x00"
_PAGE = 256  # rows fetched per query when iterating

_COLUMNS = (
    "id", "user", "text", "source", "metadata", "created", "last_access",
    "hits", "surprise", "tier", "dim", "vector", "scale", "encoder", "redundancy",
)  # fmt: skip
_ADD_FIELDS = frozenset(_COLUMNS) - {"id"}
_UPDATE_FIELDS = frozenset(_COLUMNS) - {"id", "user"}


def _migrate_0_to_1(db: sqlite3.Connection) -> None:
    db.execute(
        """
        CREATE TABLE entries (
            id          INTEGER PRIMARY KEY AUTOINCREMENT,
            user        TEXT NOT NULL,
            text        TEXT NOT NULL,
            source      TEXT,
            metadata    TEXT,
            created     REAL NOT NULL,
            last_access REAL NOT NULL,
            hits        INTEGER NOT NULL DEFAULT 0,
            surprise    REAL,
            tier        TEXT NOT NULL DEFAULT 'warm' CHECK (tier IN ('hot', 'warm', 'cold')),
            dim         INTEGER CHECK (dim IS NULL OR dim > 0),
            vector      BLOB,
            scale       REAL,
            encoder     TEXT,
            CHECK (
                (vector IS NULL AND scale IS NULL)
                OR (vector IS NOT NULL AND dim IS NOT NULL AND (
                    (scale IS NULL AND length(vector) = 2 * dim)
                    OR (scale IS NOT NULL AND scale >= 0 AND length(vector) = dim)))
            )
        )
        """
    )
    db.execute("CREATE INDEX entries_user ON entries(user)")
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID")


def _migrate_1_to_2(db: sqlite3.Connection) -> None:
    # redundancy: the entry's highest cosine to an older entry of its user, when it was added.
    # snap_hits / snap_access: hits and last_access when the last retention snapshot was taken
    # (see MemoryStore.take_snapshot), the labels a retention policy learns from.
    db.execute("ALTER TABLE entries ADD COLUMN redundancy REAL")
    db.execute("ALTER TABLE entries ADD COLUMN snap_hits INTEGER")
    db.execute("ALTER TABLE entries ADD COLUMN snap_access REAL")


# Full-text index of the entries' texts (BM25 ranking): external content (the text is stored
# once, in entries), kept in step by triggers. Porter stemming over unicode61 words ("lives"
# finds "live"); other scripts are tokenized by unicode61 unchanged.
_FTS_TABLE = "entries_fts"
_FTS_TRIGGERS = (
    f"""CREATE TRIGGER entries_fts_insert AFTER INSERT ON entries BEGIN
        INSERT INTO {_FTS_TABLE}(rowid, text) VALUES (new.id, new.text); END""",
    f"""CREATE TRIGGER entries_fts_delete AFTER DELETE ON entries BEGIN
        INSERT INTO {_FTS_TABLE}({_FTS_TABLE}, rowid, text) VALUES ('delete', old.id, old.text); END""",
    f"""CREATE TRIGGER entries_fts_update AFTER UPDATE OF text ON entries BEGIN
        INSERT INTO {_FTS_TABLE}({_FTS_TABLE}, rowid, text) VALUES ('delete', old.id, old.text);
        INSERT INTO {_FTS_TABLE}(rowid, text) VALUES (new.id, new.text); END""",
)


@functools.lru_cache(maxsize=None)
def _has_fts5() -> bool:
    """Whether this Python's sqlite3 can create FTS5 tables (asked once, in memory)."""
    probe = sqlite3.connect(":memory:")
    try:
        probe.execute("CREATE VIRTUAL TABLE t USING fts5(x)")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        probe.close()


def _require_fts5(path: str) -> None:
    if not _has_fts5():
        raise ValueError(
            f"[memory.store] this Python's sqlite3 (SQLite {sqlite3.sqlite_version}) was built without FTS5, "
            f"which the memory bank's full-text search needs, so {path} was left untouched; use a Python whose "
            f"sqlite3 has FTS5 (python.org, conda and most Linux distributions' builds do)."
        )


def fts_match(terms: Sequence[str]) -> Optional[str]:
    """An FTS5 MATCH expression for any of ``terms``: each a double-quoted string (quotes
    inside doubled, NUL, which ends FTS5's string, dropped), so that no text is read as FTS5
    syntax; None without a non-blank term."""
    clean = (t.replace("\0", " ") for t in terms if isinstance(t, str))
    quoted = ['"' + t.replace('"', '""') + '"' for t in dict.fromkeys(clean) if t.strip()]
    return " OR ".join(quoted) if quoted else None


def _purge_fts(db: sqlite3.Connection) -> None:
    """Merge the full-text index into one segment. A delete only adds a tombstone to FTS5's
    index; merging drops the deleted entries' words, and secure_delete zeroes the pages
    they were on, so forgotten text leaves the file's bytes (after a checkpoint)."""
    db.execute(f"INSERT INTO {_FTS_TABLE}({_FTS_TABLE}) VALUES ('optimize')")


def _migrate_2_to_3(db: sqlite3.Connection) -> None:
    db.execute(
        f"CREATE VIRTUAL TABLE {_FTS_TABLE} USING fts5(text, content='entries', content_rowid='id', "
        f"tokenize='porter unicode61 remove_diacritics 2')"
    )
    for sql in _FTS_TRIGGERS:
        db.execute(sql)
    db.execute(f"INSERT INTO {_FTS_TABLE}({_FTS_TABLE}) VALUES ('rebuild')")


# _MIGRATIONS[i] takes a database at schema version i to version i + 1. Append only.
_MIGRATIONS: List[Callable[[sqlite3.Connection], None]] = [_migrate_0_to_1, _migrate_1_to_2, _migrate_2_to_3]
SCHEMA_VERSION = len(_MIGRATIONS)  # the version this code writes


def _current_version() -> int:
    return len(_MIGRATIONS)


def _is_permission(e: sqlite3.Error) -> bool:
    """SQLITE_READONLY / SQLITE_CANTOPEN: the file or its directory may not be written."""
    m = str(e)
    return "readonly" in m or "unable to open" in m or "read-only" in m


class MemoryStore:
    """Entries of the memory bank in one SQLite file (see the module docstring).

    ``MemoryStore(path)`` opens or creates the database at ``path`` (missing parent
    directories are created with mode 0700, every one of them). ``timeout`` is how long, in seconds,
    a call waits for another process's write to finish. ``max_text_bytes`` caps an
    entry's text (UTF-8 bytes). ``fullfsync=True`` makes each commit use macOS's
    ``F_FULLFSYNC`` (durable across power loss there, at several ms a commit;
    plain ``fsync`` elsewhere). ``":memory:"`` gives a private in-memory store.

    Raises ``ValueError`` (and leaves the file as it was) when ``path`` is not an
    SQLite database, is corrupted, belongs to another application (any application_id
    but ours, or a schema version or tables without it), or was written by a newer
    mlx_synapse; and when the path, the file or its directory may not be written
    (a read-only file opens for reading; a write then raises).

    Rows are dicts with the keys of :data:`_COLUMNS`. Writing, ``user`` and
    ``text`` are required; ``source`` (str), ``metadata`` (JSON: dict, list, str,
    number, bool or None), ``created`` and ``last_access`` (seconds since the
    epoch; default now), ``hits`` (default 0), ``surprise`` (float or None),
    ``tier`` (default ``'warm'``), ``vector`` (1-D float array, or int8 codes with
    ``scale``), ``dim`` and ``encoder`` are optional. Reading, ``vector`` is the
    stored array: float16 for ``'hot'`` entries, else int8 codes with ``scale``.
    """

    def __init__(
        self,
        path: Union[str, os.PathLike],
        *,
        timeout: float = 30.0,
        max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES,
        fullfsync: bool = False,
    ) -> None:
        if not (isinstance(max_text_bytes, int) and max_text_bytes > 0):
            raise ValueError(
                f"[memory.store] max_text_bytes must be a positive int but got {max_text_bytes!r}."
            )
        self.max_text_bytes = max_text_bytes
        self._lock = threading.RLock()
        self._db: Optional[sqlite3.Connection] = None
        if isinstance(os.fspath(path), str) and "\0" in os.fspath(path):
            raise ValueError(f"[memory.store] the path {os.fspath(path)!r} contains a NUL character; "
                             f"give a file path without one.")
        self.path = str(path) if str(path) == ":memory:" else os.path.abspath(os.fspath(path))
        in_memory = self.path == ":memory:"
        self._timeout_ms = int(timeout * 1000)
        self._pending = False  # deleted text may remain in the file's bytes (see scrub)
        _require_fts5(self.path)
        if not in_memory:
            self._prepare_file()
        try:
            db = sqlite3.connect(self.path, timeout=timeout, isolation_level=None, check_same_thread=False)
        except sqlite3.OperationalError as e:
            raise self._cannot_write(e) from None
        try:
            self._check_readable(db)
            db.execute("PRAGMA synchronous = FULL")
            db.execute("PRAGMA secure_delete = ON")
            db.execute("PRAGMA temp_store = MEMORY")
            if fullfsync:  # macOS: F_FULLFSYNC, through the drive's cache (no-op elsewhere)
                db.execute("PRAGMA fullfsync = ON")
                db.execute("PRAGMA checkpoint_fullfsync = ON")
            if not in_memory:
                self._enable_wal(db, timeout)
            self._migrate(db)
        except sqlite3.OperationalError as e:
            db.close()
            if _is_permission(e):
                raise self._cannot_write(e) from None
            raise
        except BaseException:
            db.close()
            raise
        self._db = db
        if not in_memory and self.get_meta(PENDING_SCRUB_KEY) is not None:
            self._pending = True
            self.finish_scrub()

    # -- opening

    def _prepare_file(self) -> None:
        make_private_dirs(os.path.dirname(self.path))
        try:  # create it owner-only; SQLite gives -wal/-shm the same mode
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass
        except OSError as e:
            raise permission_error(self.path, e, "create the memory database") from None
        if not os.path.isfile(self.path):
            raise ValueError(
                f"[memory.store] {self.path} is not a regular file (a directory?); give the path of "
                f"a database file."
            )
        try:
            with open(self.path, "rb") as f:
                head = f.read(len(_SQLITE_MAGIC))
        except OSError as e:
            raise permission_error(self.path, e, "read the memory database") from None
        # SQLite would take a short non-database file for an empty database and overwrite it.
        if head and head != _SQLITE_MAGIC:
            raise ValueError(
                f"[memory.store] {self.path} is not an SQLite database (its first bytes are "
                f"{head[:16]!r}); refusing to open or overwrite it. Move it aside or pick another path."
            )

    def _cannot_write(self, e: sqlite3.Error) -> ValueError:
        """The error for a file or directory that SQLite may not write (not a corruption)."""
        d = os.path.dirname(self.path)
        eff = os.access in os.supports_effective_ids  # the uid that opens files, not the login one
        if os.path.exists(self.path) and not os.access(self.path, os.W_OK, effective_ids=eff):
            return ValueError(
                f"[memory.store] {self.path} is read-only ({e}); writing to memory needs write "
                f"permission (chmod u+w), or use another --db path."
            )
        return ValueError(
            f"[memory.store] cannot use {self.path}: its directory {d} is not writable ({e}), and "
            f"SQLite keeps {os.path.basename(self.path)}-wal and -shm beside the file. Make the "
            f"directory writable, or copy the file to one that is."
        )

    def _check_readable(self, db: sqlite3.Connection) -> None:
        """Read-only checks: the file is an SQLite database of ours, at a schema we know."""
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            app = db.execute("PRAGMA application_id").fetchone()[0]
            n_tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        except sqlite3.DatabaseError as e:
            if isinstance(e, sqlite3.OperationalError) and "locked" in str(e):
                raise
            if self.path != ":memory:" and _is_permission(e):
                raise self._cannot_write(e) from None
            raise ValueError(
                f"[memory.store] {self.path} is not a readable SQLite database ({e}); it may be "
                f"corrupted. It was left untouched: restore it from a backup or move it aside."
            ) from None
        if app not in (0, APPLICATION_ID):
            raise ValueError(
                f"[memory.store] {self.path} is an SQLite database of another application "
                f"(application_id {app:#x}), not an mlx_synapse memory store; it was left untouched."
            )
        # A file of ours has our application_id from its first migration on; any other file
        # with a schema version or tables is someone else's and must not be written.
        if app != APPLICATION_ID and (version or n_tables):
            raise ValueError(
                f"[memory.store] {self.path} is an SQLite database without the memory-store mark "
                f"(application_id {app:#x}, user_version {version}, {n_tables} schema objects): not an "
                f"mlx_synapse memory store. It was left untouched; pick another path."
            )
        if version == 0 and n_tables:
            raise ValueError(
                f"[memory.store] {self.path} is an SQLite database with tables of its own but no "
                f"memory-store schema version: not an mlx_synapse memory store. It was left untouched."
            )
        if version > _current_version():
            raise ValueError(
                f"[memory.store] {self.path} has memory-store schema version {version}, newer than "
                f"version {_current_version()} that this mlx_synapse understands; it was written by a newer "
                f"mlx_synapse. Upgrade mlx_synapse (pip install -U mlx-synapse) to open it. "
                f"The file was left untouched."
            )

    @staticmethod
    def _enable_wal(db: sqlite3.Connection, timeout: float) -> None:
        # Switching to WAL needs a moment alone with the file; retry while another opener holds it.
        deadline = time.monotonic() + timeout
        while True:
            try:
                mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) and "busy" not in str(e):
                    raise
                mode = None
            if mode == "wal":
                return
            if time.monotonic() > deadline:
                raise sqlite3.OperationalError(
                    f"could not switch the database to WAL mode (journal_mode {mode!r})"
                )
            time.sleep(0.005)

    def _migrate(self, db: sqlite3.Connection) -> None:
        if db.execute("PRAGMA user_version").fetchone()[0] == _current_version():
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            # Look again under the write lock: another process may have migrated meanwhile.
            self._check_readable(db)
            version = db.execute("PRAGMA user_version").fetchone()[0]
            for step in range(version, _current_version()):
                _MIGRATIONS[step](db)
            db.execute(f"PRAGMA user_version = {_current_version():d}")
            db.execute(f"PRAGMA application_id = {APPLICATION_ID:d}")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    # -- plumbing

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise ValueError("[memory.store] the store is closed.")
        return self._db

    def _corrupt(self, e: sqlite3.DatabaseError) -> ValueError:
        return ValueError(
            f"[memory.store] {self.path} is corrupted ({e}). Run integrity_check(), and restore "
            f"the file from a backup or move it aside."
        )

    def _write(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``fn(db)`` in one write transaction (rolled back on any error)."""
        with self._lock:
            db = self._conn
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    out = fn(db)
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
            except sqlite3.DatabaseError as e:
                # sqlite3 raises the bare DatabaseError for SQLITE_CORRUPT and SQLITE_NOTADB
                if type(e) is sqlite3.DatabaseError:
                    raise self._corrupt(e) from e
                if _is_permission(e):
                    raise self._cannot_write(e) from None
                raise
            return out

    def _read(self, sql: str, params: Sequence = ()) -> List[tuple]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.DatabaseError as e:
                # sqlite3 raises the bare DatabaseError for SQLITE_CORRUPT and SQLITE_NOTADB
                if type(e) is sqlite3.DatabaseError:
                    raise self._corrupt(e) from e
                raise

    @staticmethod
    def _row(r: tuple) -> Dict[str, Any]:
        d = dict(zip(_COLUMNS, r))
        d["metadata"] = None if d["metadata"] is None else json.loads(d["metadata"])
        d["vector"] = _decode_vector(d["vector"], d["scale"])
        return d

    def _validate_row(self, row, where: str) -> tuple:
        if not isinstance(row, dict):
            raise _err(where, f"a row must be a dict but got {type(row).__name__}.")
        unknown = set(row) - _ADD_FIELDS
        if unknown:
            raise _err(where, f"unknown field(s) {sorted(unknown)}; the fields are {sorted(_ADD_FIELDS)}.")
        if "user" not in row or "text" not in row:
            raise _err(where, "a row needs 'user' and 'text'.")
        user = _check_str(row["user"], "user", where, max_bytes=MAX_NAME_BYTES, nonblank=True)
        text = _check_str(row["text"], "text", where, max_bytes=self.max_text_bytes, nonblank=True)
        source = _check_optional_str(row.get("source"), "source", where, max_bytes=MAX_SOURCE_BYTES, nonblank=False)
        meta = row.get("metadata")
        meta = None if meta is None else _to_json(meta, "metadata", where, MAX_METADATA_BYTES)
        created = row.get("created")
        created = time.time() if created is None else _check_real(created, "created", where)
        last = row.get("last_access")
        last = created if last is None else _check_real(last, "last_access", where)
        hits = row.get("hits")
        hits = 0 if hits is None else _check_int(hits, "hits", where)
        if hits < 0:
            raise _err(where, f"hits must be >= 0 but got {hits}.")
        surprise = row.get("surprise")
        surprise = None if surprise is None else _check_real(surprise, "surprise", where)
        tier = _check_tier(row.get("tier", DEFAULT_TIER), where)
        blob, scale, dim = _encode_vector(row.get("vector"), row.get("scale"), tier, row.get("dim"), where)
        encoder = _check_optional_str(row.get("encoder"), "encoder", where, max_bytes=MAX_NAME_BYTES, nonblank=True)
        redundancy = row.get("redundancy")
        redundancy = None if redundancy is None else _check_real(redundancy, "redundancy", where)
        return (user, text, source, meta, created, last, hits, surprise, tier, dim, blob, scale, encoder, redundancy)

    # -- entries

    def add_many(
        self, rows: Iterable[Dict[str, Any]], *, meta: Optional[Dict[str, Any]] = None,
        touches: Sequence[Tuple[int, int, float]] = (),
    ) -> List[int]:
        """Store ``rows`` in one transaction and return their new ids, in order.

        Every row is validated first: one bad row raises ``ValueError`` (naming the
        row and the problem) and nothing is written. Ids are never reused.
        ``meta`` (key -> JSON value) and ``touches`` (``(id, uses, when)``: ``hits +=
        uses``, ``last_access`` at least ``when``) are written in the same transaction.
        """
        rows = list(rows)
        values = [self._validate_row(r, f"row {i}: ") for i, r in enumerate(rows)]
        metas = self._meta_items(meta)
        uses = [(_check_int(n, "uses", "touch: "), _check_real(t, "when", "touch: "), _check_int(i, "id", "touch: "))
                for i, n, t in touches]
        sql = (
            f"INSERT INTO entries ({', '.join(_COLUMNS[1:])}) VALUES ({', '.join('?' * (len(_COLUMNS) - 1))})"
        )

        def insert(db):
            ids = [db.execute(sql, v).lastrowid for v in values]
            db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", metas)
            db.executemany(
                "UPDATE entries SET hits = hits + ?, last_access = max(last_access, ?) WHERE id = ?", uses
            )
            return ids

        return self._write(insert) if values or metas or uses else []

    def add(self, row: Optional[Dict[str, Any]] = None, **fields) -> int:
        """Store one row (a dict or keyword fields); returns its id."""
        return self.add_many([dict(row or {}, **fields)])[0]

    def get_many(self, ids: Union[int, Iterable[int]]) -> List[Dict[str, Any]]:
        """The entries with these ids that exist, in the order of ``ids``."""
        ids = _ids_of(ids)
        found: Dict[int, Dict[str, Any]] = {}
        cols = ", ".join(_COLUMNS)
        for at in range(0, len(ids), 500):  # SQLite's bound-parameter limit
            part = ids[at : at + 500]
            sql = f"SELECT {cols} FROM entries WHERE id IN ({', '.join('?' * len(part))})"
            for r in self._read(sql, part):
                found[r[0]] = self._row(r)
        return [found[i] for i in ids if i in found]

    def get(self, id: int) -> Optional[Dict[str, Any]]:
        """The entry with this id as a dict, or None."""
        id = _check_int(id, "id", "")
        rows = self._read(f"SELECT {', '.join(_COLUMNS)} FROM entries WHERE id = ?", (id,))
        return self._row(rows[0]) if rows else None

    def update(self, id: int, **fields) -> None:
        """Change some fields of entry ``id`` (``KeyError`` if there is none).

        Any field but ``id`` and ``user`` may be given. A new ``vector`` (or None to
        drop it) is encoded per the entry's (new) tier; a new ``tier`` alone
        re-encodes the stored vector (hot <-> int8).
        """
        id = _check_int(id, "id", "")
        where = f"update of entry {id}: "
        unknown = set(fields) - _UPDATE_FIELDS
        if unknown:
            raise _err(
                where,
                f"field(s) {sorted(unknown)} cannot be updated; the fields are {sorted(_UPDATE_FIELDS)}.",
            )
        if not fields:
            return
        sets: Dict[str, Any] = {}
        if "text" in fields:
            sets["text"] = _check_str(
                fields["text"], "text", where, max_bytes=self.max_text_bytes, nonblank=True
            )
        if "source" in fields:
            sets["source"] = _check_optional_str(
                fields["source"], "source", where, max_bytes=MAX_SOURCE_BYTES, nonblank=False
            )
        if "metadata" in fields:
            m = fields["metadata"]
            sets["metadata"] = None if m is None else _to_json(m, "metadata", where, MAX_METADATA_BYTES)
        for k in ("created", "last_access"):
            if k in fields:
                sets[k] = _check_real(fields[k], k, where)
        if "hits" in fields:
            h = _check_int(fields["hits"], "hits", where)
            if h < 0:
                raise _err(where, f"hits must be >= 0 but got {h}.")
            sets["hits"] = h
        for k in ("surprise", "redundancy"):
            if k in fields:
                v = fields[k]
                sets[k] = None if v is None else _check_real(v, k, where)
        if "encoder" in fields:
            sets["encoder"] = _check_optional_str(
                fields["encoder"], "encoder", where, max_bytes=MAX_NAME_BYTES, nonblank=True
            )
        if "tier" in fields:
            sets["tier"] = _check_tier(fields["tier"], where)
        if "scale" in fields and "vector" not in fields:
            raise _err(where, "scale can only be updated together with an int8 vector.")
        vector_fields = {"vector", "tier", "dim"} & set(fields)

        def apply(db):
            cur = db.execute("SELECT tier, dim, vector, scale FROM entries WHERE id = ?", (id,)).fetchone()
            if cur is None:
                raise KeyError(f"[memory.store] no entry with id {id}.")
            tier = sets.get("tier", cur[0])
            if vector_fields:
                if "vector" in fields:
                    vec, scale = fields["vector"], fields.get("scale")
                    dim = fields.get("dim")
                elif cur[2] is not None:  # re-encode the stored vector for the new tier
                    old = _decode_vector(cur[2], cur[3])
                    # int8 codes keep their scale; float16 goes through float32
                    vec, scale = (old, cur[3]) if cur[3] is not None else (old.astype(np.float32), None)
                    dim = fields.get("dim", cur[1])
                else:
                    vec, scale, dim = None, None, fields.get("dim", cur[1])
                blob, sc, d = _encode_vector(vec, scale, tier, dim, where)
                sets.update(vector=blob, scale=sc, dim=d)
            cols = list(sets)
            db.execute(
                f"UPDATE entries SET {', '.join(f'{c} = ?' for c in cols)} WHERE id = ?",
                [sets[c] for c in cols] + [id],
            )
            if "text" in sets:  # the old text's words leave the full-text index
                _purge_fts(db)

        self._write(apply)

    def delete(self, ids: Union[int, Iterable[int]]) -> int:
        """Delete entries by id (missing ids are ignored); returns how many were deleted."""
        ids = _ids_of(ids)
        if not ids:
            return 0

        def apply(db):
            n = db.executemany("DELETE FROM entries WHERE id = ?", [(i,) for i in ids]).rowcount
            if n:
                _purge_fts(db)
            return n

        return self._write(apply)

    def delete_user(self, user: str) -> int:
        """Delete every entry of ``user``; returns how many were deleted."""
        _check_str(user, "user", "", max_bytes=MAX_NAME_BYTES, nonblank=True)

        def apply(db):
            n = db.execute("DELETE FROM entries WHERE user = ?", (user,)).rowcount
            if n:
                _purge_fts(db)
            return n

        return self._write(apply)

    def brief(self, ids: Sequence[int]) -> Dict[int, Tuple[float, bool, str]]:
        """``id -> (created, superseded, text)`` for the entries among ``ids`` that exist, where
        ``superseded`` says the metadata has a non-null ``superseded_by``; no vectors are read."""
        ids = _ids_of(ids)
        out: Dict[int, Tuple[float, bool, str]] = {}
        for at in range(0, len(ids), 500):  # SQLite's bound-parameter limit
            part = ids[at: at + 500]
            sql = (f"SELECT id, created, json_extract(metadata, '$.superseded_by') IS NOT NULL, text FROM entries "
                   f"WHERE id IN ({', '.join('?' * len(part))})")
            for i, created, sup, text in self._read(sql, part):
                out[i] = (created, bool(sup), text)
        return out

    def text_search(
        self, user: str, terms: Sequence[str], limit: int, *, include_history: bool = True,
        ids: Optional[Sequence[int]] = None,
    ) -> List[Tuple[int, float]]:
        """Full-text search of ``user``'s searchable entries (those with a vector) for any of
        ``terms``, ranked by BM25: ``[(id, score)]``, best first, at most ``limit``; the score
        is SQLite's ``-bm25()`` (higher is better, > 0 for a match).

        Each term is matched as a quoted FTS5 string (so no text is taken as query syntax);
        blank terms are ignored and no terms find nothing. ``include_history=False`` leaves
        out entries whose metadata has a non-null ``superseded_by``; ``ids`` restricts the
        search to those entries.
        """
        _check_str(user, "user", "", max_bytes=MAX_NAME_BYTES, nonblank=True)
        limit = _check_int(limit, "limit", "")
        match = fts_match(terms)
        if match is None or limit <= 0 or (ids is not None and not len(ids)):
            return []
        where = " AND e.vector IS NOT NULL"
        if not include_history:
            # absent, JSON null and metadata that is not an object all give SQL NULL
            where += " AND json_extract(e.metadata, '$.superseded_by') IS NULL"
        if ids is not None:
            part = _ids_of(ids)[:500]  # SQLite's bound-parameter limit
            sql = (f"SELECT e.id, -bm25({_FTS_TABLE}) AS s FROM {_FTS_TABLE} JOIN entries e "
                   f"ON e.id = {_FTS_TABLE}.rowid WHERE {_FTS_TABLE} MATCH ? AND e.user = ?{where} "
                   f"AND e.id IN ({', '.join('?' * len(part))}) ORDER BY s DESC LIMIT {limit:d}")
            return [(int(i), float(sc)) for i, sc in self._read(sql, [match, user] + part)]
        # FTS5 ranks inside the virtual table fastest (ORDER BY rank LIMIT, no join per match);
        # the user's entries are picked from that ranking, which grows until it holds `limit`
        # of them or every match.
        inner = max(4 * limit, 64)
        while True:
            sql = (f"SELECT e.id, -f.rank FROM (SELECT rowid, rank FROM {_FTS_TABLE} WHERE {_FTS_TABLE} MATCH ? "
                   f"ORDER BY rank LIMIT {inner:d}) f JOIN entries e ON e.id = f.rowid WHERE e.user = ?{where} "
                   f"ORDER BY f.rank LIMIT {limit:d}")
            rows = self._read(sql, [match, user])
            if len(rows) >= limit or inner >= 2**31:
                return [(int(i), float(sc)) for i, sc in rows]
            n = self._read(f"SELECT count(*) FROM {_FTS_TABLE} WHERE {_FTS_TABLE} MATCH ?", [match])[0][0]
            if n <= inner:
                return [(int(i), float(sc)) for i, sc in rows]
            inner = max(inner * 8, n) if n <= inner * 8 else inner * 8

    def iter_entries(self, user: Optional[str] = None) -> Iterator[Dict[str, Any]]:
        """Entries (of ``user``, or all) in id order, fetched a page at a time.

        No lock or transaction is held between pages, so other writers are not
        blocked; entries added or deleted meanwhile may or may not be seen.
        """
        cols = ", ".join(_COLUMNS)
        last = -(2**63)
        while True:
            if user is None:
                rows = self._read(
                    f"SELECT {cols} FROM entries WHERE id > ? ORDER BY id LIMIT {_PAGE}", (last,)
                )
            else:
                rows = self._read(
                    f"SELECT {cols} FROM entries WHERE user = ? AND id > ? ORDER BY id LIMIT {_PAGE}",
                    (user, last),
                )
            for r in rows:
                yield self._row(r)
            if len(rows) < _PAGE:
                return
            last = rows[-1][0]

    def load_vectors(
        self, user: Optional[str] = None, *, encoder: Optional[str] = None
    ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(ids int64 (N,), codes int8 (N, D), scales float32 (N,))`` of every entry
        with a vector (of ``user`` and ``encoder`` if given), in id order.

        'hot' entries, stored as float16, are quantized on the way out. Vectors of
        different dimensions raise ``ValueError`` (filter by ``encoder``, or re-encode).
        """
        sql = "SELECT id, dim, vector, scale FROM entries WHERE vector IS NOT NULL"
        params: List[Any] = []
        if user is not None:
            sql += " AND user = ?"
            params.append(user)
        if encoder is not None:
            sql += " AND encoder = ?"
            params.append(encoder)
        rows = self._read(sql + " ORDER BY id", params)
        if not rows:
            return np.zeros((0,), np.int64), np.zeros((0, 0), np.int8), np.zeros((0,), np.float32)
        dims = sorted({r[1] for r in rows})
        if len(dims) > 1:
            raise ValueError(
                f"[memory.store] the selected vectors have different dimensions {dims}; "
                f"load them per encoder (load_vectors(encoder=...)) or re-encode the entries."
            )
        n, d = len(rows), dims[0]
        ids = np.fromiter((r[0] for r in rows), np.int64, n)
        is_hot = np.fromiter((r[3] is None for r in rows), bool, n)
        # A scale past float32's range (written before import checked scales) would make the
        # whole user's index unusable; cosines need only the codes, so clip it.
        scales = np.fromiter((0.0 if r[3] is None else r[3] for r in rows), np.float64, n)
        scales = np.minimum(scales, MAX_SCALE).astype(np.float32)
        codes = np.empty((n, d), np.int8)
        at = np.flatnonzero(~is_hot)
        if at.size:
            codes[at] = np.frombuffer(b"".join(rows[i][2] for i in at), np.int8).reshape(-1, d)
        at = np.flatnonzero(is_hot)
        if at.size:  # float16 'hot' vectors are quantized like the rest
            f = np.frombuffer(b"".join(rows[i][2] for i in at), "<f2").reshape(-1, d).astype(np.float32)
            codes[at], scales[at] = quantize(f)
        return ids, codes, scales

    def touch(self, ids: Union[int, Iterable[int]], now: Optional[float] = None) -> int:
        """Record a use of these entries: ``hits += 1`` and ``last_access = now``
        (default: the current time). Returns how many entries were touched."""
        ids = _ids_of(ids)
        now = time.time() if now is None else _check_real(now, "now", "")
        if not ids:
            return 0
        return self._write(
            lambda db: (
                db.executemany(
                    "UPDATE entries SET hits = hits + 1, last_access = ? WHERE id = ?",
                    [(now, i) for i in ids],
                ).rowcount
            )
        )

    def count(self, user: Optional[str] = None) -> int:
        """How many entries (of ``user``, or in all) are stored."""
        if user is None:
            return self._read("SELECT count(*) FROM entries")[0][0]
        return self._read("SELECT count(*) FROM entries WHERE user = ?", (user,))[0][0]

    def stats(self, user: Optional[str] = None) -> Dict[str, np.ndarray]:
        """Per-entry bookkeeping (of ``user``, or all) as arrays in id order, without texts
        or vectors: ``ids``, ``created``, ``last_access``, ``hits``, ``surprise`` (NaN when
        unknown), ``redundancy`` (0 when unknown), ``tier`` (str), ``text_bytes``,
        ``dim`` (0 without a vector), ``snap_hits`` (-1 before any snapshot),
        ``snap_access`` (NaN before any snapshot), ``user`` (str)."""
        sql = (
            "SELECT id, created, last_access, hits, surprise, redundancy, tier, length(CAST(text AS BLOB)), "
            "CASE WHEN vector IS NULL THEN 0 ELSE dim END, snap_hits, snap_access, user FROM entries"
        )
        rows = self._read(sql + " WHERE user = ? ORDER BY id", (user,)) if user is not None else self._read(
            sql + " ORDER BY id"
        )
        cols = list(zip(*rows)) if rows else [()] * 12
        nan = float("nan")
        return {
            "ids": np.array(cols[0], np.int64),
            "created": np.array(cols[1], np.float64),
            "last_access": np.array(cols[2], np.float64),
            "hits": np.array(cols[3], np.int64),
            "surprise": np.array([nan if v is None else v for v in cols[4]], np.float32),
            "redundancy": np.array([0.0 if v is None else v for v in cols[5]], np.float32),
            "tier": np.array(cols[6], dtype=object),
            "text_bytes": np.array(cols[7], np.int64),
            "dim": np.array(cols[8], np.int64),
            "snap_hits": np.array([-1 if v is None else v for v in cols[9]], np.int64),
            "snap_access": np.array([nan if v is None else v for v in cols[10]], np.float64),
            "user": np.array(cols[11], dtype=object),
        }

    def apply_moves(self, moves: Sequence[Tuple[int, Optional[str]]]) -> int:
        """Change the tiers of entries in one transaction: ``(id, 'warm')`` turns a float16
        vector into int8, ``(id, 'cold')`` drops the vector (text kept), ``(id, None)``
        deletes the entry. Moves of missing ids are skipped; returns how many applied."""
        checked = []
        for i, (id_, tier) in enumerate(moves):
            id_ = _check_int(id_, "id", f"move {i}: ")
            if tier is not None:
                _check_tier(tier, f"move {i}: ")
            checked.append((id_, tier))

        def apply(db):
            done = evicted = 0
            for id_, tier in checked:
                if tier is None:
                    n = db.execute("DELETE FROM entries WHERE id = ?", (id_,)).rowcount
                    done += n
                    evicted += n
                    continue
                cur = db.execute("SELECT dim, vector, scale FROM entries WHERE id = ?", (id_,)).fetchone()
                if cur is None:
                    continue
                if tier == "cold" or cur[1] is None:
                    blob, scale, dim = None, None, cur[0]
                else:
                    old = _decode_vector(cur[1], cur[2])
                    vec, sc = (old, cur[2]) if cur[2] is not None else (old.astype(np.float32), None)
                    blob, scale, dim = _encode_vector(vec, sc, tier, cur[0], f"move of entry {id_}: ")
                db.execute(
                    "UPDATE entries SET tier = ?, vector = ?, scale = ?, dim = ? WHERE id = ?",
                    (tier, blob, scale, dim, id_),
                )
                done += 1
            if evicted:
                _purge_fts(db)
            return done

        return self._write(apply) if checked else 0

    def stale_vectors(self, user: Optional[str], encoder: str, limit: int = 256) -> List[Tuple[int, str]]:
        """``(id, text)`` of up to ``limit`` entries (of ``user``, or all) that have a vector
        from an encoder other than ``encoder``, in id order."""
        sql = "SELECT id, text FROM entries WHERE vector IS NOT NULL AND (encoder IS NULL OR encoder != ?)"
        params: List[Any] = [encoder]
        if user is not None:
            sql += " AND user = ?"
            params.append(user)
        return [tuple(r) for r in self._read(sql + f" ORDER BY id LIMIT {int(limit):d}", params)]

    def set_vectors(self, items: Sequence[Tuple[int, Any, Optional[str]]]) -> int:
        """Replace the vectors (and encoder names) of entries in one transaction, each
        stored per its current tier; ``items`` are ``(id, float vector, encoder)``.
        Missing ids are skipped; returns how many were set."""
        checked = [(_check_int(i, "id", ""), v, e) for i, v, e in items]

        def apply(db):
            done = 0
            for id_, vec, enc in checked:
                cur = db.execute("SELECT tier FROM entries WHERE id = ?", (id_,)).fetchone()
                if cur is None:
                    continue
                tier = "warm" if cur[0] == "cold" else cur[0]
                blob, scale, dim = _encode_vector(vec, None, tier, None, f"vector of entry {id_}: ")
                db.execute(
                    "UPDATE entries SET tier = ?, vector = ?, scale = ?, dim = ?, encoder = ? WHERE id = ?",
                    (tier, blob, scale, dim, enc, id_),
                )
                done += 1
            return done

        return self._write(apply) if checked else 0

    def take_snapshot(self, now: Optional[float] = None) -> None:
        """Remember every entry's ``hits`` and ``last_access`` as of ``now`` (meta
        ``snapshot_time``), so that later accesses can be told from earlier ones."""
        now = time.time() if now is None else _check_real(now, "now", "")

        def snap(db):
            db.execute("UPDATE entries SET snap_hits = hits, snap_access = last_access")
            db.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('snapshot_time', ?)", (json.dumps(now),)
            )

        self._write(snap)

    # -- meta

    def _meta_items(self, meta: Optional[Dict[str, Any]]) -> List[Tuple[str, str]]:
        if meta is None:
            return []
        if not isinstance(meta, dict):
            raise ValueError(f"[memory.store] meta must be a dict but got {type(meta).__name__}.")
        out = []
        for k, v in meta.items():
            _check_str(k, "meta key", "", max_bytes=MAX_META_KEY_BYTES, nonblank=True)
            out.append((k, _to_json(v, f"meta value of {k!r}", "", MAX_METADATA_BYTES)))
        return out

    def meta_keys(self, prefix: str = "") -> List[str]:
        """The meta keys that start with ``prefix``, sorted."""
        keys = [r[0] for r in self._read("SELECT key FROM meta ORDER BY key")]
        return [k for k in keys if k.startswith(prefix)]

    def get_meta(self, key: str, default: Any = None) -> Any:
        """The JSON value stored under ``key``, or ``default``."""
        _check_str(key, "meta key", "", max_bytes=MAX_META_KEY_BYTES, nonblank=True)
        rows = self._read("SELECT value FROM meta WHERE key = ?", (key,))
        return json.loads(rows[0][0]) if rows else default

    def set_meta(self, key: str, value: Any) -> None:
        """Store a JSON value (dict, list, str, number, bool, None) under ``key``."""
        _check_str(key, "meta key", "", max_bytes=MAX_META_KEY_BYTES, nonblank=True)
        s = _to_json(value, f"meta value of {key!r}", "", MAX_METADATA_BYTES)
        self._write(lambda db: db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, s)))

    def delete_meta(self, key: str) -> bool:
        """Remove ``key`` from meta; returns whether it was there."""
        _check_str(key, "meta key", "", max_bytes=MAX_META_KEY_BYTES, nonblank=True)
        return self._write(lambda db: db.execute("DELETE FROM meta WHERE key = ?", (key,)).rowcount) > 0

    # -- maintenance

    def data_version(self) -> int:
        """A number that changes when another connection commits to the file
        (``PRAGMA data_version``): cheap to poll to notice other processes' writes."""
        return self._read("PRAGMA data_version")[0][0]

    def checkpoint(self, wait: Optional[float] = None) -> bool:
        """Copy the WAL into the database file and truncate the ``-wal`` file to zero
        bytes, so deleted text is gone from it too. Waits up to ``wait`` seconds (default:
        the store's ``timeout``) for other connections' reads. Returns False when an open
        read kept the checkpoint from completing (try again later)."""
        with self._lock:
            db = self._conn
            if wait is not None:
                db.execute(f"PRAGMA busy_timeout = {max(0, int(wait * 1000)):d}")
            try:
                busy, _log, _done = self._read("PRAGMA wal_checkpoint(TRUNCATE)")[0]
            finally:
                if wait is not None:
                    db.execute(f"PRAGMA busy_timeout = {self._timeout_ms:d}")
            return busy == 0

    def scrub(self, wait: float = 2.0) -> List[str]:
        """Make deleted and overwritten text leave the file's bytes (database, ``-wal``).

        Checkpoints and truncates the WAL, waiting up to ``wait`` seconds for other
        connections' open reads (a reader's snapshot keeps old pages in place). Returns
        ``[]`` when the bytes are gone. Otherwise returns the processes holding the file
        open (``'pid N (command)'`` on Linux) and leaves a pending-scrub mark in the file,
        which the next :meth:`scrub`, open or close of a store (or the last reader's own
        close, where SQLite checkpoints) completes.
        """
        if self.path == ":memory:":
            return []
        with self._lock:
            if self.checkpoint(wait):
                if self._pending:
                    self.delete_meta(PENDING_SCRUB_KEY)
                    self.checkpoint(0)  # the mark's own frame; it holds no deleted text
                    self._pending = False
                return []
            if not self._pending:
                self.set_meta(PENDING_SCRUB_KEY, time.time())
                self._pending = True
            return holders(self.path) or ["another connection (its process could not be named)"]

    @property
    def scrub_pending(self) -> bool:
        """Whether deleted text may still be in the file's bytes (see :meth:`scrub`)."""
        return self._pending

    def finish_scrub(self) -> None:
        """Best effort, without waiting: complete a pending scrub (at open and close; the
        bank calls it before each operation)."""
        if self._pending:
            try:
                self.scrub(wait=0)
            except (ValueError, sqlite3.Error):  # read-only file, or busy: the next try completes it
                pass

    def vacuum(self) -> bool:
        """Rebuild the database file compactly (dropping free pages), then :meth:`checkpoint`."""
        with self._lock:
            self._conn.execute("VACUUM")
            return self.checkpoint()

    def integrity_check(self) -> str:
        """``PRAGMA integrity_check``: ``'ok'`` for a sound file, else the problems found."""
        return "\n".join(r[0] for r in self._read("PRAGMA integrity_check"))

    def close(self) -> None:
        """Close the connection (idempotent). The last connection to close folds the WAL
        into the database file and removes ``-wal`` and ``-shm``."""
        with self._lock:
            if self._db is not None:
                self.finish_scrub()
                self._db.close()
                self._db = None

    def __enter__(self) -> "MemoryStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):  # best effort; close() explicitly
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        state = "closed" if self._db is None else "open"
        return f"MemoryStore({self.path!r}, {state})"
