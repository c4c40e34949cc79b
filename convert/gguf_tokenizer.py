"""Build a Hugging Face ``tokenizer.json`` from GGUF tokenizer metadata.

Supports llama.cpp's ``gpt2`` tokenizer model (byte-level BPE, used by
SmolLM, Llama 3, Qwen2, ...), whose pre-tokenizer follows
``tokenizer.ggml.pre`` so ids match the original Hugging Face tokenizer, and
its ``llama`` model (SentencePiece BPE with byte fallback: Llama 2, Mistral,
TinyLlama), rebuilt as a ``tokenizers`` BPE with merges ranked by score.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Optional, Union

# llama.cpp token types: 1 normal, 2 unknown, 3 control (special), 4 user-defined
# (added, not special), 5 unused, 6 byte (SentencePiece byte fallback, "<0x0A>").
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED = 1, 2, 3, 4
SUPPORTED_TOKENIZER_MODELS = ("gpt2", "llama")

# Splitting regexes of the original tokenizers (public tokenizer.json files).
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_DIGITS_THEN_GPT2 = ("smollm", "starcoder", "refact")
_GPT2 = ("gpt2", "default", "gpt-2")
SUPPORTED_PRE = _DIGITS_THEN_GPT2 + _GPT2 + ("llama-bpe", "llama3", "qwen2")


def _pre_tokenizer(pre: Optional[str]):
    """Normalizer, pre-tokenizer and BPE ``ignore_merges`` for a ``tokenizer.ggml.pre``."""
    from tokenizers import Regex, normalizers, pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _DIGITS_THEN_GPT2:
        # StarCoder-family tokenizers isolate every digit before the GPT-2 split.
        digits = pre_tokenizers.Digits(individual_digits=True)
        return None, pre_tokenizers.Sequence([digits, byte_level]), False
    if pre in ("llama-bpe", "llama3", "qwen2"):
        regex = QWEN2_REGEX if pre == "qwen2" else LLAMA3_REGEX
        split = pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False)
        seq = pre_tokenizers.Sequence(
            [split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
        norm = normalizers.NFC() if pre == "qwen2" else None
        # Llama 3 looks whole words up in the vocab before applying merges.
        return norm, seq, pre != "qwen2"
    if pre not in _GPT2 and pre is not None:
        warnings.warn(
            f"GGUF tokenizer pre-tokenizer {pre!r} is not known; using the GPT-2 split "
            f"(known: {', '.join(SUPPORTED_PRE)}). Token ids may differ from the original."
        )
    return None, byte_level, False


def _token(metadata: dict, key: str) -> Optional[str]:
    """The string of the token whose id is stored under ``tokenizer.ggml.<key>_token_id``."""
    tokens = metadata["tokenizer.ggml.tokens"]
    idx = metadata.get(f"tokenizer.ggml.{key}_token_id")
    if idx is None or not 0 <= int(idx) < len(tokens):
        return None
    return tokens[int(idx)]


def _spm_merges(tokens: list, scores: list, types: list, vocab: dict) -> list:
    """BPE merges equivalent to SentencePiece's score-driven BPE.

    SentencePiece repeatedly joins the adjacent pair whose concatenation is the
    highest-scoring normal piece; ranking every (left, right) split of each
    normal piece by that piece's score gives a merge list with the same result.
    """
    normal = {t for t, ty in zip(tokens, types) if ty == TOKEN_NORMAL}
    ranked = []
    for i, (tok, ty) in enumerate(zip(tokens, types)):
        if ty != TOKEN_NORMAL or vocab.get(tok) != i:
            continue
        for cut in range(1, len(tok)):
            left, right = tok[:cut], tok[cut:]
            if left in normal and right in normal:
                ranked.append((-scores[i], i, vocab[left], vocab[right], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def _spm_tokenizer(metadata: dict, tokens: list, vocab: dict):
    """A ``tokenizers`` BPE that reproduces a SentencePiece (llama) vocab."""
    from tokenizers import Tokenizer, decoders, models, normalizers

    scores = list(metadata.get("tokenizer.ggml.scores", []))
    types = list(metadata.get("tokenizer.ggml.token_type", []))
    if len(scores) != len(tokens) or len(types) != len(tokens):
        raise ValueError("GGUF llama tokenizer needs tokenizer.ggml.scores and token_type for every token.")
    unk = _token(metadata, "unknown")
    model = models.BPE(vocab=vocab, merges=_spm_merges(tokens, scores, types, vocab), unk_token=unk,
                       fuse_unk=True, byte_fallback=True)
    tok = Tokenizer(model)
    # llama.cpp (like Llama 2's tokenizer.json) prefixes "▁" to every text fragment.
    space = normalizers.Replace(" ", "\u2581")
    prefix = bool(metadata.get("tokenizer.ggml.add_space_prefix", True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), space]) if prefix else space
    steps = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    tok.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if prefix else []))
    return tok


def _bpe_tokenizer(metadata: dict, vocab: dict):
    """A byte-level BPE (``gpt2`` tokenizer model) with the GGUF's merges and split."""
    from tokenizers import Tokenizer, decoders, models

    if "tokenizer.ggml.merges" not in metadata:
        raise ValueError("GGUF gpt2 tokenizer has no tokenizer.ggml.merges.")
    merges = []
    for m in metadata["tokenizer.ggml.merges"]:
        left, sep, right = m.partition(" ")
        if not sep:
            raise ValueError(f"malformed GGUF merge {m!r} (expected 'left right').")
        merges.append((left, right))
    norm, pre, ignore_merges = _pre_tokenizer(metadata.get("tokenizer.ggml.pre"))
    model = models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False,
                       ignore_merges=ignore_merges)
    tok = Tokenizer(model)
    if norm is not None:
        tok.normalizer = norm
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    return tok


