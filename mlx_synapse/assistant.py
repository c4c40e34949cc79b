"""A chat that remembers: a frozen model plus the user's memory bank.

``Assistant(model, tokenizer, memory, user=...)``:

* ``respond(message)`` retrieves the user's memories closest to the message (dense
  search re-ranked by word overlap, ``lexical``; only those scoring ``min_score`` or
  more and within ``margin`` of the best one, at most ``k``: a small model is easily
  distracted by a neighbouring memory), puts them before the question as
  ``Context: ...`` after two worked examples of that form, keeps the session's
  earlier turns up to ``history_tokens``, and generates with a bias toward repeating
  the shown memories' words exactly (:mod:`mlx_synapse.copy_bias`). The reply says
  which memories were used, with their scores.
* ``learn(message)`` decides what to keep: questions are not stored; corrections
  ("actually, it's green": the old value in the memory the last reply used is
  replaced, :func:`replace_value`) and restatements of a known fact with a new value
  ("my favorite color is green", :func:`restates`) rewrite the old memory instead of
  adding a contradiction; other first-person statements are stored; anything else
  goes through the bank's surprise gate. ``respond`` calls it on every message.
* ``remember(text)`` and ``forget(query)`` are explicit.

Why this form (SmolLM2-135M-Instruct, greedy): 120 questions about 60 fictional facts
were answered right 95% of the time with the two worked examples, 81% with the bare
``Context:`` form in the user turn, 64% with the facts in a system block, 0% without
the memory; the relevant memory placed last did best. With 300 facts stored, showing
three memories let the model answer from a neighbouring one (64.5%); showing the
best alone after re-ranking, plus the copy bias, is what
``benchmarks/personalization.py`` measures now (see the README).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Tuple

import numpy as np

from .copy_bias import make_copy_bias
from .generate import stream_generate
from .memory.bank import Entry, MemoryBank
from .memory.lexical import STOPWORDS, terms

__all__ = ["Assistant", "Reply", "EXAMPLES", "N_EXAMPLES", "is_question", "replace_value", "restates"]

# Worked examples (fictional, not the user's): the two whose fact is closest to the best
# memory shown go before the question, the closer one last. A small model copies the
# nearest example's form, so one shaped like the memory ("I was born in ...") teaches it
# to answer "You were born in ..." instead of repeating an unrelated example.
EXAMPLES = (
    ("My favorite fruit is persimmon.", "What's my favourite fruit?", "Your favorite fruit is persimmon."),
    ("My cousin's name is Evander.", "What is my cousin called?", "Your cousin's name is Evander."),
    ("I was born in Port Ellery.", "Where was I born?", "You were born in Port Ellery."),
    ("We are planning to visit Carrow Bay in the spring.", "Where are we going this spring?",
     "You are going to Carrow Bay in the spring."),
    ("My bike lock code is 5821.", "What's the code for my bike lock?", "The code for your bike lock is 5821."),
    ("My nephew started school on 4 September 2019.", "When did my nephew start school?",
     "Your nephew started school on 4 September 2019."),
    ("My uncle works as a glassblower.", "What does my uncle do for a living?", "Your uncle works as a glassblower."),
    ("My aunt's cat is named Biscuit.", "What's the name of my aunt's cat?", "Your aunt's cat is named Biscuit."),
)
N_EXAMPLES = 2

_QUESTION_START = re.compile(
    r"^\s*(what|what's|whats|who|who's|whom|whose|where|where's|when|when's|why|how|which|do|does|did|"
    r"is|are|am|was|were|can|could|should|would|will|have|has|tell me|remind me)\b",
    re.I,
)
_FIRST_PERSON = re.compile(r"\b(i|i'm|im|i've|i'd|i'll|my|me|mine|myself|we|our|ours|us)\b", re.I)
_CORRECTION = re.compile(
    r"^\s*(actually|no|nope|sorry|correction|wait|oops|not quite|that's wrong|that is wrong)\b[\s,:;.!-]*(.*)$",
    re.I | re.S,
)
_VALUE = re.compile(r"^(?:it's|it is|its|it was|that's|that is|they're|they are|he's|he is|she's|she is)\s+(.+)$",
                    re.I | re.S)
_NOT_CLAUSE = re.compile(r"[,;]?\s*(?:not|rather than|instead of)\b.*$", re.I | re.S)
# Words after which a stated value starts ("... is X", "... lives in X"): a statement that
# repeats a stored one up to such a word and differs after it is a new value for it.
_VALUE_AFTER = frozenset("is are was were am called named in on at".split())
_EDGE = ".,!?;:\"'()[]"
# "No, it's fine." is not a correction.
_NOT_VALUES = frozenset("fine ok okay alright all right good great nothing nevermind whatever correct true "
                        "wrong false then thanks no problem not important".split())


def is_question(text: str) -> bool:
    t = text.strip()
    return t.endswith("?") or bool(_QUESTION_START.match(t))


def _strip_value(v: str) -> str:
    v = _NOT_CLAUSE.sub("", v.strip())
    return v.strip().rstrip(".!").strip()


def _norm(w: str) -> str:
    return w.strip(_EDGE).lower()


def _shape(w: str) -> str:
    w = w.strip(_EDGE)
    return "9" if any(c.isdigit() for c in w) else "A" if w[:1].isupper() else "a"


def replace_value(memory: str, value: str, reply: str = "", question: str = "") -> Tuple[Optional[str], float]:
    """``memory`` with its value replaced by ``value`` (a correction: "actually, it's X"),
    and how sure that is; ``(None, 0)`` when no span looks like the value.

    The old value is the stretch of ``memory`` that looks most like ``value`` (same
    pattern of numbers, capitalised and lower-case words), that the last ``reply``
    repeated, and that shares no content word with the ``question`` asked (the question
    names the subject, not the value); later stretches win ties. It never starts or
    ends on a stopword ("is", "the", "my"), so the sentence around it is kept."""
    words = memory.split()
    new = value.split()
    if not words or not new:
        return None, 0.0
    said = {_norm(w) for w in reply.split()}
    asked = terms(question)
    article = new[0].lower() in ("the", "a", "an") and len(new) > 1
    bare = new[1:] if article else new  # spans never start with "the"; compare without it
    want = [_shape(w) for w in bare]
    best, best_score = None, 0.0
    for i in range(len(words)):
        for j in range(i + 1, min(len(words), i + max(6, len(bare) + 3)) + 1):
            span = words[i:j]
            core = [_norm(w) for w in span]
            if not core[0] or not core[-1] or core[0] in STOPWORDS or core[-1] in STOPWORDS:
                continue
            if any(t in asked for t in terms(" ".join(core))):
                continue
            score = 0.0
            if [_shape(w) for w in span] == want:
                score += 4.0
            if all(c in said for c in core):
                score += 2.0
            if len(span) == len(bare):
                score += 1.0
            score += 0.5 * j / len(words) - 0.01 * len(span)  # later, then shorter, wins a tie
            if score >= 2.0 and score > best_score:
                best, best_score = (i, j), score
    if best is None:
        return None, 0.0
    i, j = best
    if article and i > 0 and words[i - 1].lower() == new[0].lower():
        i -= 1  # "The Copper Kettles" replaces "The Gloaming Hares", not "Gloaming Hares"
    tail = words[j - 1][len(words[j - 1].rstrip(_EDGE)):]  # keep the sentence's punctuation
    return " ".join(words[:i] + [" ".join(new) + tail] + words[j:]), best_score


def restates(old: str, new: str) -> bool:
    """True when ``new`` says the same thing as ``old`` with another value: the words
    agree up to a value word ("is", "called", "in", ...), differ in one stretch after
    it, and agree again to the end ("My favorite color is blue." / "... is green.")."""
    a, b = [_norm(w) for w in old.split()], [_norm(w) for w in new.split()]
    p = 0
    while p < min(len(a), len(b)) and a[p] == b[p]:
        p += 1
    q = 0
    while q < min(len(a), len(b)) - p and a[-1 - q] == b[-1 - q]:
        q += 1
    mid_a, mid_b = a[p:len(a) - q], b[p:len(b) - q]
    if p < 2 or not mid_a or not mid_b or a[p - 1] not in _VALUE_AFTER:
        return False
    return not ({"not", "no", "never"} & set(mid_a + mid_b)) and len(mid_a) <= 6 and len(mid_b) <= 6


@dataclass
class Reply:
    """What ``respond`` produced: the text, the memories used (``(Entry, score)``, best
    first), what ``learn`` did with the message, and generation statistics."""

    text: str
    memories: List[Tuple[Entry, float]] = field(default_factory=list)
    learned: Optional[str] = None  # 'added' | 'refreshed' | 'corrected' | 'skipped' | None
    prompt_tokens: int = 0
    generation_tokens: int = 0
    generation_tps: float = 0.0


class Assistant:
    """A frozen model that answers from the user's memories (see the module docstring).

    Args:
        model, tokenizer: from :func:`mlx_synapse.load` (either backend).
        memory: the user's :class:`MemoryBank`.
        user: whose memories are read and written.
        k, min_score, margin: at most ``k`` memories with cosine >= ``min_score`` and
            within ``margin`` of the best are put in the prompt.
        history_tokens: earlier turns of this session kept in the prompt (newest first).
        max_tokens, temp, top_p: generation settings.
        system: an optional system message.
        auto_learn: ``respond`` passes each message to :meth:`learn`.
    """

    def __init__(self, model, tokenizer, memory: MemoryBank, *, user: str, k: int = 3,
                 min_score: float = 0.35, margin: float = 0.03, lexical: float = 0.2, copy_bonus: float = 6.0,
                 history_tokens: int = 1024, max_tokens: int = 128, temp: float = 0.0, top_p: float = 1.0,
                 system: Optional[str] = None, auto_learn: bool = True):
        if k < 1 or history_tokens < 0 or max_tokens < 1 or margin < 0 or lexical < 0 or copy_bonus < 0:
            raise ValueError("[assistant] need k >= 1, history_tokens >= 0, max_tokens >= 1 and margin, "
                             "lexical, copy_bonus >= 0.")
        self.model, self.tokenizer, self.memory, self.user = model, tokenizer, memory, user
        self.k, self.min_score, self.margin, self.lexical, self.copy_bonus = k, min_score, margin, lexical, copy_bonus
        self.history_tokens, self.max_tokens, self.temp, self.top_p = history_tokens, max_tokens, temp, top_p
        self.system, self.auto_learn = system, auto_learn
        self.history: List[Tuple[str, str]] = []  # (user message, reply) of this session
        self._example_vecs: Optional[np.ndarray] = None
        self.last: Optional[Reply] = None

    # ------------------------------------------------------------------ memory

    def retrieve(self, message: str) -> List[Tuple[Entry, float]]:
        hits = self.memory.search(message, self.k, user=self.user, min_score=self.min_score,
                                  lexical=self.lexical)
        if hits:
            best = hits[0][1]
            hits = [(e, s) for e, s in hits if s >= best - self.margin]
        return hits

    def remember(self, text: str) -> Optional[int]:
        """Store ``text`` as a memory, past the surprise gate."""
        return self.memory.add(text, user=self.user, source="chat:remember", force=True)

    def forget(self, query: str, min_score: float = 0.5) -> List[Entry]:
        """Delete the memories that match ``query`` (cosine >= ``min_score``); returns them."""
        hits = [e for e, s in self.memory.search(query, 10, user=self.user, min_score=min_score, touch=False)]
        if hits:
            self.memory.forget([e.id for e in hits], user=self.user)
        return hits

    def learn(self, message: str) -> Optional[str]:
        """Store what ``message`` tells about the user; returns what was done (or None)."""
        text = message.strip()
        if not text or is_question(text):
            return None
        m = _CORRECTION.match(text)
        if m and self.last is not None and self.last.memories:
            rest = m.group(2).strip()
            v = _VALUE.match(rest)
            value = _strip_value(v.group(1)) if v else ""
            if value and not set(_norm(w) for w in value.split()) <= _NOT_VALUES:
                fixed = self._correct(value)
                if fixed:
                    return fixed
            elif rest and _FIRST_PERSON.search(rest):
                text = rest  # "No, my sister lives in Lyon.": stored or replaced below like any statement
        if not _FIRST_PERSON.search(text):
            return self.memory.write(text, user=self.user, source="chat").action
        old = self._same_fact(text)  # a known fact with a new value replaces the old one
        if old is not None:
            self.memory.update(old.id, user=self.user, text=text)
            return "corrected"
        return self.memory.write(text, user=self.user, source="chat", force=True).action

    def _same_fact(self, text: str) -> Optional[Entry]:
        for e, _ in self.memory.search(text, 3, user=self.user, min_score=0.5, touch=False):
            if restates(e.text, text):
                return e
        return None

    def _correct(self, value: str) -> Optional[str]:
        """Put ``value`` in place of the old value in the memory the last reply used."""
        question = self.history[-1][0] if self.history else ""
        best = None
        for e, _ in self.last.memories:
            new, sure = replace_value(e.text, value, self.last.text, question)
            if new is not None and (best is None or sure > best[0]):
                best = (sure, e, new)
        if best is None:
            return None
        _, e, new = best
        if new != e.text:
            self.memory.update(e.id, user=self.user, text=new)
        return "corrected"

    # ------------------------------------------------------------------ prompting

    def _count(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    def build_messages(self, message: str, memories: List[Tuple[Entry, float]]) -> List[dict]:
        msgs: List[dict] = [{"role": "system", "content": self.system}] if self.system else []
        kept, used = [], 0
        for u, a in reversed(self.history):
            cost = self._count(u) + self._count(a)
            if used + cost > self.history_tokens:
                break
            kept.append((u, a))
            used += cost
        for u, a in reversed(kept):
            msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
        if memories:  # the worked examples go right before the question: the model copies the nearest form
            for fact, q, a in self.examples_for(memories[0][0].text):
                msgs += [{"role": "user", "content": f"Context: {fact}\n\nQuestion: {q}"},
                         {"role": "assistant", "content": a}]
            context = " ".join(e.text for e, _ in reversed(memories))  # the best one nearest the question
            msgs.append({"role": "user", "content": f"Context: {context}\n\nQuestion: {message}"})
        else:
            msgs.append({"role": "user", "content": message})
        return msgs

    def examples_for(self, memory: str) -> List[Tuple[str, str, str]]:
        """The ``N_EXAMPLES`` worked examples whose fact is closest to ``memory`` (by the
        bank's encoder), least close first; the first ones of ``EXAMPLES`` when the
        encoder cannot be used."""
        enc = getattr(self.memory, "encoder", None)
        try:
            if self._example_vecs is None:
                v = np.asarray(enc([f for f, _, _ in EXAMPLES]), np.float32)
                self._example_vecs = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
            m = np.asarray(enc([memory]), np.float32)[0]
            order = np.argsort(-(self._example_vecs @ m), kind="stable")[:N_EXAMPLES]
        except (TypeError, ValueError, AttributeError):  # no usable encoder: the fixed examples
            order = np.arange(N_EXAMPLES)
        return [EXAMPLES[i] for i in order[::-1]]

    def _prompt_ids(self, msgs: List[dict]) -> list:
        tok = self.tokenizer
        if getattr(tok, "has_chat_template", False) or getattr(tok, "chat_template", None):
            ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
            return list(ids)
        text = "\n\n".join(f"{m['role']}: {m['content']}" for m in msgs) + "\n\nassistant:"
        return list(tok.encode(text))

    # ------------------------------------------------------------------ chatting

    def prepare(self, message: str) -> Tuple[list, List[Tuple[Entry, float]], Optional[str]]:
        """Retrieve, learn (if ``auto_learn``) and build the prompt for ``message``:
        ``(prompt token ids, memories used, what learn did)``. ``stream_respond`` and
        ``python -m mlx_synapse.generate --memory`` both go through here."""
        if not isinstance(message, str) or not message.strip():
            raise ValueError("[assistant] the message is empty.")
        memories = self.retrieve(message)
        learned = self.learn(message) if self.auto_learn else None
        return self._prompt_ids(self.build_messages(message, memories)), memories, learned

    def processors(self, ids: list, memories: List[Tuple[Entry, float]]) -> list:
        """Logits processors for the reply to prompt ``ids``: the copy bias toward the
        memories shown (:mod:`mlx_synapse.copy_bias`), when there are any."""
        if not memories or not self.copy_bonus:
            return []
        sources = [self.tokenizer.encode(" " + e.text) for e, _ in memories]
        return [make_copy_bias(sources, len(ids), self.copy_bonus)]

    def stream_respond(self, message: str) -> Iterator[str]:
        """Yield the reply piece by piece; ``self.last`` holds the whole :class:`Reply` after."""
        ids, memories, learned = self.prepare(message)
        text, last = "", None
        for last in stream_generate(self.model, self.tokenizer, ids, max_tokens=self.max_tokens,
                                    temp=self.temp, top_p=self.top_p,
                                    logits_processors=self.processors(ids, memories)):
            text += last.text
            yield last.text
        reply = Reply(text.strip(), memories, learned, len(ids),
                      last.generation_tokens if last else 0, last.generation_tps if last else 0.0)
        self.history.append((message, reply.text))
        self.last = reply

    def respond(self, message: str) -> Reply:
        for _ in self.stream_respond(message):
            pass
        return self.last  # type: ignore[return-value]

    def reset(self) -> None:
        """Forget this session's turns (memories stay)."""
        self.history.clear()
        self.last = None
