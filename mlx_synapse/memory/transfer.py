"""Moving memories between files: :meth:`MemoryBank.export` and :meth:`MemoryBank.import_`
(JSON Lines, one header line ``{"format": EXPORT_FORMAT, ...}`` and one line per entry)."""

from __future__ import annotations

import base64
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Optional, Union

import numpy as np

from .records import MAX_SCALE

__all__ = ["export", "import_", "EXPORT_FORMAT"]

EXPORT_FORMAT = "mlx_synapse.memory/1"


def _err(msg: str) -> ValueError:
    return ValueError(f"[memory.bank] {msg}")


def _path(path) -> Path:
    p = os.fspath(path)
    if isinstance(p, str) and "\0" in p:
        raise _err(f"the path {p!r} contains a NUL character; give a file path without one.")
    return Path(os.path.expanduser(p))


def _check_user(user) -> str:
    from .bank import _check_user as check  # bank imports this module

    return check(user)


def _encode_b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")



def export(bank, path: Union[str, os.PathLike], *, user: Optional[str] = None) -> int:
    """Write the entries (of ``user``, or all) to a JSON Lines file (mode 0600,
    replaced atomically): a header line ``{"format", "exported"}`` and one line per
    entry with its encoder's name and vector (base64 float16, or int8 + scale).
    Returns the count."""
    if user is not None:
        user = _check_user(user)
    path = _path(path)
    if path.is_dir():
        raise _err(f"cannot export to {path}: it is a directory; give a file path (e.g. {path / 'memory.jsonl'}).")
    header = {"format": EXPORT_FORMAT, "exported": time.time()}
    try:
        fd, tmp = tempfile.mkstemp(prefix=".export-", dir=path.parent if str(path.parent) else ".")
    except OSError as e:
        raise _err(f"cannot export to {path}: {e.strerror} ({path.parent}); pick a writable path.") from None
    n = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(header) + "\n")
            for row in bank.store.iter_entries(user):
                row = dict(row, **{k: getattr(bank._entry(row), k) for k in ("hits", "last_access")})
                out = {k: row[k] for k in ("user", "text", "source", "metadata", "created", "last_access",
                                           "hits", "surprise", "tier", "encoder")}
                v = row["vector"]
                if v is not None:
                    out["vector"] = ({"dtype": "float16", "data": _encode_b64(v.astype("<f2"))}
                                     if row["scale"] is None else
                                     {"dtype": "int8", "scale": row["scale"], "data": _encode_b64(v)})
                f.write(json.dumps(out, ensure_ascii=False, allow_nan=False) + "\n")
                n += 1
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise _err(f"cannot export to {path}: {e.strerror}; pick a writable file path.") from None
        raise
    return n