def build_tokenizer(metadata: dict):
    """Build a ``tokenizers.Tokenizer`` from GGUF metadata.

    Args:
        metadata: GGUF metadata (as returned by ``read_gguf(...).metadata``).

    Returns:
        The ``tokenizers.Tokenizer``.

    Raises:
        ValueError: a tokenizer model other than ``gpt2`` (byte-level BPE) or
            ``llama`` (SentencePiece), or missing fields.
    """
    from tokenizers import AddedToken, processors

    kind = metadata.get("tokenizer.ggml.model")
    if kind not in SUPPORTED_TOKENIZER_MODELS:
        raise ValueError(
            f"GGUF tokenizer model {kind!r} is not supported (supported: "
            f"{', '.join(map(repr, SUPPORTED_TOKENIZER_MODELS))}); use the Hugging Face "
            "checkpoint's tokenizer instead."
        )
    tokens = list(metadata["tokenizer.ggml.tokens"])
    vocab: dict = {}
    for i, t in enumerate(tokens):
        vocab.setdefault(t, i)  # a duplicated string keeps its first id, as llama.cpp does
    tok = _bpe_tokenizer(metadata, vocab) if kind == "gpt2" else _spm_tokenizer(metadata, tokens, vocab)

    types = list(metadata.get("tokenizer.ggml.token_type", []))
    special = [AddedToken(tokens[i], special=True, normalized=False)
               for i, t in enumerate(types) if t in (TOKEN_UNKNOWN, TOKEN_CONTROL)]
    user = [AddedToken(tokens[i], special=False, normalized=False)
            for i, t in enumerate(types) if t == TOKEN_USER_DEFINED]
    tok.add_special_tokens(special)
    tok.add_tokens(user)

    add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", False))
    add_eos = bool(metadata.get("tokenizer.ggml.add_eos_token", False))
    bos, eos = _token(metadata, "bos"), _token(metadata, "eos")
    if (add_bos and bos is not None) or (add_eos and eos is not None):
        first = [bos] if add_bos and bos is not None else []
        last = [eos] if add_eos and eos is not None else []
        pieces = {t: vocab[t] for t in first + last}
        tok.post_processor = processors.TemplateProcessing(
            single=" ".join(first + ["$A"] + last),
            pair=" ".join(first + ["$A"] + last + first + ["$B:1"] + last),
            special_tokens=list(pieces.items()),
        )
    elif kind == "gpt2":
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def write_tokenizer_from_gguf(metadata: dict, out_dir: Union[str, Path]) -> list:
    """Write ``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json``.

    The result loads with ``transformers.AutoTokenizer.from_pretrained(out_dir)``
    and ``mlx_lm.tokenizer_utils.load(out_dir)``; ``tokenizer.chat_template``
    becomes the config's ``chat_template``.

    Args:
        metadata: GGUF metadata (``read_gguf(...).metadata``).
        out_dir: directory to write into (created if missing).

    Returns:
        The written paths.

    Raises:
        ValueError: unsupported tokenizer model (see ``build_tokenizer``).
    """
    tok = build_tokenizer(metadata)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specials = {}
    for key, gguf_key in (("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("pad", "padding")):
        text = _token(metadata, gguf_key)
        if text is not None:
            specials[f"{key}_token"] = text
    arch = metadata.get("general.architecture", "")
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": bool(metadata.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(metadata.get("tokenizer.ggml.add_eos_token", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(metadata.get(f"{arch}.context_length", 1_000_000_000)),
        **specials,
    }
    if "tokenizer.chat_template" in metadata:
        config["chat_template"] = metadata["tokenizer.chat_template"]
    paths = [out / "tokenizer.json", out / "tokenizer_config.json", out / "special_tokens_map.json"]
    tok.save(str(paths[0]))
    paths[1].write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    paths[2].write_text(json.dumps(specials, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return paths
