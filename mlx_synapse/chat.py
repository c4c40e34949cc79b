"""``python -m mlx_synapse.chat``: talk to the model; it remembers you across runs.

Memories live in the memory bank (``--db``, default ``~/.local/share/mlx_synapse/memory.db``)
under ``--user``. Commands: ``/remember TEXT``, ``/forget TEXT`` (deletes the one memory
that matches; when several do, lists them and asks which: numbers, ``all``, or an empty
line to cancel), ``/forget #ID``, ``/memories``, ``/why`` (what was retrieved for the last
answer), ``/reset`` (new session, memories kept), ``/exit``. When standard input is not a
terminal, each line is one turn (or the answer to /forget's question) and each reply is
printed on its own line(s), so the chat can be scripted.

Ctrl-C during a reply stops it and keeps the session; at the prompt it ends the chat.
A line that is not UTF-8 is skipped with a message (exit status 1 at the end); a memory
database that cannot be written is read without being changed, with a message.
"""

from __future__ import annotations

import argparse
import re
import sqlite3
import sys
from typing import List, Optional

__all__ = ["main"]

HELP = "/remember TEXT, /forget TEXT, /forget #ID, /memories, /why, /reset, /exit"
# What a database that cannot be written (read-only file, full disk, locked) raises.
_STORAGE_ERRORS = (sqlite3.Error, OSError)


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


class _Lines:
    """Lines of standard input as text; a line that is not UTF-8 is reported and read as ''."""

    def __init__(self, stream, err):
        self.stream, self.raw, self.err = stream, getattr(stream, "buffer", None), err
        self.n = self.rejected = 0

    def readline(self) -> Optional[str]:
        """The next line, '' for a rejected one, None at the end of input."""
        self.n += 1
        if self.raw is None:
            return self.stream.readline() or None
        b = self.raw.readline()
        if not b:
            return None
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError as e:
            print(f"error: input line {self.n} is not valid UTF-8 (byte 0x{b[e.start]:02x} at offset {e.start}); "
                  "skipped it. Send UTF-8 text.", file=self.err, flush=True)
            self.rejected += 1
            return ""


def _show_memories(hits, out) -> None:
    if not hits:
        print("  (no memory was used)", file=out)
    for e, s in hits:
        print(f"  {s:.3f} [{e.id}] {e.text}", file=out)


def _parse_choice(answer: str, n: int) -> Optional[List[int]]:
    """1-based positions from 'all' or numbers separated by spaces/commas; None if not that."""
    a = answer.strip().lower()
    if a == "all":
        return list(range(1, n + 1))
    if not re.fullmatch(r"\d+([\s,]+\d+)*", a):
        return None
    picks = sorted({int(x) for x in re.split(r"[\s,]+", a)})
    return picks if all(1 <= i <= n for i in picks) else None


def _forget(a, rest: str, lines: _Lines, out, interactive: bool) -> None:
    if re.fullmatch(r"#\d+", rest):
        e = a.memory.get(int(rest[1:]), user=a.user)
        cands = [e] if e is not None else []
        if not cands:
            print(f"no memory {rest} (see /memories)", file=out)
            return
    else:
        cands = [e for e, _ in a.forget_candidates(rest)]
        if not cands:
            print(f"no memory matches {rest!r} (see /memories)", file=out)
            return
    if len(cands) > 1:
        print(f"{len(cands)} memories match {rest!r}:", file=out)
        for i, e in enumerate(cands, 1):
            print(f"  {i}. [{e.id}] {e.text}", file=out)
        print("forget which? numbers (e.g. 1 3), 'all', or an empty line to cancel: ", end="", file=out, flush=True)
        try:
            answer = lines.readline()
        except KeyboardInterrupt:
            answer = None
        if not interactive:
            print(file=out)
        if not answer or not answer.strip():
            print("nothing forgotten", file=out)
            return
        picks = _parse_choice(answer, len(cands))
        if picks is None:
            print(f"{answer.strip()!r} is not a choice (numbers 1 to {len(cands)}, or 'all'): nothing forgotten",
                  file=out)
            return
        cands = [cands[i - 1] for i in picks]
    a.memory.forget([e.id for e in cands], user=a.user)
    print(f"forgot {len(cands)}: " + "; ".join(f"[{e.id}] {e.text}" for e in cands), file=out)


