"""What a chat message says about the user: is it a question, a correction ("actually,
it's green"), or a known fact restated with a new value. Plain-text heuristics, no model;
:class:`mlx_synapse.assistant.Assistant` decides what to store with them."""

from __future__ import annotations

import re
from typing import Optional, Tuple

from .memory.lexical import STOPWORDS, terms

__all__ = ["is_question", "replace_value", "restates", "plain"]

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


def plain(text: str) -> str:
    """``text`` with case, spacing and final punctuation ignored (for exact matches)."""
    return " ".join(text.split()).rstrip(".!?").strip().casefold()


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
