"""The systems the conversation-memory suite compares, behind one small protocol.

A system gets a user's messages in conversation order (``ingest``) and is then asked
questions, each as the first turn of a fresh session (``answer``). Two are built in:

* ``assistant``: :class:`mlx_synapse.assistant.Assistant` as a user meets it: every
  message goes through its learning entry point (``learn``) in order; each question
  through ``stream_respond`` after ``reset()``.
* ``plain_rag``: the baseline. Every message stored verbatim (no gate, no merging)
  with its date; the single closest memory by cosine put in the user turn as
  ``Context: <message> (said on <date>)``; greedy generation, nothing else.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Protocol, Sequence

from .generator import Message

__all__ = ["Answer", "System", "AssistantSystem", "PlainRAG", "SYSTEMS", "make_system"]


@dataclass
class Answer:
    text: str
    ttft_s: float  # question in -> first piece of the reply out (retrieval and prompt included)
    shown: List[str] = field(default_factory=list)  # the memories put in the prompt, best first
    prompt_tokens: int = 0


class System(Protocol):
    name: str

    def ingest(self, user: str, messages: Sequence[Message]) -> None: ...

    def answer(self, user: str, question: str) -> Answer: ...


def _day(ts: float) -> str:
    d = dt.datetime.fromtimestamp(ts, dt.timezone.utc)
    return f"{d.day} {d.strftime('%B %Y')}"


class AssistantSystem:
    """The current :class:`~mlx_synapse.assistant.Assistant` with its defaults."""

    name = "assistant"

    def __init__(self, model, tokenizer, bank, max_tokens: int = 24, **opts):
        self.model, self.tokenizer, self.bank, self.max_tokens, self.opts = model, tokenizer, bank, max_tokens, opts
        self._assistants: Dict[str, object] = {}

    def _for(self, user: str):
        from mlx_synapse.assistant import Assistant

        if user not in self._assistants:
            self._assistants[user] = Assistant(self.model, self.tokenizer, self.bank, user=user,
                                               max_tokens=self.max_tokens, **self.opts)
        return self._assistants[user]

    def ingest(self, user: str, messages: Sequence[Message]) -> None:
        a = self._for(user)
        for m in messages:
            a.learn(m.text, ts=m.ts)  # the message's time: facts are dated with it

    def answer(self, user: str, question: str) -> Answer:
        a = self._for(user)
        a.reset()
        t0, ttft, text = time.perf_counter(), None, ""
        for piece in a.stream_respond(question):
            if ttft is None:
                ttft = time.perf_counter() - t0
            text += piece
        last = a.last
        return Answer(last.text if last else text.strip(), ttft or 0.0,
                      [e.text for e, _ in (last.memories if last else [])], last.prompt_tokens if last else 0)


class PlainRAG:
    """Baseline: every message verbatim, top-1 by cosine in the user turn, greedy."""

    name = "plain_rag"

    def __init__(self, model, tokenizer, bank, max_tokens: int = 24):
        self.model, self.tokenizer, self.bank, self.max_tokens = model, tokenizer, bank, max_tokens

    def ingest(self, user: str, messages: Sequence[Message]) -> None:
        self.bank.add_many([dict(text=m.text, force=True, source="plain_rag", metadata={"ts": m.ts, "id": m.id})
                            for m in messages], user=user)

    def prompt(self, user: str, question: str) -> tuple:
        hits = self.bank.search(question, 1, user=user, touch=False)
        if hits:
            e = hits[0][0]
            ts = (e.metadata or {}).get("ts", e.created)
            content = f"Context: {e.text} (said on {_day(ts)})\n\nQuestion: {question}"
        else:
            content = question
        tok = self.tokenizer
        if getattr(tok, "has_chat_template", False) or getattr(tok, "chat_template", None):
            ids = tok.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                          tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
        else:  # no chat template: the plain form the Assistant uses too
            ids = tok.encode(f"user: {content}\n\nassistant:")
        return list(ids), [e.text for e, _ in hits]

    def answer(self, user: str, question: str) -> Answer:
        from mlx_synapse.generate import stream_generate

        t0 = time.perf_counter()
        ids, shown = self.prompt(user, question)
        text, ttft = "", None
        for r in stream_generate(self.model, self.tokenizer, ids, max_tokens=self.max_tokens, temp=0.0):
            if ttft is None:
                ttft = time.perf_counter() - t0
            text += r.text
        return Answer(text.strip(), ttft or 0.0, shown, len(ids))


SYSTEMS = {"assistant": AssistantSystem, "plain_rag": PlainRAG}


def make_system(name: str, model, tokenizer, bank, max_tokens: int = 24) -> System:
    """A system by name (:data:`SYSTEMS`), over its own ``bank``."""
    if name not in SYSTEMS:
        raise ValueError(f"[conversation] unknown system {name!r}; choose from {', '.join(SYSTEMS)}.")
    return SYSTEMS[name](model, tokenizer, bank, max_tokens=max_tokens)
