"""Training data in mlx-lm's JSONL formats, tokenized with the prompt part marked.

One JSON object per line, every line the same format:

* chat:        ``{"messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}]}``
* completions: ``{"prompt": ..., "completion": ...}`` (rendered with the chat template when
  the tokenizer has one, as mlx-lm does)
* text:        ``{"text": ...}``

With ``mask_prompt`` the loss covers only the last message (chat) or the
completion; text examples are trained on whole.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Tuple, Union

FORMATS = ("chat", "completions", "text")


def _fmt(obj, where: str) -> str:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}.")
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in msgs):
            raise ValueError(f"{where}: 'messages' must be a non-empty list of {{'role', 'content'}} strings.")
        return "chat"
    if "prompt" in obj or "completion" in obj:
        if not (isinstance(obj.get("prompt"), str) and isinstance(obj.get("completion"), str)):
            raise ValueError(f"{where}: a completions example needs string 'prompt' and 'completion'.")
        return "completions"
    if "text" in obj:
        if not isinstance(obj["text"], str) or not obj["text"]:
            raise ValueError(f"{where}: 'text' must be a non-empty string.")
        return "text"
    raise ValueError(
        f"{where}: no 'messages', 'prompt'/'completion' or 'text' key (found {', '.join(sorted(obj)) or 'none'}); "
        "see mlx-lm's chat, completions and text formats."
    )


def read_jsonl(path: Union[str, Path]) -> Tuple[str, List[dict]]:
    """The examples of a JSONL file and their format; one-line errors naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"[train] data file {str(path)!r} does not exist.")
    examples, fmt = [], None
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"[train] {path.name} line {n}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg} at column {e.colno}).") from None
            f_n = _fmt(obj, where)
            if fmt is None:
                fmt = f_n
            elif f_n != fmt:
                raise ValueError(f"{where}: a {f_n} example in a file of {fmt} examples; use one format per file.")
            examples.append(obj)
    if not examples:
        raise ValueError(f"[train] {path} holds no examples.")
    return fmt, examples


def _template(tokenizer, messages, **kw) -> List[int]:
    ids = tokenizer.apply_chat_template(messages, tokenize=True, **kw)
    if isinstance(ids, dict):  # newer transformers return a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)


def tokenize(example: dict, fmt: str, tokenizer, mask_prompt: bool = True) -> Tuple[List[int], int]:
    """(token ids, offset): the loss covers targets at positions >= offset."""
    has_template = getattr(tokenizer, "chat_template", None) is not None
    if fmt == "completions":
        if not has_template:
            prompt = tokenizer.encode(example["prompt"])
            full = prompt + tokenizer.encode(example["completion"], add_special_tokens=False)
            return full + [tokenizer.eos_token_id], (len(prompt) if mask_prompt else 0)
        example = {"messages": [{"role": "user", "content": example["prompt"]},
                                {"role": "assistant", "content": example["completion"]}]}
        fmt = "chat"
    if fmt == "chat":
        msgs = example["messages"]
        full = _template(tokenizer, msgs)
        if not mask_prompt:
            return full, 0
        if msgs[-1]["role"] != "assistant":
            raise ValueError("[train] with the prompt masked, a chat example's last message must be the assistant's.")
        return full, len(_template(tokenizer, msgs[:-1], add_generation_prompt=True))
    ids = tokenizer.encode(example["text"])
    if tokenizer.eos_token_id is not None and (not ids or ids[-1] != tokenizer.eos_token_id):
        ids = ids + [tokenizer.eos_token_id]
    return ids, 0


def load_dataset(path: Union[str, Path], tokenizer, mask_prompt: bool = True, max_seq_length: int = 2048) -> list:
    """Tokenized examples ``[(ids, offset), ...]`` of a JSONL file, cut to ``max_seq_length`` tokens.

    Raises:
        ValueError: bad JSON, an unknown format, mixed formats, or an example with no
            trained token left (named by line).
    """
    fmt, examples = read_jsonl(path)
    out = []
    for n, ex in enumerate(examples, 1):
        ids, offset = tokenize(ex, fmt, tokenizer, mask_prompt)
        ids = ids[:max_seq_length]
        if len(ids) < 2 or offset >= len(ids):
            raise ValueError(
                f"[train] {Path(path).name} example {n}: no token left to train on "
                f"({len(ids)} tokens, prompt {offset}); raise --max-seq-length or shorten the prompt."
            )
        out.append((ids, offset))
    return out