def _storage_message(e: BaseException, path) -> str:
    return (f"error: the memory database {path} cannot be written ({e}); memories are read but not changed "
            "from now on. Fix its permissions or pass --db PATH.")


def _turn(a, msg: str, out, err, verbose: bool, path) -> None:
    """One reply, streamed; Ctrl-C stops it (the session keeps what was said)."""
    for _ in range(2):  # a second time, read-only, when the bank could not be written
        gen = a.stream_respond(msg)
        try:
            for piece in gen:
                print(piece, end="", file=out, flush=True)
        except KeyboardInterrupt:
            gen.close()
            print(" [stopped]", file=out, flush=True)
            return
        except _STORAGE_ERRORS as e:
            if a.read_only:
                print(f"error: the memory database {path} cannot be read ({e}).", file=err, flush=True)
                return
            print(_storage_message(e, path), file=err, flush=True)
            a.read_only = True
            continue
        except ValueError as e:
            print(f"error: {e}", file=err, flush=True)
            return
        break
    print(file=out, flush=True)
    for note in a.last.notes:
        print(f"note: {note}", file=err, flush=True)
    if verbose:
        _show_memories(a.last.memories, out)


def _command(a, bank, msg: str, lines: _Lines, out, err, interactive: bool) -> bool:
    """Run a /command; False for /exit."""
    cmd, _, rest = msg.partition(" ")
    rest = rest.strip()
    if cmd in ("/exit", "/quit"):
        return False
    try:
        if cmd == "/remember" and rest:
            if a.read_only:
                raise sqlite3.OperationalError("it was found read-only earlier")
            a.notes = []
            print(f"remembered [{a.remember(rest)}]", file=out)
            for note in a.notes:
                print(f"note: {note}", file=err)
        elif cmd == "/forget" and rest:
            _forget(a, rest, lines, out, interactive)
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
    except _STORAGE_ERRORS as e:
        print(_storage_message(e, bank.path), file=err, flush=True)
        a.read_only = True
    except ValueError as e:
        print(f"error: {e}", file=err, flush=True)
    out.flush()
    return True


def run(args, stdin=None, out=None, err=None) -> int:
    from .assistant import Assistant
    from .loader import load
    from .memory.bank import MemoryBank, default_user

    stdin = stdin or sys.stdin
    out = out or sys.stdout
    err = err or sys.stderr
    interactive = stdin.isatty()
    lines = _Lines(stdin, err)
    model, tok = load(args.model, backend=args.backend)
    with MemoryBank(args.db, backend=args.backend) as bank:
        a = Assistant(model, tok, bank, user=args.user or default_user(), max_tokens=args.max_tokens,
                      temp=args.temp, system=args.system, auto_learn=not args.no_learn)
        if interactive:
            print(f"Chatting as {a.user!r} (memory: {bank.path}). {HELP}", file=out)
        while True:
            try:  # (the prompt too: a Ctrl-C right after it is shown is one at the prompt)
                if interactive:
                    print("> ", end="", file=out, flush=True)
                line = lines.readline()
            except KeyboardInterrupt:  # Ctrl-C at the prompt ends the chat
                print(file=out, flush=True)
                break
            if line is None:
                break
            msg = line.strip()
            if not msg:
                continue
            if msg.startswith("/"):
                if not _command(a, bank, msg, lines, out, err, interactive):
                    break
                continue
            _turn(a, msg, out, err, args.verbose, bank.path)
    return 1 if lines.rejected else 0


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return run(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except _STORAGE_ERRORS as e:
        print(f"error: the memory database cannot be opened or written ({e}); check its permissions or pass "
              "--db PATH.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
