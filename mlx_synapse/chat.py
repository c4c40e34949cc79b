"""``python -m mlx_synapse.chat``: talk to the model; it remembers you across runs.

Memories live in the memory bank (``--db``, default ``~/.local/share/mlx_synapse/memory.db``)
under ``--user``. Commands: ``/remember TEXT``, ``/forget QUERY``, ``/memories``,
``/why`` (what was retrieved for the last answer), ``/reset`` (new session, memories
kept), ``/exit``. When standard input is not a terminal, each line is one turn and
each reply is printed on its own line(s), so the chat can be scripted.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

__all__ = ["main"]

HELP = "/remember TEXT, /forget QUERY, /memories, /why, /reset, /exit"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mlx_synapse.chat", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model directory, .gguf or hub id (default: SmolLM2-135M-Instruct)")
    p.add_argument("--backend", default="auto", choices=("auto", "mlx", "numpy"))
    p.add_argument("--db", default=None, help="memory database")
    p.add_argument("--user", default=None, help="whose memories (default: $MLX_SYNAPSE_USER or login name)")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--temp", type=float, default=0.0)
    p.add_argument("--system", default=None)
    p.add_argument("--no-learn", action="store_true", help="store only what /remember is given")
    p.add_argument("--verbose", action="store_true", help="show the memories used for each reply")
    return p


def _show_memories(hits, out) -> None:
    if not hits:
        print("  (no memory was used)", file=out)
    for e, s in hits:
        print(f"  {s:.3f} [{e.id}] {e.text}", file=out)


def run(args, stdin=None, out=None) -> int:
    from .assistant import Assistant
    from .loader import load
    from .memory.bank import MemoryBank, default_user

    stdin = stdin or sys.stdin
    out = out or sys.stdout
    interactive = stdin.isatty()
    model, tok = load(args.model, backend=args.backend)
    with MemoryBank(args.db, backend=args.backend) as bank:
        a = Assistant(model, tok, bank, user=args.user or default_user(), max_tokens=args.max_tokens,
                      temp=args.temp, system=args.system, auto_learn=not args.no_learn)
        if interactive:
            print(f"Chatting as {a.user!r} (memory: {bank.path}). {HELP}", file=out)
        while True:
            if interactive:
                print("> ", end="", file=out, flush=True)
            line = stdin.readline()
            if not line:
                break
            msg = line.strip()
            if not msg:
                continue
            if msg.startswith("/"):
                cmd, _, rest = msg.partition(" ")
                rest = rest.strip()
                if cmd in ("/exit", "/quit"):
                    break
                elif cmd == "/remember" and rest:
                    print(f"remembered [{a.remember(rest)}]", file=out)
                elif cmd == "/forget" and rest:
                    gone = a.forget(rest)
                    print(f"forgot {len(gone)}: " + "; ".join(e.text for e in gone), file=out)
                elif cmd == "/memories":
                    for e in bank.list(user=a.user):
                        print(f"  [{e.id}] {e.text}", file=out)
                elif cmd == "/why":
                    _show_memories(a.last.memories if a.last else [], out)
                elif cmd == "/reset":
                    a.reset()
                    print("new session (memories kept)", file=out)
                else:
                    print(f"commands: {HELP}", file=out)
                out.flush()
                continue
            for piece in a.stream_respond(msg):
                print(piece, end="", file=out, flush=True)
            print(file=out, flush=True)
            if args.verbose:
                _show_memories(a.last.memories, out)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
