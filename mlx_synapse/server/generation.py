"""What a chat or text completion asks of the core, built on the worker thread.

:func:`chat_stream` goes through the same :class:`~mlx_synapse.assistant.Assistant`
as ``python -m mlx_synapse.chat`` when memory is on (retrieve, learn, prompt with the
memories shown, copy bias), and through the plain chat template when it is off;
:func:`completion_stream` is ``stream_generate`` on the prompt as given. Both return a
generator of :class:`~mlx_synapse.generate.GenerationResponse` (lazy: the prompt is read
at the first ``next``) and what the turn read and wrote.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterator, List, Optional, Tuple

from ..assistant import Assistant
import numpy as np

from ..generate import build_prompt, stream_generate
from .errors import ApiError


@dataclass
class Turn:
    """What one request read and wrote, besides the text."""

    memories: List[Tuple[object, float]] = field(default_factory=list)  # (Entry, score) shown to the model
    learned: Optional[str] = None  # what the bank did with the message ('added', 'corrected', ...)
    notes: List[str] = field(default_factory=list)


class StopText:
    """Cuts a stream of text at the first of ``stops``, holding back just enough text
    that a stop sequence split across pieces is still found."""

    def __init__(self, stops: List[str]):
        self.stops, self.buf = stops, ""
        self.hold = max((len(s) for s in stops), default=1) - 1

    def feed(self, text: str) -> Tuple[str, bool]:
        """``(text safe to send, whether a stop sequence was hit)``."""
        self.buf += text
        hits = [i for i in (self.buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.buf = self.buf[:min(hits)], ""
            return out, True
        cut = max(0, len(self.buf) - self.hold)
        out, self.buf = self.buf[:cut], self.buf[cut:]
        return out, False

    def flush(self) -> str:
        out, self.buf = self.buf, ""
        return out


@dataclass
class TokenLogprob:
    """The sampled token's text and log-probability, and the ``top`` most likely tokens."""

    token: str
    logprob: float
    top: List[Tuple[str, float]]


def with_logprobs(gen: Iterator, tokenizer, top: Optional[int]) -> Iterator:
    """``gen``'s responses with ``logprobs`` replaced by a :class:`TokenLogprob` (``top``
    given) or None, computed here, on the worker thread, so that no (V,) array leaves it.
    The log-probabilities are those the sampler saw (after the copy bias, when memories
    were shown)."""
    for r in gen:
        info = None
        if top is not None:
            lp = np.asarray(r.logprobs, np.float32).reshape(-1)
            best = np.argsort(-lp, kind="stable")[:top] if top else []
            info = TokenLogprob(tokenizer.decode([r.token]), float(lp[r.token]),
                                [(tokenizer.decode([int(i)]), float(lp[i])) for i in best])
        yield replace(r, logprobs=info)


def _split(messages) -> Tuple[Optional[str], List[Tuple[str, str]], str]:
    """``(system text, earlier (user, assistant) pairs, last user message)``."""
    system = "\n\n".join(m.text() for m in messages if m.role in ("system", "developer")) or None
    turns = [m for m in messages if m.role in ("user", "assistant")]
    if not turns or turns[-1].role != "user":
        raise ApiError(400, "with memory on, the last message must be from the user; end 'messages' with a "
                            "user message or send \"memory\": false.", param="messages", code="invalid_messages")
    pairs = [(u.text(), a.text()) for u, a in zip(turns[:-1], turns[1:]) if u.role == "user" and a.role == "assistant"]
    return system, pairs, turns[-1].text()


def chat_stream(model, tokenizer, bank, messages, *, user: str, memory: bool, max_tokens: int,
                sampling: dict, top_logprobs: Optional[int] = None, constraint=None,
                gen_model=None) -> Tuple[Iterator, Turn]:
    """``gen_model``: what the reply is generated on (the engine's per-stream model, so that its
    decode steps can be batched), ``model`` by default; the memory bank's work uses ``model``."""
    if memory:
        system, pairs, message = _split(messages)
        a = Assistant(model, tokenizer, bank, user=user, max_tokens=max_tokens, system=system)
        a.history = pairs
        ids, memories, learned = a.prepare(message)
        procs = a.processors(ids, memories)
        turn = Turn(memories, learned, list(a.notes))
        reader = a.turn_reader()
    else:
        msgs = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in messages]
        if getattr(tokenizer, "has_chat_template", False):
            ids = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
            ids = list(ids)
        else:
            ids = build_prompt(tokenizer, "\n\n".join(f"{m['role']}: {m['content']}" for m in msgs) + "\n\nassistant:",
                               use_chat_template=False)
        procs, turn, reader = [], Turn(), None
    if constraint is not None:  # last, so that nothing lifts a forbidden token back
        procs = list(procs) + [constraint]
    gm = gen_model if gen_model is not None else model
    gen = stream_generate(gm, tokenizer, ids, max_tokens=max_tokens, logits_processors=procs, **sampling)
    if reader is not None:  # a turn that shows memories: the reader adapter, as in the chat
        gen = with_reader(gen, reader)
        if gm is not model:
            gm.reader = reader  # the engine batches this stream's decode steps with the reader on
    return with_logprobs(gen, tokenizer, top_logprobs), turn


def with_reader(gen: Iterator, reader) -> Iterator:
    """``gen``'s items, each computed with ``reader`` switched on and off again after it: the
    worker thread interleaves streams, and only this one's steps may see the adapter."""
    while True:
        with reader.active():
            try:
                item = next(gen)
            except StopIteration:
                return
        yield item


def completion_stream(model, tokenizer, prompt, *, max_tokens: int, sampling: dict,
                      top_logprobs: Optional[int] = None, constraint=None) -> Tuple[Iterator, Turn]:
    procs = [constraint] if constraint is not None else None
    gen = stream_generate(model, tokenizer, prompt, max_tokens=max_tokens, logits_processors=procs, **sampling)
    return with_logprobs(gen, tokenizer, top_logprobs), Turn()
