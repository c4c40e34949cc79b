"""``.synapse`` bundles: a personal model in one file, to move to another machine.

A bundle is a zip archive:

    manifest.json                  format, user, the base model's reference, every file's size and SHA-256
    config.json                    the user's settings (free-form JSON)
    memory.jsonl                   the user's memories (``MemoryBank.export``)
    adapters/<name>/...            adapter directories (mlx-lm files + the sleep manifest if any);
                                   ``sleep`` is the user's consolidated adapter (``<db>.sleep/<user>/``)

The base model is referenced, not included: its name and the SHA-256 of its
``config.json`` and ``*.safetensors`` bytes. :func:`import_bundle` refuses another base,
a damaged or truncated archive (sizes and hashes are checked before anything is
written), members the manifest does not list, and any path that would land outside
its target directory. Adapters are installed where this package looks for them:
``sleep`` into ``<db>.sleep/<user>/``, the others and ``config.json`` into
``<db>.adapters/<user>/``; memories go through ``MemoryBank.import_`` (one
transaction; vectors kept when the encoder is the same, re-embedded otherwise).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import Dict, List, Optional, Union

FORMAT = "mlx_synapse.bundle/1"
MANIFEST = "manifest.json"
MAX_BYTES = 8 << 30  # a bundle holds adapters and text: anything near this is not one
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _err(msg: str) -> ValueError:
    return ValueError(f"[bundle] {msg}")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def base_reference(model_path: Union[str, Path]) -> dict:
    """``{"name", "config_sha256", "weights_sha256"}`` of a model directory (weights: its
    ``*.safetensors`` files' bytes, in name order)."""
    path = Path(model_path)
    cfg = path / "config.json"
    files = sorted(path.glob("*.safetensors"))
    if not cfg.is_file() or not files:
        raise FileNotFoundError(f"[bundle] {path} is not a model directory (config.json and *.safetensors); "
                                "pass --model with the base model's directory.")
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + _sha256_file(f).encode())
    return {"name": path.name, "config_sha256": _sha256_file(cfg), "weights_sha256": h.hexdigest()}


def adapters_dir(db_path, user: str) -> Path:
    """Where a user's named adapters and bundle config live: ``<db>.adapters/<user>/``."""
    from .bank_sleep import sleep_dir

    return Path(str(db_path) + ".adapters") / sleep_dir(db_path, user).name


def _model_path(model) -> Path:
    if model is None:
        from ..defaults import default_model_path

        return default_model_path()
    return Path(model)


