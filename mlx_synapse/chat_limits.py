"""Bounds for a chat turn: the model's context, long messages cut to a token budget, and
long pastes split into memories of bounded size.

A 50,000-character line stored as one memory made every later turn that retrieved it a
10,000-token prompt; shown whole, it also ran past a 135M model's context. So the
assistant (:mod:`mlx_synapse.assistant`) keeps ``prompt + max reply <= context``:
memories shown are held to a token budget, the user's turn is cut to what is left (its
end kept: a question usually follows a paste), and a long message is stored as
sentence-sized chunks, each a memory.
"""

from __future__ import annotations

import re
from typing import Callable, List, Optional

__all__ = ["model_context", "split_chunks", "truncate_tokens"]

# Sentence ends (., !, ? or a newline), keeping the punctuation with its sentence.
_SENTENCE = re.compile(r"[^.!?\n]*(?:[.!?]+|\n+|$)")


def model_context(model) -> Optional[int]:
    """The model's context length in tokens (``max_position_embeddings`` of its config),
    or None when it does not say."""
    for src in (getattr(model, "config", None), getattr(model, "args", None)):
        n = src.get("max_position_embeddings") if isinstance(src, dict) else getattr(src, "max_position_embeddings",
                                                                                      None)
        if isinstance(n, int) and n > 0:
            return n
    return None


def split_chunks(text: str, max_chars: int) -> List[str]:
    """``text`` as chunks of at most ``max_chars`` characters, cut after sentence ends
    where it can (whole sentences packed together), else at a space, else anywhere.

    Args:
        text: any text.
        max_chars: the most characters a chunk has (>= 1).
    Returns:
        The non-blank chunks, stripped, in order; ``[text.strip()]`` when it fits.
    """
    if max_chars < 1:
        raise ValueError(f"[chat_limits] max_chars must be >= 1 but got {max_chars}.")
    text = text.strip()
    if len(text) <= max_chars:
        return [text] if text else []
    pieces: List[str] = []
    for s in _SENTENCE.findall(text):
        s = " ".join(s.split())
        while len(s) > max_chars:  # one long sentence: cut at the last space that fits
            cut = s.rfind(" ", 0, max_chars + 1)
            cut = cut if cut > 0 else max_chars
            pieces.append(s[:cut].strip())
            s = s[cut:].strip()
        if s:
            pieces.append(s)
    chunks: List[str] = []
    for p in pieces:
        if chunks and len(chunks[-1]) + 1 + len(p) <= max_chars:
            chunks[-1] += " " + p
        else:
            chunks.append(p)
    return chunks


def truncate_tokens(text: str, max_tokens: int, count: Callable[[str], int], keep: str = "end") -> str:
    """The longest end (``keep="end"``) or start (``"start"``) of ``text`` that ``count``
    says is at most ``max_tokens`` tokens, cut at a space where possible; ``""`` for 0."""
    if max_tokens <= 0:
        return ""
    n = count(text)
    if n <= max_tokens:
        return text
    chars = int(len(text) * max_tokens / n)
    while chars > 0:
        part = text[len(text) - chars:] if keep == "end" else text[:chars]
        space = part.find(" ") if keep == "end" else part.rfind(" ")
        if 0 < space < len(part) - 1 and len(part) > 40:
            part = part[space + 1:] if keep == "end" else part[:space]
        if count(part) <= max_tokens:
            return part
        chars = int(chars * 0.9)
    return ""
