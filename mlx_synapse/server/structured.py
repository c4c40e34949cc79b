"""Structured output: ``response_format`` json_object / json_schema as a logits processor
over llguidance's token masks (a maintained constrained-decoding engine in Rust; the
mask for SmolLM2's 49,152-token vocabulary costs well under a millisecond a token here,
see benchmarks/README.md).

The processor follows :func:`~mlx_synapse.generate.generate_step`'s convention
(``processor(tokens (N,), logits (V,)) -> logits`` on NumPy arrays, either backend): it
feeds the matcher the tokens generated since its last call, then sets every token the
grammar forbids to -inf; once the grammar is complete only end-of-sequence is allowed.
"""

from __future__ import annotations

import json
from typing import Optional

import numpy as np

from .errors import ApiError


def _hf(tokenizer):
    return getattr(tokenizer, "_tokenizer", tokenizer)


def ll_tokenizer(tokenizer, vocab: int):
    """llguidance's view of ``tokenizer`` (built once per model: it scans the vocabulary)."""
    import llguidance.hf

    eos = list(getattr(tokenizer, "eos_token_ids", []) or []) or None
    return llguidance.hf.from_tokenizer(_hf(tokenizer), n_vocab=vocab, eos_token=eos)


def grammar_for(response_format: Optional[dict]) -> Optional[str]:
    """The llguidance grammar for an OpenAI ``response_format``; None for plain text."""
    if not response_format or response_format.get("type", "text") == "text":
        return None
    kind = response_format.get("type")
    try:
        from llguidance import LLMatcher
    except ImportError:
        raise ApiError(400, "structured output needs llguidance on the server; pip install 'mlx-synapse[server]' "
                            "there, or drop 'response_format'.", param="response_format", code="unsupported") from None
    if kind == "json_object":
        schema = {"type": "object"}
    elif kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise ApiError(400, "response_format json_schema needs {\"json_schema\": {\"name\": ..., \"schema\": {...}}}; "
                                "the 'schema' object is missing.", param="response_format.json_schema.schema")
    else:
        raise ApiError(400, f"response_format type {kind!r} is not one of 'text', 'json_object', 'json_schema'.",
                       param="response_format.type")
    grammar = LLMatcher.grammar_from_json_schema(json.dumps(schema), defaults={"whitespace_flexible": False})
    problem = LLMatcher.validate_grammar(grammar)
    if problem and not problem.startswith("WARNING"):
        raise ApiError(400, f"the JSON schema cannot be used: {problem.splitlines()[0][:200]}; fix the schema.",
                       param="response_format.json_schema.schema", code="invalid_schema")
    return grammar


class GrammarProcessor:
    """A logits processor that keeps generation inside ``grammar`` (see the module docstring)."""

    def __init__(self, lltok_for, grammar: str, eos_ids):
        self.lltok_for, self.grammar = lltok_for, grammar
        self.eos = sorted(set(int(e) for e in eos_ids))
        self.base: Optional[int] = None  # prompt length: the tokens before the first call

    def __call__(self, tokens, logits):
        from llguidance import LLMatcher
        from llguidance.numpy import allocate_token_bitmask, apply_token_bitmask_inplace, fill_next_token_bitmask

        tokens = np.asarray(tokens).reshape(-1)
        if self.base is None:  # the first call: the vocabulary size is the logits'
            lltok = self.lltok_for(int(np.asarray(logits).shape[-1]))
            self.matcher = LLMatcher(lltok, self.grammar, log_level=0)
            self.mask = allocate_token_bitmask(1, lltok.vocab_size)
            self.base, self.fed = len(tokens), 0
        for t in tokens[self.base + self.fed:]:
            self.matcher.consume_token(int(t))
            self.fed += 1
        out = np.array(logits, np.float32, copy=True)
        shape = out.shape
        out = out.reshape(1, -1)
        if self.matcher.is_stopped() or self.matcher.is_error():
            keep = out[0, self.eos].copy()
            out[:] = -np.inf
            out[0, self.eos] = keep
        else:
            fill_next_token_bitmask(self.matcher, self.mask, 0)
            apply_token_bitmask_inplace(out, self.mask)
        return out.reshape(shape)
