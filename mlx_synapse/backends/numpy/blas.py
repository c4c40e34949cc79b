"""Best-effort control of the BLAS thread count NumPy uses (OpenBLAS only).

Decoding one token is a chain of matrix-vector products, which are memory
bound: a second BLAS thread buys ~15% on an idle 2-core machine but, when the
cores are shared with other work, costs 5x (OpenBLAS threads wait for each
other at every call and one of them is descheduled).  Prompt prefill is
compute bound and keeps OpenBLAS's own setting.  So decode threads are tuned
online by :class:`DecodeThreadTuner` (measure each option, keep the fastest,
re-probe now and then).

This module finds the OpenBLAS library NumPy loaded (via /proc/self/maps, as
threadpoolctl does) and exposes get/set; elsewhere (Accelerate on macOS, other
BLAS builds) every call is a harmless no-op and no tuning happens.

Environment: ``MLX_SYNAPSE_DECODE_THREADS=N`` pins the decode thread count
(``auto``, the default, tunes); ``OPENBLAS_NUM_THREADS`` still sets OpenBLAS's
own default, which is also the largest count tried.
"""

from __future__ import annotations

import ctypes
import os
from contextlib import contextmanager
from typing import Iterator, Optional

_SET_NAMES = (
    "scipy_openblas_set_num_threads64_",
    "scipy_openblas_set_num_threads",
    "openblas_set_num_threads64_",
    "openblas_set_num_threads",
)
_GET_NAMES = (
    "scipy_openblas_get_num_threads64_",
    "scipy_openblas_get_num_threads",
    "openblas_get_num_threads64_",
    "openblas_get_num_threads",
)

_lib = None
_searched = False


def _find() -> Optional[ctypes.CDLL]:
    global _lib, _searched
    if _searched:
        return _lib
    _searched = True
    import numpy  # noqa: F401  (make sure its BLAS is loaded)

    try:
        with open("/proc/self/maps") as f:
            paths = sorted(
                {p for p in (ln.split()[-1] for ln in f) if "openblas" in os.path.basename(p).lower() and ".so" in p}
            )
    except OSError:
        return None
    for p in paths:
        try:
            lib = ctypes.CDLL(p)
        except OSError:
            continue
        setter = next((getattr(lib, n) for n in _SET_NAMES if hasattr(lib, n)), None)
        getter = next((getattr(lib, n) for n in _GET_NAMES if hasattr(lib, n)), None)
        if setter is not None and getter is not None:
            setter.argtypes, setter.restype = [ctypes.c_int], None
            getter.argtypes, getter.restype = [], ctypes.c_int
            _lib = (setter, getter)
            return _lib
    return None


def get_threads() -> Optional[int]:
    lib = _find()
    return None if lib is None else int(lib[1]())


def set_threads(n: int) -> None:
    lib = _find()
    if lib is not None and n > 0:
        lib[0](int(n))


def decode_threads() -> Optional[int]:
    """The pinned decode thread count from the environment, or None for auto."""
    v = os.environ.get("MLX_SYNAPSE_DECODE_THREADS", "auto").strip().lower()
    if v in ("", "auto"):
        return None
    try:
        return max(1, int(v))
    except ValueError:
        return None


class DecodeThreadTuner:
    """Pick the BLAS thread count for one-token steps by measuring them.

    Every option is first tried for ``probe`` steps (median kept).  Then the
    fastest is used (its time tracked as a moving average) and the others are
    re-probed for ``reprobe`` steps after ``every`` steps, so a change of
    machine load (other processes coming and going) is noticed; the interval
    doubles (to ``max_every``) each time the winner stays the same.
    """

    def __init__(self, probe: int = 3, reprobe: int = 2, every: int = 64, max_every: int = 1024, options=None):
        if options is None:  # 1, 2, 4, ... and OpenBLAS's own count
            top = get_threads() or 1
            options = [top] + [2**i for i in range(8) if 2**i < top]
        self.options = sorted(set(options))
        self.probe, self.reprobe = probe, reprobe
        self.base_every, self.every, self.max_every = every, every, max_every
        self._speed: dict = {}  # option -> seconds per step
        self._samples: list = []
        self._plan: list = [o for o in self.options for _ in range(probe)]
        self._since = 0
        self._winner: Optional[int] = None

    def choose(self) -> Optional[int]:
        pinned = decode_threads()
        if pinned is not None:
            return pinned
        if len(self.options) == 1:
            return None
        if not self._plan and self._since >= self.every:
            best = self.best()
            self._plan = [o for o in self.options if o != best for _ in range(self.reprobe)]
            self._since = 0
        return self._plan[0] if self._plan else self.best()

    def record(self, threads: Optional[int], seconds: float) -> None:
        if threads is None or len(self.options) == 1:
            return
        if self._plan and self._plan[0] == threads:
            self._plan.pop(0)
            self._samples.append(seconds)
            if not self._plan or self._plan[0] != threads:  # this option's probe is complete
                t = sorted(self._samples)
                self._speed[threads] = t[len(t) // 2]
                self._samples = []
                if not self._plan:
                    best = self.best()
                    self.every = min(self.max_every, self.every * 2) if best == self._winner else self.base_every
                    self._winner = best
            return
        self._since += 1
        old = self._speed.get(threads)
        self._speed[threads] = seconds if old is None else 0.8 * old + 0.2 * seconds

    def best(self) -> Optional[int]:
        if not self._speed:
            return None
        return min(self._speed, key=self._speed.get)


@contextmanager
def blas_threads(n: Optional[int]) -> Iterator[None]:
    """Temporarily run BLAS with ``n`` threads (None: leave as is)."""
    before = get_threads() if n else None
    if before is None or before == n:
        yield
        return
    set_threads(n)
    try:
        yield
    finally:
        set_threads(before)
