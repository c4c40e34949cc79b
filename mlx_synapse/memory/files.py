"""The memory store's file system side: private directories, permission errors as
one-line messages, and which other processes hold the database open (no SQL here)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from typing import List

__all__ = ["make_private_dirs", "permission_error", "holders"]


def make_private_dirs(parent: str) -> None:
    """Create ``parent`` and every missing directory above it with mode 0700.

    ``os.makedirs(mode=...)`` applies the mode to the last directory only; the ones
    above it would get the umask's default (usually 0755).
    """
    missing = []
    d = os.path.abspath(parent)
    while d and not os.path.exists(d):
        missing.append(d)
        up = os.path.dirname(d)
        if up == d:
            break
        d = up
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            pass
        except OSError as e:
            raise permission_error(d, e, "create the directory") from None
        os.chmod(d, 0o700)  # the umask may have removed bits; 0700 is what is wanted


def permission_error(path: str, e: OSError, doing: str) -> ValueError:
    """A one-line ValueError for an OSError met while ``doing`` something to ``path``."""
    why = e.strerror or str(e)
    return ValueError(
        f"[memory.store] cannot {doing} {path}: {why}. Pick a path you can write "
        f"(--db or $MLX_SYNAPSE_MEMORY_DB), or fix its permissions."
    )


def holders(path: str) -> List[str]:
    """Other processes that have ``path`` (or its ``-wal``/``-shm``) open, as
    ``'pid 123 (command line)'``; read from ``/proc`` on Linux, else asked of ``lsof``
    (macOS, BSDs) where it is installed; empty when neither can tell."""
    if not sys.platform.startswith("linux") or not os.path.isdir("/proc"):
        return _holders_lsof(path)
    targets = {os.path.realpath(path + side) for side in ("", "-wal", "-shm")}
    me, out = os.getpid(), []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == me:
            continue
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            hit = any(os.readlink(f"/proc/{pid}/fd/{fd}") in targets for fd in fds)
        except OSError:  # gone, or not ours to look at
            continue
        if hit:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = " ".join(f.read().replace(b"\0", b" ").decode("utf-8", "replace").split())
            except OSError:
                cmd = "?"
            out.append(f"pid {pid} ({cmd[:120]})")
    return out


def _holders_lsof(path: str) -> List[str]:
    lsof = shutil.which("lsof")
    files = [p for p in (path, path + "-wal", path + "-shm") if os.path.exists(p)]
    if lsof is None or not files:
        return []
    try:  # -F pc: one "p<pid>" line per process, then "c<command>"
        out = subprocess.run([lsof, "-w", "-F", "pc", "--", *files], capture_output=True, text=True,
                             timeout=3).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    found, pid = {}, None
    for line in out.splitlines():
        if line[:1] == "p":
            pid = int(line[1:]) if line[1:].isdigit() else None
        elif line[:1] == "c" and pid is not None and pid != os.getpid():
            found[pid] = line[1:]
    return [f"pid {p} ({c})" for p, c in found.items()]
