"""Where the model and the memory bank run: one worker thread, bounded admission.

All model and bank calls run on one thread (:attr:`Engine.executor`), so the event loop
stays free (``/health`` answers while generations run) and neither MLX nor SQLite is
touched from two threads at once. Up to ``parallel`` generations are admitted together;
their tokens are produced in turn on the worker thread (one step of one stream per
call), so a new request's prompt is read without waiting for a long reply to end.
Beyond that, up to ``max_queue`` requests wait; more are refused (429, ``Retry-After``),
and everything is refused once shutdown has begun (503).

A stream is a plain generator built on the worker thread; the server pulls it one item
at a time and closes it (on the worker thread) as soon as the client is gone, which ends
the generation at the next token.

Continuous batching (NumPy backend on the compiled engine, ``batch=True``): a stream
whose generator runs on a :class:`StreamModel` joins the batch.  Each round (one executor
call, :meth:`Engine._round`) first runs one :meth:`~mlx_synapse.backends.numpy.engine.DecodeEngine.step_batch`
over every waiting stream whose prompt has been read -- one read of the weights for all
of them -- and hands each its row; then it advances every waiting stream by one
item, so that sampling, logits processors (repetition penalty, structured output, the
memory copy bias), logprobs and stop strings stay per request, unchanged.  A new stream's
prompt is read in the round it arrives in and it joins the batch from its first decode
step; a finished or abandoned stream simply stops asking.  Not batched (each runs its own
steps, interleaved as before): MLX models, a model without the compiled engine, caches
the engine does not take; a batched step that fails falls back to separate steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator, Callable, Iterator, List, Optional

from .errors import ApiError, log

_DONE = object()


class StreamModel:
    """The model as one stream's generation sees it: every attribute is the model's, but a
    decode step the engine has already computed in a batch for this stream is handed back
    instead of recomputed.  It remembers the cache the generation makes (or, failing that,
    the one its first step runs on), so the engine can batch its steps from the first."""

    def __init__(self, model):
        self._model = model
        self.reader = None  # the reader adapter this stream's steps run with (None: the base model)
        self.cache = None  # the per-layer caches this stream's decode steps use
        self.pending = None  # (token, logits) computed by a batched step, for the next step_logits

    def __getattr__(self, name):
        return getattr(self._model, name)

    def make_cache(self, *args, **kwargs):
        self.cache = self._model.make_cache(*args, **kwargs)
        return self.cache

    def step_logits(self, token: int, cache):
        pending, self.pending = self.pending, None
        if pending is not None:
            if pending[0] != token or cache is not self.cache:
                # the batched step already advanced this cache; a different request cannot be served
                raise RuntimeError(f"[server] a batched decode step was computed for token {pending[0]} but "
                                   f"the generation asked for {token}")
            return pending[1]
        self.cache = cache
        return self._model.step_logits(token, cache)


class _Stream:
    __slots__ = ("gen", "model", "want", "next_token")

    def __init__(self, gen, model: StreamModel):
        self.gen, self.model = gen, model
        self.want = None  # the future the consumer waits on for the next item
        self.next_token: Optional[int] = None  # the token the generator feeds at its next step

    def waiting(self) -> bool:
        return self.want is not None and not self.want.done()


class Engine:
    """Admission (slots + a bounded queue) and the worker thread.

    Args:
        parallel: generations admitted at once (decoded together where ``batch`` can,
            their tokens interleaved otherwise).
        max_queue: requests allowed to wait for a slot; more get 429.
        batch: decode the admitted streams of a NumPy model together (see the module doc).
    """

    def __init__(self, *, parallel: int = 1, max_queue: int = 16, batch: bool = True):
        if parallel < 1 or max_queue < 0:
            raise ValueError(f"[server] need parallel >= 1 and max_queue >= 0 but got {parallel}, {max_queue}.")
        self.parallel, self.max_queue, self.batch = parallel, max_queue, batch
        self._streams: List[_Stream] = []
        self._rounds = None  # the task that runs rounds while streams wait
        self.batched_steps = 0  # batched decode steps run, and the sequences they carried
        self.batched_rows = 0
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

    def stream_model(self, model):
        """What a stream's generation should run on: a :class:`StreamModel` when its decode
        steps can be batched (``batch`` on, a NumPy model with the compiled engine), else
        ``model`` itself.  Call it on the worker thread (it may build the engine)."""
        if not self.batch or self.parallel < 2 or getattr(model, "backend", "mlx") != "numpy":
            return model
        eng = getattr(model, "engine", None)
        return StreamModel(model) if eng is not None and hasattr(eng, "step_batch") else model

    async def iterate(self, gen: Iterator, model=None) -> AsyncIterator:
        """The items of ``gen``, each produced on the worker thread; ``gen`` is closed
        there when the consumer stops early (a disconnect cancels this coroutine).
        ``model``: the :class:`StreamModel` ``gen`` runs on, to batch its decode steps."""
        if isinstance(model, StreamModel):
            inner = self._iterate_batched(gen, model)
            try:
                async for item in inner:
                    yield item
            finally:  # at once, not when the inner generator is collected: the stream leaves the batch
                await inner.aclose()
            return
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

    async def _iterate_batched(self, gen: Iterator, model: StreamModel) -> AsyncIterator:
        s = _Stream(gen, model)
        self._streams.append(s)
        loop = asyncio.get_running_loop()
        try:
            while True:
                s.want = loop.create_future()
                if self._rounds is None or self._rounds.done():
                    self._rounds = loop.create_task(self._run_rounds())
                item = await s.want
                if item is _DONE:
                    return
                yield item
        finally:
            self._streams.remove(s)
            s.want = None
            self.executor.submit(gen.close)  # queued behind any round that still holds it

    async def _run_rounds(self) -> None:
        """Rounds while any stream waits.  Between rounds the consumers that just got an item
        send it and ask for the next; the next round waits for them, for at most a tenth of a
        round (20 ms at most), so that it carries them all: a stream that misses a round
        loses a whole round, a slow consumer is not waited for longer."""
        loop = asyncio.get_running_loop()
        round_s = 0.0
        while True:
            deadline, spins = loop.time() + min(0.02, 0.1 * round_s), 0
            while not all(s.waiting() for s in self._streams) and (spins < 50 or loop.time() < deadline):
                await asyncio.sleep(0 if spins < 50 else 0.0005)
                spins += 1
            ready = [s for s in self._streams if s.waiting()]
            if not ready:
                return
            t0 = loop.time()
            try:
                results = await self.call(self._round, ready)
            except Exception as e:  # the worker is gone (shutdown): no consumer may wait forever
                results = [(False, e)] * len(ready)
            round_s = loop.time() - t0
            for s, (ok, value) in zip(ready, results):
                if s.waiting():
                    if ok:
                        s.want.set_result(value)
                    else:
                        s.want.set_exception(value)

    def _round(self, ready: List[_Stream]) -> list:
        """On the worker thread: one batched decode step for the streams that can share it,
        then one item from each stream; ``[(ok, item or exception)]`` in ``ready``'s order."""
        batch = [s for s in ready if s.next_token is not None and s.model.cache is not None]
        eng = batch[0].model.engine if len(batch) > 1 else None
        if eng is not None:
            batch = [s for s in batch if eng.supports(s.model.cache)]
            groups: dict = {}  # streams with the same adapter state step together
            for s in batch:
                groups.setdefault(id(s.model.reader), []).append(s)
            parts = [g[i:i + eng.MAX_BATCH] for g in groups.values() for i in range(0, len(g), eng.MAX_BATCH)]
            for part in parts:
                if len(part) < 2:
                    continue
                reader = part[0].model.reader
                try:
                    with reader.active() if reader is not None else contextlib.nullcontext():
                        logits = eng.step_batch([s.next_token for s in part], [s.model.cache for s in part])
                except (ValueError, RuntimeError, MemoryError) as e:  # each stream steps alone instead
                    log.warning("batched decode step failed (%s); stepping %d streams one by one", e, len(part))
                    continue
                self.batched_steps += 1
                self.batched_rows += len(part)
                for s, row in zip(part, logits):
                    s.model.pending = (s.next_token, row.copy())
        out = []
        for s in ready:
            s.next_token = None
            try:
                item = next(s.gen, _DONE)
            except Exception as e:  # the stream's own error, raised in its consumer
                s.model.pending = None
                out.append((False, e))
                continue
            if item is not _DONE and getattr(item, "finish_reason", "stop") is None:
                s.next_token = int(item.token)
            out.append((True, item))
        return out

    def shutdown(self) -> None:
        self.closing = True
        self.executor.shutdown(wait=True, cancel_futures=False)