def import_(bank, path: Union[str, os.PathLike], *, user: Optional[str] = None) -> int:
    """Add the entries of an :meth:`export` file (to ``user`` if given, else each to its
    own). The whole file is checked first and written in one transaction: a bad line
    raises ValueError naming it, and nothing is imported. Vectors are kept when the file's
    encoder is this bank's, else re-embedded from the texts; entries whose text the user
    already has are skipped. Returns how many entries were added."""
    path = _path(path)
    if user is not None:
        user = _check_user(user)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise _err(f"cannot read {path}: {e.strerror}.") from None
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise _err(f"{path} is not UTF-8 text (bad byte at offset {e.start}); is it an export file?") from None
    if not lines:
        raise _err(f"{path} is empty; an export file starts with a header line.")
    try:
        header = json.loads(lines[0])
    except json.JSONDecodeError:
        header = None
    if not isinstance(header, dict) or header.get("format") != EXPORT_FORMAT:
        raise _err(f"{path} line 1 is not an mlx_synapse memory export header "
                   f'({{"format": "{EXPORT_FORMAT}", ...}}).')
    enc = bank.encoder
    rows = []
    for ln, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        where = f"{path} line {ln}: "
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise _err(f"{where}not JSON ({e.msg}); nothing was imported.") from None
        if not isinstance(d, dict) or not isinstance(d.get("text"), str):
            raise _err(f"{where}an entry needs a 'text' string; nothing was imported.")
        bank._check_text(d["text"], where)
        row = {k: d.get(k) for k in ("source", "metadata", "created", "last_access", "hits", "surprise")}
        row = {k: v for k, v in row.items() if v is not None}
        row["user"] = user if user is not None else _check_user(d.get("user"))
        row["text"] = d["text"]
        tier = d.get("tier", "warm")
        if tier not in ("hot", "warm", "cold"):
            raise _err(f"{where}tier must be hot, warm or cold but got {tier!r}; nothing was imported.")
        row["tier"] = tier
        vec = d.get("vector")
        # Vectors of this bank's encoder are kept; any other encoder's are re-embedded.
        if vec is not None and d.get("encoder") == enc.name and tier != "cold":
            row.update(_decode_import_vector(vec, enc.dim, where))
            row["encoder"] = enc.name
        elif tier != "cold":
            row["_embed"] = True
        rows.append(row)
    # Skip texts the user already has (makes re-importing the same file harmless).
    have: Dict[str, set] = {}
    fresh = []
    for r in rows:
        if r["user"] not in have:
            have[r["user"]] = {e["text"] for e in bank.store.iter_entries(r["user"])}
        if r["text"] not in have[r["user"]]:
            have[r["user"]].add(r["text"])
            fresh.append(r)
    todo = [i for i, r in enumerate(fresh) if r.pop("_embed", False)]
    for at in range(0, len(todo), 256):
        part = todo[at : at + 256]
        vecs = bank._embed([fresh[i]["text"] for i in part])
        for i, v in zip(part, vecs):
            fresh[i].update(vector=v, encoder=enc.name)
    try:
        ids = bank.store.add_many(fresh)
    except ValueError as e:
        raise _err(f"{path}: {str(e).split('] ', 1)[-1]} Nothing was imported.") from None
    bank._indexes.clear()
    bank._bytes = None
    bank._dv = bank.store.data_version()
    if bank.budget_bytes is not None and ids:
        bank._maybe_enforce(time.time())
    return len(ids)

def _decode_import_vector(vec, dim: int, where: str) -> Dict[str, Any]:
    if not isinstance(vec, dict) or vec.get("dtype") not in ("float16", "int8"):
        raise _err(f"{where}vector must be {{'dtype': 'float16'|'int8', 'data': base64, ...}}.")
    try:
        data = base64.b64decode(vec.get("data", ""), validate=True)
    except (ValueError, TypeError):
        raise _err(f"{where}vector data is not base64; nothing was imported.") from None
    width = 2 if vec["dtype"] == "float16" else 1
    if len(data) != width * dim:
        raise _err(f"{where}vector has {len(data) // width} dimensions but the encoder has {dim} "
                   f"(wrong-dimension import); nothing was imported.")
    # What is stored must be searchable: finite, not all zeros (a zero vector matches
    # nothing), and with a scale whose products stay inside float32.
    if vec["dtype"] == "float16":
        a = np.frombuffer(data, "<f2").astype(np.float32)
        if not np.isfinite(a).all():
            raise _err(f"{where}vector has a NaN or infinite value; nothing was imported.")
        if not a.any():
            raise _err(f"{where}vector is all zeros (it could never match); nothing was imported.")
        return {"vector": a}
    scale = vec.get("scale")
    if (isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale)
            or not 0 < scale <= MAX_SCALE):
        raise _err(f"{where}an int8 vector needs a scale in (0, {MAX_SCALE:.4g}] but got {scale!r}; "
                   f"nothing was imported.")
    codes = np.frombuffer(data, np.int8).copy()
    if not codes.any():
        raise _err(f"{where}vector is all zeros (it could never match); nothing was imported.")
    return {"vector": codes, "scale": float(scale)}
