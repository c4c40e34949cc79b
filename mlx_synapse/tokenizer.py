"""Tokenizer loading: mlx-lm's TokenizerWrapper (chat templates, streaming detokenizers).

Where MLX (and so mlx-lm) cannot be imported — the NumPy backend on a
Pi-class machine — a small wrapper over the same Hugging Face tokenizer with
a plain incremental detokenizer stands in.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Optional, Union


class _IncrementalDetokenizer:
    """Decode the whole sequence each step and emit the new suffix (no mlx-lm needed)."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self.reset()

    def reset(self):
        self.tokens: list = []
        self.text = ""
        self._emitted = 0

    def add_token(self, token: int):
        self.tokens.append(token)
        text = self._tokenizer.decode(self.tokens)
        # Hold back a trailing partial UTF-8 sequence until it completes.
        if not text.endswith("\ufffd"):
            self.text = text

    def finalize(self):
        self.text = self._tokenizer.decode(self.tokens)

    @property
    def last_segment(self) -> str:
        seg = self.text[self._emitted :]
        self._emitted = len(self.text)
        return seg


class _FallbackTokenizerWrapper:
    """The parts of mlx-lm's TokenizerWrapper that generation uses."""

    def __init__(self, tokenizer, eos_token_ids: Iterable[int] = ()):
        self._tokenizer = tokenizer
        self._detokenizer = _IncrementalDetokenizer(tokenizer)
        self.eos_token_ids = set(eos_token_ids)
        if tokenizer.eos_token_id is not None:
            self.eos_token_ids.add(tokenizer.eos_token_id)
        self.has_chat_template = tokenizer.chat_template is not None

    @property
    def detokenizer(self):
        self._detokenizer.reset()
        return self._detokenizer

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


def load_tokenizer(model_path: Union[str, Path], eos_token_ids: Optional[object] = None):
    """The tokenizer of a model directory, wrapped for streaming generation.

    Args:
        model_path: directory with tokenizer.json / tokenizer_config.json.
        eos_token_ids: extra end-of-sequence ids (an int or a list), e.g. from config.json.
    """
    model_path = Path(model_path)
    if isinstance(eos_token_ids, int):
        eos_token_ids = [eos_token_ids]
    if not any((model_path / f).exists() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
        raise FileNotFoundError(
            f"[tokenizer] no tokenizer files in {model_path}; copy tokenizer.json and "
            "tokenizer_config.json from the original checkpoint (convert does this)."
        )
    try:
        from mlx_lm import tokenizer_utils
    except ImportError:
        tokenizer_utils = None
    fast = _plain_fast_tokenizer(model_path)
    if tokenizer_utils is None:
        if fast is None:
            from transformers import AutoTokenizer

            fast = AutoTokenizer.from_pretrained(model_path)
        return _FallbackTokenizerWrapper(fast, eos_token_ids or ())
    if fast is None:
        return tokenizer_utils.load(model_path, eos_token_ids=eos_token_ids)
    # The same wrapper mlx-lm's load builds, minus AutoTokenizer's class resolution
    # (~1.5 s of start-up): byte-level BPE gets mlx-lm's BPE streaming detokenizer.
    decoder = json.loads((model_path / "tokenizer.json").read_text(encoding="utf-8")).get("decoder") or {}
    detok = (tokenizer_utils.BPEStreamingDetokenizer if decoder.get("type") == "ByteLevel"
             else tokenizer_utils.NaiveStreamingDetokenizer)
    return tokenizer_utils.TokenizerWrapper(fast, detok, eos_token_ids=eos_token_ids)


def _plain_fast_tokenizer(model_path: Path):
    """``PreTrainedTokenizerFast`` for directories whose tokenizer_config names exactly that
    class (what GGUF import writes); None for anything that needs AutoTokenizer."""
    config_file = model_path / "tokenizer_config.json"
    if not (model_path / "tokenizer.json").is_file() or not config_file.is_file():
        return None
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"[tokenizer] {config_file} is not valid JSON ({e}); re-convert the model.") from e
    if config.get("tokenizer_class") != "PreTrainedTokenizerFast":
        return None
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(model_path)
