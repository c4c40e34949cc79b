"""``python -m mlx_synapse.memory {add,search,list,forget,export,import,stats}``: the memory bank from a shell.

Every command takes ``--db`` (default ``~/.local/share/mlx_synapse/memory.db``, or
``$MLX_SYNAPSE_MEMORY_DB``) and ``--user`` (default ``$MLX_SYNAPSE_USER``, else the
login name). Texts may be given as ``-`` to read them from standard input. Errors
go to standard error as one line with exit status 2 (1 when the file system refused,
or when ``forget`` deleted entries whose text another process's open read still keeps
in the file's bytes); nothing is written when a command fails.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage mistake reported as one line (exit status 2)."""

    def error(self, message: str):
        self.exit(2, f"error: [memory] {self.prog}: {message} (see --help)\n")


def _parser() -> argparse.ArgumentParser:
    from .bank import default_db_path

    common = _Parser(add_help=False)
    common.add_argument("--db", default=None, help=f"memory database (default {default_db_path()})")
    common.add_argument("--user", default=None, help="whose memories (default: $MLX_SYNAPSE_USER or login name)")
    common.add_argument("--encoder", default="minilm",
                        help="sentence encoder: 'minilm' (all-MiniLM-L6-v2) or a model directory for "
                             "'hidden:<path>[:layer]' (the LM's own hidden states)")
    common.add_argument("--backend", default="auto", choices=("auto", "mlx", "numpy"))
    common.add_argument("--budget-mb", type=float, default=None,
                        help="byte budget of the bank in MiB: over it, entries degrade hot -> warm -> "
                             "cold -> evicted (least worth keeping first)")
    common.add_argument("--policy", default="learned", choices=("learned", "lru", "fifo", "random"),
                        help="which entries degrade first over budget (learned falls back to LRU "
                             "until trained)")
    common.add_argument("--json", action="store_true", help="print JSON instead of text")

    p = _Parser(prog="python -m mlx_synapse.memory", description="The memory bank from a shell: remember, find, list and forget "
                                "what a user told the model; move memories between files.",
                                epilog=__doc__.split("\n\n", 1)[1].replace("``", ""))
    sub = p.add_subparsers(dest="command", required=True)
    a = sub.add_parser("add", parents=[common], help="remember a text")
    a.add_argument("text", help="the text, or - to read it from stdin")
    a.add_argument("--source", default="cli")
    a.add_argument("--metadata", default=None, help="a JSON value stored with the entry")
    a.add_argument("--gate", action="store_true",
                   help="score the text's surprise with the default language model and write it only "
                        "above the running mean + gamma*std")
    a.add_argument("--gamma", type=float, default=1.0)
    s = sub.add_parser("search", parents=[common], help="find the closest memories")
    s.add_argument("query", help="the query, or - to read it from stdin")
    s.add_argument("-k", type=int, default=5)
    s.add_argument("--min-score", type=float, default=None)
    ls = sub.add_parser("list", parents=[common], help="list memories, oldest first")
    ls.add_argument("--tier", choices=("hot", "warm", "cold"), default=None)
    ls.add_argument("--limit", type=int, default=None)
    ls.add_argument("--all-users", action="store_true", help="every user's entries")
    f = sub.add_parser("forget", parents=[common], help="delete memories for good")
    f.add_argument("ids", nargs="*", type=int, help="entry ids to delete")
    f.add_argument("--all", action="store_true", help="every memory of --user")
    f.add_argument("--contains", default=None, help="entries whose text contains this (case-insensitive)")
    f.add_argument("--source", default=None, help="entries from this source")
    f.add_argument("--before", type=float, default=None, help="entries created before this Unix time")
    e = sub.add_parser("export", parents=[common], help="write memories to a JSON Lines file")
    e.add_argument("path")
    e.add_argument("--all-users", action="store_true", help="every user's entries")
    i = sub.add_parser("import", parents=[common], help="add memories from an export file")
    i.add_argument("path")
    i.add_argument("--keep-users", action="store_true", help="keep each entry's user instead of --user")
    sub.add_parser("stats", parents=[common], help="counts, bytes, encoder, policy")
    return p


def _read_text(value: str) -> str:
    if value != "-":
        return value
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8").strip("\n")
    except UnicodeDecodeError as e:
        raise ValueError(f"[memory] standard input is not valid UTF-8 (bad byte at offset {e.start}).") from None