def export_bundle(out: Union[str, Path], *, user: str, db=None, model=None,
                  adapters: Optional[Dict[str, Union[str, Path]]] = None, config: Optional[dict] = None,
                  include_sleep: bool = True) -> dict:
    """Write ``user``'s bundle to ``out`` (atomically). Returns the manifest.

    Args:
        db: the memory database (default: the bank's default path).
        model: the base model directory (default: the default model).
        adapters: more adapter directories by name; the user's sleep adapter is added as
            ``sleep`` when it exists and ``include_sleep``.
        config: the user's settings, stored as ``config.json``.
    """
    from ..memory.bank import MemoryBank, _check_user, default_db_path
    from .adapters import read_adapter_config
    from .bank_sleep import sleep_dir

    user = _check_user(user)
    db = Path(db) if db is not None else default_db_path()
    if not Path(db).is_file():
        raise FileNotFoundError(f"[bundle] no memory database at {db}; pass --db with the bank's file.")
    adapters = {k: Path(v) for k, v in (adapters or {}).items()}
    if include_sleep and "sleep" not in adapters and (sleep_dir(db, user) / "adapter_config.json").is_file():
        adapters["sleep"] = sleep_dir(db, user)
    for name, path in adapters.items():
        if not _NAME.match(name):
            raise _err(f"adapter name {name!r} must be 1-64 letters, digits, '_', '.' or '-'.")
        read_adapter_config(path)  # a clear error for a missing or broken adapter
    base = base_reference(_model_path(model))
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix=".bundle-") as tmp:
        files: Dict[str, Path] = {}
        mem = Path(tmp) / "memory.jsonl"
        with MemoryBank(db) as bank:
            n_mem = bank.export(mem, user=user)
        files["memory.jsonl"] = mem
        cfg = Path(tmp) / "config.json"
        cfg.write_text(json.dumps(config or {}, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        files["config.json"] = cfg
        for name, path in sorted(adapters.items()):
            for f in sorted(path.iterdir()):
                # the adapter's files, not its numbered training checkpoints
                if f.is_file() and not f.is_symlink() and f.name in ("adapter_config.json", "adapters.safetensors",
                                                                     "manifest.json"):
                    files[f"adapters/{name}/{f.name}"] = f
        manifest = {
            "format": FORMAT, "user": user, "created": time.time(),
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "base": base, "memories": n_mem, "adapters": sorted(adapters),
            "files": {k: {"size": p.stat().st_size, "sha256": _sha256_file(p)} for k, p in files.items()},
        }
        try:
            fd, part = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent if str(out.parent) else ".")
        except OSError as e:
            raise _err(f"cannot write {out}: {e.strerror}; pick a writable path.") from None
        try:
            with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as z:
                z.writestr(MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
                for arc, p in files.items():
                    z.write(p, arc)
            os.replace(part, out)
        except BaseException:
            if os.path.exists(part):
                os.unlink(part)
            raise
    return manifest


def _safe_member(name: str, root: Path) -> Path:
    """The path ``name`` extracts to under ``root``; a name that could leave it is refused."""
    p = PurePosixPath(name)
    if (not name or "\\" in name or "\0" in name or p.is_absolute() or ".." in p.parts or ":" in name
            or any(part in ("", ".") for part in name.split("/"))):
        raise _err(f"member {name!r} has a path that could leave the target directory; the bundle is refused.")
    dest = (root / p).resolve()
    if root.resolve() not in dest.parents:
        raise _err(f"member {name!r} would be written outside {root}; the bundle is refused.")
    return dest


def read_bundle(path: Union[str, Path]) -> tuple:
    """(manifest, {member: bytes}) of a bundle, every check made; nothing written."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"[bundle] {path} does not exist; give the .synapse file written by 'bundle export'.")
    try:
        z = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise _err(f"{path} is not a readable .synapse bundle ({e}); it is truncated or not a bundle.") from None
    with z:
        infos = {i.filename: i for i in z.infolist()}
        if MANIFEST not in infos:
            raise _err(f"{path} has no {MANIFEST}; it is not a .synapse bundle.")
        try:
            manifest = json.loads(z.read(MANIFEST))
        except (json.JSONDecodeError, UnicodeDecodeError, zipfile.BadZipFile, zlib.error, OSError, EOFError) as e:
            raise _err(f"{path}: {MANIFEST} is unreadable ({e}); the bundle is damaged.") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            got = manifest.get("format") if isinstance(manifest, dict) else None
            raise _err(f"{path} has format {got!r}, this version reads {FORMAT!r}.")
        files = manifest.get("files")
        if not isinstance(files, dict) or "memory.jsonl" not in files:
            raise _err(f"{path}: the manifest lists no files (memory.jsonl at least); the bundle is damaged.")
        scratch = Path(tempfile.gettempdir())
        for name in list(files) + list(infos):
            _safe_member(name, scratch)  # refuse a traversal before anything else
        extra = sorted(set(infos) - set(files) - {MANIFEST})
        if extra:
            raise _err(f"{path} holds {extra[0]!r}, which its manifest does not list; the bundle is refused.")
        total = 0
        data = {}
        for name, meta in files.items():
            info = infos.get(name)
            if info is None:
                raise _err(f"{path} lacks {name!r}, which its manifest lists; the bundle is truncated.")
            if info.is_dir() or (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise _err(f"{path}: {name!r} is a directory or a link, not a file; the bundle is refused.")
            if not isinstance(meta, dict) or info.file_size != meta.get("size"):
                raise _err(f"{path}: {name!r} is {info.file_size} bytes, the manifest says {meta.get('size')}; "
                           "the bundle is damaged.")
            total += info.file_size
            if total > MAX_BYTES:
                raise _err(f"{path} unpacks to more than {MAX_BYTES >> 30} GiB; it is not a bundle this reads.")
            try:
                blob = z.read(info)
            except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError) as e:
                raise _err(f"{path}: cannot read {name!r} ({e}); the bundle is truncated or damaged.") from None
            if hashlib.sha256(blob).hexdigest() != meta.get("sha256"):
                raise _err(f"{path}: {name!r} does not match its SHA-256 in the manifest; the bundle is damaged.")
            data[name] = blob
    return manifest, data


def import_bundle(path: Union[str, Path], *, db=None, user: Optional[str] = None, model=None,
                  encoder=None, replace: bool = False, check_base: bool = True) -> dict:
    """Install a bundle for ``user`` (default: the bundle's) into the bank ``db``.

    Args:
        model: the base model directory here (default: the default model); refused when it
            is not the bundle's base (``check_base=False`` skips that check).
        encoder: the memory bank's encoder (default: the bank's default).
        replace: overwrite adapters the user already has (else refused).

    Returns:
        ``{"user", "memories", "adapters": {name: dir}, "config": dict, "base": dict}``.
    """
    from ..memory.bank import MemoryBank, _check_user, default_db_path
    from .bank_sleep import sleep_dir

    manifest, data = read_bundle(path)
    user = _check_user(user if user is not None else manifest.get("user"))
    db = Path(db) if db is not None else default_db_path()
    want = manifest.get("base") or {}
    if check_base:
        here = base_reference(_model_path(model))
        if (here["config_sha256"], here["weights_sha256"]) != (want.get("config_sha256"), want.get("weights_sha256")):
            raise _err(f"{path} was made for base model {want.get('name')!r} (weights {str(want.get('weights_sha256'))[:12]}), "
                       f"but {here['name']!r} here is another (weights {here['weights_sha256'][:12]}); "
                       "pass --model with the bundle's base.")
    try:
        config = json.loads(data.get("config.json", b"{}"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _err(f"{path}: config.json is not JSON ({e}); the bundle is damaged.") from None
    names = sorted({n.split("/")[1] for n in data if n.startswith("adapters/")})
    targets = {n: (sleep_dir(db, user) if n == "sleep" else adapters_dir(db, user) / n) for n in names}
    for n, t in targets.items():
        if not _NAME.match(n):
            raise _err(f"{path}: adapter name {n!r} is not allowed; the bundle is refused.")
        if t.exists() and not replace:
            raise _err(f"{user!r} already has an adapter at {t}; pass --replace to overwrite it.")
    Path(db).parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".bundle-import-", dir=Path(db).parent))
    try:
        for name, blob in data.items():
            dest = _safe_member(name, stage)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(blob)
        with MemoryBank(db, encoder) as bank:
            n_mem = bank.import_(stage / "memory.jsonl", user=user)
            new_ids = {e.text: e.id for e in bank.list(user=user)}
        for n, t in targets.items():
            src = stage / "adapters" / n
            _renumber(src, new_ids)
            t.parent.mkdir(parents=True, exist_ok=True)
            if t.exists():
                shutil.rmtree(t)
            os.replace(src, t)
        if config:
            adapters_dir(db, user).mkdir(parents=True, exist_ok=True)
            (adapters_dir(db, user) / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return {"user": user, "memories": n_mem, "adapters": {n: str(t) for n, t in targets.items()},
            "config": config, "base": want}


def _renumber(adapter: Path, new_ids: Dict[str, int]) -> None:
    """Point a sleep manifest's memory ids at the ids the memories got in this bank (matched by text)."""
    man = adapter / "manifest.json"
    if not man.is_file():
        return
    m = json.loads(man.read_text(encoding="utf-8"))
    facts = m.get("facts") or []
    for f in facts:
        if isinstance(f, dict) and f.get("text") in new_ids:
            f["id"] = new_ids[f["text"]]
    if facts:
        m["memory_ids"] = [f.get("id") for f in facts if isinstance(f, dict)]
    m["forgotten_ids"] = []  # ids of another bank mean nothing here
    man.write_text(json.dumps(m, indent=2) + "\n", encoding="utf-8")


def setup_arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mlx_synapse bundle",
                                description="Move a personal model (base reference, adapters, memories, config) "
                                            "between machines as one .synapse file.")
    sub = p.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export", help="write a user's bundle")
    e.add_argument("--user", required=True)
    e.add_argument("--out", required=True, help="the .synapse file to write")
    e.add_argument("--db", default=None, help="memory database (default: the bank's default)")
    e.add_argument("--model", default=None, help="base model directory (default: the default model)")
    e.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR", help="an adapter to include")
    e.add_argument("--config", default=None, help="a JSON file of the user's settings to include")
    i = sub.add_parser("import", help="install a bundle")
    i.add_argument("bundle")
    i.add_argument("--user", default=None, help="install for this user (default: the bundle's)")
    i.add_argument("--db", default=None, help="memory database (default: the bank's default)")
    i.add_argument("--model", default=None, help="base model directory here (default: the default model)")
    i.add_argument("--encoder", default="minilm", help="the bank's encoder (as the memory CLI's --encoder)")
    i.add_argument("--replace", action="store_true", help="overwrite the user's adapters of the same names")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = setup_arg_parser().parse_args(argv)
    try:
        if args.command == "export":
            adapters = {}
            for spec in args.adapter:
                name, sep, d = spec.partition("=")
                if not sep or not d:
                    raise _err(f"--adapter must be NAME=DIR but got {spec!r}.")
                adapters[name] = d
            config = None
            if args.config:
                try:
                    config = json.loads(Path(args.config).read_text(encoding="utf-8"))
                except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise _err(f"--config {args.config} is not a readable JSON file ({e}).") from None
            m = export_bundle(args.out, user=args.user, db=args.db, model=args.model, adapters=adapters,
                              config=config)
            print(f"wrote {args.out}: {m['memories']} memories, adapters {', '.join(m['adapters']) or 'none'}, "
                  f"base {m['base']['name']}")
        else:
            from ..memory.__main__ import _encoder

            read_bundle(args.bundle)  # a damaged bundle is refused before an encoder is loaded
            res = import_bundle(args.bundle, db=args.db, user=args.user, model=args.model,
                                encoder=_encoder(args.encoder, "auto"), replace=args.replace)
            print(f"imported {res['memories']} memories for {res['user']}; adapters: "
                  + (", ".join(f"{n} -> {d}" for n, d in res["adapters"].items()) or "none"))
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: [bundle] {e.strerror or e}: {e.filename or ''}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
