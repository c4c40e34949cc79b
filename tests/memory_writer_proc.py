"""A writer process for the memory-store tests (crash and concurrency).

Run as a script: ``python memory_writer_proc.py PATH TAG BATCHES [--wait-go]`` opens
the store at PATH, prints ``ready``, optionally waits for a line ``go`` on stdin,
then adds BATCHES single-row batches (up to 1 ms apart), printing one JSON line per returned batch:
``{"b": batch, "ids": [...]}``. Row texts and vectors follow from
(tag, batch, row, batch size) through :func:`row_for`, so a reader can check them.
"""

from __future__ import annotations

import json
import random
import sys
import time
import zlib
from typing import IO, Optional

import numpy as np

WORDS = (
    "the a my her his coffee morning meeting remember prefers tea garden train "
    "Tuesday doctor sister birthday café naïve 東京 piano deadline project keys"
).split()
DIM = 16


def row_for(tag: str, batch: int, i: int, n: int) -> dict:
    """The row ``i`` of ``n`` in batch ``batch`` of writer ``tag``."""
    seed = zlib.crc32(f"{tag}/{batch}/{i}/{n}".encode())
    rng = random.Random(seed)
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 30)))
    vec = np.frombuffer(rng.randbytes(DIM), np.int8).copy()
    vec[vec == -128] = -127
    return {
        "user": f"user-{tag}",
        "text": f"{tag} batch {batch} row {i} of {n}: {words}",
        "metadata": {"batch": batch, "row": i},
        "vector": vec,
        "scale": (seed % 1000) / 1e4,
        "encoder": "test-enc",
    }


def parse_text(text: str):
    """``(tag, batch, i, n)`` from a text made by :func:`row_for`."""
    head = text.split(":", 1)[0].split()
    return head[0], int(head[2]), int(head[4]), int(head[6])


def write_loop(
    path: str,
    tag: str,
    out: IO[str],
    *,
    batches: Optional[int] = None,
    max_batch: int = 1,
    seed: int = 0,
    checkpoint_every: int = 0,
    wait_go: Optional[IO[str]] = None,
    pause: float = 0.0,
) -> None:
    """Add batches of 1..max_batch rows to the store at ``path`` (forever when
    ``batches`` is None), reporting each returned batch on ``out`` (flushed),
    sleeping up to ``pause`` seconds between batches."""
    from mlx_synapse.memory.store import MemoryStore

    rng = random.Random(seed)
    store = MemoryStore(path)
    out.write("ready\n")
    out.flush()
    if wait_go is not None and wait_go.readline().strip() != "go":
        raise SystemExit("expected 'go' on stdin")
    b = 0
    while batches is None or b < batches:
        n = rng.randint(1, max_batch)
        ids = store.add_many([row_for(tag, b, i, n) for i in range(n)])
        out.write(json.dumps({"b": b, "ids": ids}) + "\n")
        out.flush()
        b += 1
        if checkpoint_every and b % checkpoint_every == 0:
            store.checkpoint()
        if pause:
            time.sleep(rng.uniform(0, pause))
    store.close()


if __name__ == "__main__":
    path, tag, batches = sys.argv[1], sys.argv[2], int(sys.argv[3])
    wait_go = sys.stdin if "--wait-go" in sys.argv else None
    write_loop(path, tag, sys.stdout, batches=batches, wait_go=wait_go, pause=0.001)