def _encoder(spec: str, backend: str):
    if spec == "minilm":
        from .encoders import MiniLMEncoder

        return MiniLMEncoder(backend=backend)
    if spec.startswith("hidden:"):
        from mlx_synapse.loader import load

        from .encoders import HiddenStateEncoder

        rest = spec[len("hidden:"):]
        path, _, layer = rest.rpartition(":") if rest.rsplit(":", 1)[-1].lstrip("-").isdigit() else (rest, "", "")
        model, tok = load(path or None, backend=backend)
        return HiddenStateEncoder(model, tok, **({"layer": int(layer)} if layer else {}))
    raise ValueError(f"[memory] --encoder must be 'minilm' or 'hidden:<model path>[:layer]' but got {spec!r}.")


def _entry_json(e, score: Optional[float] = None) -> dict:
    d = dict(e.__dict__)
    if score is not None:
        d["score"] = round(score, 6)
    return d


def _print_entries(hits, as_json: bool) -> None:
    if as_json:
        print(json.dumps([_entry_json(e, s) for e, s in hits], ensure_ascii=False, indent=1))
        return
    for e, s in hits:
        lead = f"{s:6.3f}  " if s is not None else ""
        print(f"{lead}[{e.id}] {e.text}  ({e.tier}, hits {e.hits}{', ' + e.source if e.source else ''})")


def run(args) -> int:
    from .bank import MemoryBank, _check_user, default_user

    # An empty --user is a mistake to report, not a request for the default user; it is
    # checked before a model is loaded or a file is created.
    user = _check_user(default_user() if args.user is None else args.user)
    lazy = args.command in ("list", "forget", "stats", "export")
    encoder = None if lazy else _encoder(args.encoder, args.backend)
    surprise = None
    if args.command == "add" and args.gate:
        from mlx_synapse.loader import load

        from .surprise import SurpriseScorer

        model, tok = load(None, backend=args.backend)
        surprise = SurpriseScorer(model, tok)
    with MemoryBank(args.db, encoder, surprise=surprise, gamma=getattr(args, "gamma", 1.0),
                    backend=args.backend, budget_mb=args.budget_mb, policy=args.policy) as bank:
        if args.command == "add":
            meta = None
            if args.metadata is not None:
                try:
                    meta = json.loads(args.metadata)
                except json.JSONDecodeError as e:
                    raise ValueError(f"[memory] --metadata is not JSON ({e.msg}).") from None
            r = bank.write(_read_text(args.text), user=user, source=args.source, metadata=meta,
                           force=not args.gate)
            if args.json:
                print(json.dumps(r.__dict__))
            elif r.action == "skipped":
                print(f"skipped: surprise {r.surprise:.3f} is not above the threshold {r.threshold:.3f}")
            else:
                extra = f" (near-duplicate, cosine {r.similarity:.3f})" if r.action == "refreshed" else ""
                print(f"{r.action} [{r.id}]{extra}")
        elif args.command == "search":
            _print_entries(bank.search(_read_text(args.query), args.k, user=user, min_score=args.min_score),
                           args.json)
        elif args.command == "list":
            entries = bank.list(user=None if args.all_users else user, tier=args.tier, limit=args.limit)
            _print_entries([(e, None) for e in entries], args.json)
        elif args.command == "forget":
            where = {k: v for k, v in (("contains", args.contains), ("source", args.source),
                                       ("before", args.before)) if v is not None}
            if args.ids and (where or args.all):
                raise ValueError("[memory] give ids, or --all / --contains / --source / --before, not both.")
            if args.ids:
                n = bank.forget(args.ids, user=user)
            elif where:
                n = bank.forget(user=user, where=where)
            elif args.all:
                n = bank.forget(user=user)
            else:
                raise ValueError("[memory] forget what? Give entry ids, --all, --contains, --source or --before.")
            print(json.dumps({"forgotten": n}) if args.json else f"forgot {n} entr{'y' if n == 1 else 'ies'}")
        elif args.command == "export":
            n = bank.export(args.path, user=None if args.all_users else user)
            print(json.dumps({"exported": n}) if args.json else f"exported {n} entries to {args.path}")
        elif args.command == "import":
            n = bank.import_(args.path, user=None if args.keep_users else user)
            print(json.dumps({"imported": n}) if args.json else f"imported {n} entries from {args.path}")
        elif args.command == "stats":
            st = bank.stats()
            if args.json:
                print(json.dumps(st, indent=1))
            else:
                for k, v in st.items():
                    print(f"{k:>13}: {v}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    import sqlite3

    from .bank import ScrubPending

    args = _parser().parse_args(argv)
    try:
        return run(args)
    except ScrubPending as e:  # done in the database, not yet in the file's bytes: not a success
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (ValueError, KeyError, FileNotFoundError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except (OSError, sqlite3.Error) as e:  # the file system or SQLite refused; say which, in one line
        print(f"error: [memory] {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
