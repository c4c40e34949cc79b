"""Where the model and the memory bank run: one worker thread, bounded admission.

All model and bank calls run on one thread (:attr:`Engine.executor`), so the event loop
stays free (``/health`` answers while generations run) and neither MLX nor SQLite is
touched from two threads at once. Up to ``parallel`` generations are admitted together;
their tokens are produced in turn on the worker thread (one step of one stream per
call), so a new request's prompt is read without waiting for a long reply to end.
Beyond that, up to ``max_queue`` requests wait; more are refused (429, ``Retry-After``),
and everything is refused once shutdown has begun (503).

A stream is a plain generator built on the worker thread; the server pulls it one item
per executor call and closes it (on the worker thread) as soon as the client is gone,
which ends the generation at the next token.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator, Callable, Iterator

from .errors import ApiError

_DONE = object()


class Engine:
    """Admission (slots + a bounded queue) and the worker thread.

    Args:
        parallel: generations admitted at once (their tokens interleave).
        max_queue: requests allowed to wait for a slot; more get 429.
    """

    def __init__(self, *, parallel: int = 1, max_queue: int = 16):
        if parallel < 1 or max_queue < 0:
            raise ValueError(f"[server] need parallel >= 1 and max_queue >= 0 but got {parallel}, {max_queue}.")
        self.parallel, self.max_queue = parallel, max_queue
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="mlx-synapse-model")
        self.active = self.waiting = 0
        self.closing = False
        self.cancelled = 0  # generations ended early because the client left
        self.last_finish = None  # (finish_reason, completion tokens) of the latest generation
        self._slots = None
        self._mean_s = 5.0  # running mean of a generation's duration, for Retry-After

    async def call(self, fn: Callable, *args):
        """Run ``fn(*args)`` on the worker thread."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def _refuse_if_full(self) -> None:
        if self.closing:
            raise ApiError(503, "the server is shutting down; retry against a running server.",
                           code="shutting_down", retry_after=5)
        if self.active >= self.parallel and self.waiting >= self.max_queue:
            wait = self._mean_s * (1 + self.waiting) / self.parallel
            raise ApiError(429, f"the server is busy ({self.active} generations running, {self.waiting} waiting, "
                                f"queue bound {self.max_queue}); retry after the Retry-After seconds or start "
                                "the server with a larger --max-queue.", code="queue_full", retry_after=wait)

    @contextlib.asynccontextmanager
    async def slot(self):
        """Hold one generation slot; raises ApiError 429/503 when none can be had."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.parallel)
        self._refuse_if_full()
        self.waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
        if self.closing:
            self._slots.release()
            raise ApiError(503, "the server is shutting down; retry against a running server.",
                           code="shutting_down", retry_after=5)
        self.active += 1
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.active -= 1
            self._slots.release()
            self._mean_s = 0.8 * self._mean_s + 0.2 * (time.perf_counter() - t0)

    async def iterate(self, gen: Iterator) -> AsyncIterator:
        """The items of ``gen``, each produced on the worker thread; ``gen`` is closed
        there when the consumer stops early (a disconnect cancels this coroutine)."""
        try:
            while True:
                item = await self.call(next, gen, _DONE)
                if item is _DONE:
                    return
                yield item
        finally:
            # Not awaited: the consumer may be a cancelled task; the close is queued on the
            # worker thread and runs before any later work.
            self.executor.submit(gen.close)

    def shutdown(self) -> None:
        self.closing = True
        self.executor.shutdown(wait=True, cancel_futures=False)
