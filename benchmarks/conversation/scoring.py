"""Scoring replies of the conversation-memory suite (no model judges; plain string rules).

* An answerable question is **right** when the normalised reply contains, as whole
  words, an accepted spelling of every gold item and none of the ``forbidden`` values
  (the old value of a change or correction: naming it is wrong even beside the new one).
* It is a **wrong abstention** when the reply says it does not know (:data:`ABSTAIN`)
  and names no gold item.
* An abstention question is **right** when the reply says it does not know and names
  none of the values the user ever stated (no invented or borrowed value).

Rates carry a Wilson 95% interval (:func:`wilson`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Iterable, Sequence, Tuple

from .generator import Question

__all__ = ["ABSTAIN", "Score", "normalize", "contains", "says_unknown", "score", "wilson"]

# A reply "says it doesn't know" when it matches one of these (after normalize()).
ABSTAIN: Tuple[str, ...] = (
    r"\b(i )?(do not|don't|dont) (know|have|recall|remember|see)\b",
    r"\b(i am|i'm|im) not (sure|aware|certain)\b",
    r"\bno (idea|information|record|memory|mention|details?|data)\b",
    r"\b(you )?(have not|haven't|havent|did not|didn't|didnt|never) (told|tell|mentioned|mention|said|say|shared|share)\b",
    r"\b(not|never) (been )?(mentioned|provided|specified|stated|told|given|shared)\b",
    r"\b(can not|cannot|can't|cant|unable to|not able to) (know|tell|say|find|recall|remember|determine|answer|access)\b",
    r"\b(unknown|not known)\b",
    r"\bi (have|has) no (way|access)\b",
)
_ABSTAIN = [re.compile(p) for p in ABSTAIN]
_PUNCT = re.compile(r"[^\w\s'-]+")


def normalize(text: str) -> str:
    """Lower-case, curly quotes straightened, punctuation (but ' and -) to spaces, one space."""
    t = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    return " ".join(_PUNCT.sub(" ", t).split())


def contains(reply: str, spellings: Iterable[str]) -> bool:
    """Whether ``reply`` has one of ``spellings`` as whole words (after :func:`normalize`)."""
    padded = f" {normalize(reply)} "
    for s in spellings:
        n = normalize(s)
        if n and re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", padded):
            return True
    return False


def says_unknown(reply: str) -> bool:
    t = normalize(reply)
    return any(p.search(t) for p in _ABSTAIN)


@dataclass(frozen=True)
class Score:
    right: bool
    abstained: bool  # said it does not know
    old_value: bool  # named a forbidden (old) value


def score(q: Question, reply: str, user_values: Sequence[str] = ()) -> Score:
    """Score ``reply`` to ``q``; ``user_values``: every value the user stated (abstention)."""
    unknown = says_unknown(reply)
    if not q.answerable:
        named = any(contains(reply, [v]) for v in user_values)
        return Score(unknown and not named, unknown, False)
    got = [contains(reply, item) for item in q.gold]
    old = bool(q.forbidden) and contains(reply, q.forbidden)
    return Score(all(got) and not old, unknown and not any(got), old)


def wilson(k: int, n: int, z: float = 1.96) -> Tuple[float, float]:
    """Wilson score interval of ``k`` successes in ``n`` (95% by default); (nan, nan) when n = 0."""
    if n <= 0:
        return float("nan"), float("nan")
    p = k / n
    den = 1 + z * z / n
    mid = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, mid - half), min(1.0, mid + half)
