"""Text generation: ``generate_step`` (a token generator), ``stream_generate``,
``generate``, and the ``python -m mlx_synapse.generate`` command.

One API over both backends: ``generate_step`` takes a model of either
(``model.backend``) and yields ``(token: int, logprobs: np.ndarray (V,) float32)``;
samplers and logits processors are plain callables on NumPy arrays whichever
backend runs (see ``generate_step``).  MLX models run the loop in
``generate_mlx.py``, NumPy models its twin in ``backends/numpy/generate.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import resource
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Generator, List, Optional, Sequence, Union

import numpy as np

from .generate_checks import DEFAULT_MAX_TOKENS, OneLineArgumentParser, check_options, context_length, fit_prompt, read_prompt


def generate_step(
    prompt,
    model,
    *,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    sampler: Optional[Callable] = None,
    logits_processors: Optional[List[Callable]] = None,
    max_kv_size: Optional[int] = None,
    kv_bits: Optional[int] = None,
    prompt_cache: Optional[list] = None,
    prefill_step_size: int = 512,
) -> Generator[tuple, None, None]:
    """Yield ``(token, logprobs)`` for each generated token, for a model of either backend.

    Samplers and logits processors see NumPy arrays on both backends:

    * ``sampler(logprobs) -> int``: ``logprobs`` float32 (V,); greedy when None;
    * ``processor(tokens, logits) -> logits``: ``tokens`` int64 (N,), the prompt and
      the tokens generated so far; ``logits`` float32 (V,), returned as (V,).

    The ones ``mlx_synapse.sample`` builds are marked MLX-native (``mlx_native``):
    on an MLX model they run on ``mx.array`` (B = 1: logprobs (1, V) -> tokens (1,))
    without leaving the device; on a NumPy model they are fed converted arrays.

    Args:
        prompt: token ids: a list, a NumPy array or an ``mx.array`` of shape (L,).
        model: from :func:`mlx_synapse.load` (``model.backend`` "mlx" or "numpy"; a
            model without the attribute is an MLX one).
        max_tokens: stop after this many tokens (negative: no limit).
        sampler, logits_processors: see above.
        max_kv_size: bound the KV cache (rotating) to this many tokens.
        kv_bits: quantize the KV cache to 4 or 8 bits (MLX only).
        prompt_cache: caches to reuse (``make_prompt_cache`` / ``model.make_cache``); filled in place.
        prefill_step_size: prompt tokens processed per forward pass.

    Yields:
        ``(token: int, logprobs: np.ndarray float32 (V,))``.
    """
    from .generate_mlx import generate_step as mlx_generate_step
    from .generate_mlx import numpy_processor, numpy_sampler

    processors = list(logits_processors or [])
    if not isinstance(prefill_step_size, int) or prefill_step_size <= 0:
        raise ValueError(f"[generate] prefill_step_size must be a positive integer but got {prefill_step_size!r}.")
    if getattr(model, "backend", "mlx") == "numpy":
        from .backends.numpy import generate as np_gen

        if kv_bits is not None:
            raise ValueError("[generate] --kv-bits needs the MLX backend; drop it or use --backend mlx.")
        yield from np_gen.generate_step(
            np.asarray(prompt, dtype=np.int64).reshape(-1), model, max_tokens=max_tokens,
            sampler=numpy_sampler(sampler) if sampler is not None else None,
            logits_processors=[numpy_processor(p) for p in processors],
            max_kv_size=max_kv_size, prefill_step_size=prefill_step_size, prompt_cache=prompt_cache,
        )
        return
    for token, logprobs in mlx_generate_step(
        prompt, model, max_tokens=max_tokens, sampler=sampler, logits_processors=processors,
        max_kv_size=max_kv_size, kv_bits=kv_bits, prompt_cache=prompt_cache,
        prefill_step_size=prefill_step_size,
    ):
        yield token, np.array(logprobs)


@dataclass
class GenerationResponse:
    """One streamed piece of output with running statistics.

    text: the new text segment; token / logprobs: the token just generated;
    prompt_tps / generation_tps: tokens per second; ttft: seconds to the first
    token; peak_memory: GB (the backend's own peak on MLX, process peak RSS on NumPy);
    finish_reason: None, "stop" (EOS) or "length".
    """

    text: str
    token: int
    logprobs: Any
    prompt_tokens: int
    prompt_tps: float
    generation_tokens: int
    generation_tps: float
    ttft: float
    peak_memory: float
    finish_reason: Optional[str] = None


def _peak_memory_gb(backend: str) -> float:
    if backend == "mlx":
        import mlx.core as mx

        return mx.get_peak_memory() / 1e9
    # ru_maxrss is KiB on Linux, bytes on macOS.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1e9 if sys.platform == "darwin" else 1e6)


def _encode_prompt(tokenizer, prompt: Union[str, Sequence[int]]) -> list:
    if isinstance(prompt, str):
        if not prompt:
            raise ValueError("[generate] the prompt is empty; pass --prompt TEXT or text on stdin.")
        add_special = tokenizer.bos_token is None or not prompt.startswith(tokenizer.bos_token)
        return tokenizer.encode(prompt, add_special_tokens=add_special)
    ids = list(prompt)
    if not ids:
        raise ValueError("[generate] the prompt is empty; give at least one token.")
    return ids


def stream_generate(
    model,
    tokenizer,
    prompt: Union[str, Sequence[int]],
    *,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    temp: float = 0.0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    top_k: int = 0,
    repetition_penalty: Optional[float] = None,
    repetition_context_size: int = 20,
    seed: Optional[int] = None,
    sampler: Optional[Callable] = None,
    logits_processors: Optional[List[Callable]] = None,
    truncate_prompt: bool = False,
    **kwargs,
) -> Generator[GenerationResponse, None, None]:
    """Stream the completion of ``prompt`` (text or token ids) piece by piece.

    Sampling options build the backend's sampler unless ``sampler`` is given;
    ``sampler`` and ``logits_processors`` follow :func:`generate_step`'s convention
    (NumPy arrays on either backend); the processors run before the repetition penalty.
    Other keyword arguments go to the backend's ``generate_step``
    (``max_kv_size``, ``kv_bits``, ``prefill_step_size``, ``prompt_cache``).
    A prompt longer than the model's context (or ``max_kv_size``) is a ValueError
    unless ``truncate_prompt``, which keeps its last tokens; generation stops
    (``finish_reason`` "length") when the reply fills the rest of the context.
    """
    backend = getattr(model, "backend", "mlx")
    check_options(max_tokens=max_tokens, temp=temp, top_p=top_p, min_p=min_p, top_k=top_k,
                  repetition_penalty=repetition_penalty, repetition_context_size=repetition_context_size,
                  seed=seed, max_kv_size=kwargs.get("max_kv_size"),
                  prefill_step_size=kwargs.get("prefill_step_size", 512))
    ids = fit_prompt(model, _encode_prompt(tokenizer, prompt), kwargs.get("max_kv_size"), truncate_prompt)
    ctx = context_length(model)
    if ctx is not None:
        # The last token generated is never fed back, so prompt + reply may reach ctx + 1
        # tokens with every position the model runs on inside its context.
        max_tokens = min(max_tokens, ctx - len(ids) + 1)
    if backend == "numpy":
        from .backends.numpy import sample as np_sample

        if kwargs.get("kv_bits") is not None:
            raise ValueError("[generate] --kv-bits needs the MLX backend; drop it or use --backend mlx.")
        sampler = sampler or np_sample.make_sampler(temp, top_p, min_p, top_k, seed=seed)
        logits_processors = list(logits_processors or []) + np_sample.make_logits_processors(
            repetition_penalty, repetition_context_size)
        sync = lambda: None  # noqa: E731
    else:
        import mlx.core as mx

        from . import sample

        if seed is not None:
            mx.random.seed(seed)
        mx.reset_peak_memory()
        sampler = sampler or sample.make_sampler(temp, top_p, min_p, top_k)
        logits_processors = list(logits_processors or []) + sample.make_logits_processors(
            repetition_penalty, repetition_context_size)
        sync = mx.synchronize
    steps = generate_step(ids, model, max_tokens=max_tokens, sampler=sampler,
                          logits_processors=logits_processors, **kwargs)

    detok = tokenizer.detokenizer
    detok.reset()
    eos = set(tokenizer.eos_token_ids)
    tic = time.perf_counter()
    prompt_time = ttft = 0.0
    n = 0
    for n, (token, logprobs) in enumerate(steps, start=1):
        if n == 1:
            sync()
            ttft = prompt_time = time.perf_counter() - tic
            tic = time.perf_counter()
        finish = "stop" if token in eos else ("length" if n == max_tokens else None)
        if token not in eos:
            detok.add_token(token)
        if finish:
            detok.finalize()
        gen_time = time.perf_counter() - tic
        yield GenerationResponse(
            text=detok.last_segment,
            token=token,
            logprobs=logprobs,
            prompt_tokens=len(ids),
            prompt_tps=len(ids) / max(prompt_time, 1e-9),
            generation_tokens=n,
            # The first token's time belongs to the prompt; rate over the rest.
            generation_tps=(n - 1) / gen_time if n > 1 and gen_time > 0 else 0.0,
            ttft=ttft,
            peak_memory=_peak_memory_gb(backend),
            finish_reason=finish,
        )
        if finish:
            break


def generate(model, tokenizer, prompt: Union[str, Sequence[int]], *, verbose: bool = False, **kwargs) -> str:
    """The whole completion as one string; ``verbose`` streams it and prints statistics."""
    text, last = "", None
    for last in stream_generate(model, tokenizer, prompt, **kwargs):
        text += last.text
        if verbose:
            print(last.text, end="", flush=True)
    if verbose:
        print()
        if last is not None:
            print_stats(last)
    return text


def print_stats(r: GenerationResponse, file=None) -> None:
    file = file or sys.stdout  # looked up per call, so a redirected stdout is honoured
    print("=" * 10, file=file)
    print(f"Prompt: {r.prompt_tokens} tokens, {r.prompt_tps:.3f} tokens-per-sec", file=file)
    print(f"Generation: {r.generation_tokens} tokens, {r.generation_tps:.3f} tokens-per-sec", file=file)
    print(f"Time to first token: {r.ttft:.3f} s", file=file)
    print(f"Peak memory: {r.peak_memory:.3f} GB", file=file)


def build_prompt(tokenizer, prompt: str, system: Optional[str] = None, use_chat_template: bool = True):
    """Apply the chat template (when the tokenizer has one) and return token ids."""
    if use_chat_template and getattr(tokenizer, "has_chat_template", False):
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}
        ]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # BatchEncoding in newer transformers
            ids = ids["input_ids"]
        return list(ids)
    text = f"{system}\n\n{prompt}" if system else prompt
    return _encode_prompt(tokenizer, text)


def setup_arg_parser() -> argparse.ArgumentParser:
    p = OneLineArgumentParser(
        prog="python -m mlx_synapse.generate",
        description="Generate text with a small language model (default: SmolLM2-135M-Instruct).",
    )
    p.add_argument("--model", default=None, help="model dir, .gguf file or HF id (default: the embedded model)")
    p.add_argument("--prompt", "-p", default=None, help="prompt text; read from stdin when omitted or '-'")
    p.add_argument("--system", default=None, help="system message for chat models")
    p.add_argument("--max-tokens", "-m", type=int, default=DEFAULT_MAX_TOKENS, help="0 or more")
    p.add_argument("--temp", type=float, default=0.0, help="sampling temperature >= 0 (0 = greedy)")
    p.add_argument("--top-p", type=float, default=1.0, help="in (0, 1]")
    p.add_argument("--top-k", type=int, default=0, help=">= 0 (0 = off)")
    p.add_argument("--min-p", type=float, default=0.0, help="in [0, 1]")
    p.add_argument("--repetition-penalty", type=float, default=None, help="> 0 (1 = off)")
    p.add_argument("--repetition-context-size", type=int, default=20)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--max-kv-size", type=int, default=None, help="bound the KV cache (rotating), > 4")
    p.add_argument("--kv-bits", type=int, default=None, choices=[4, 8], help="quantize the KV cache (MLX)")
    p.add_argument("--truncate-prompt", action="store_true",
                   help="keep the last tokens of a prompt longer than the context (default: refuse it)")
    p.add_argument("--backend", default="auto", choices=["auto", "mlx", "numpy"])
    p.add_argument("--adapter-path", default=None,
                   help="LoRA adapter directory (mlx-lm format: adapter_config.json + adapters.safetensors)")
    p.add_argument("--no-chat-template", action="store_true", help="feed the prompt as raw text")
    p.add_argument("--memory", default=None, metavar="DB",
                   help="answer with the memories of --user in this memory bank, as the chat does "
                        "(the prompt is also learned from: statements are stored)")
    p.add_argument("--user", default=None, help="whose memories (default: $MLX_SYNAPSE_USER or login name)")
    p.add_argument("--verbose", action="store_true", help="print the prompt and the backend used")
    return p


def main(argv: Optional[List[str]] = None) -> int:
    args = setup_arg_parser().parse_args(argv)
    try:
        # Settings first: a bad value fails before the model loads.
        check_options(max_tokens=args.max_tokens, temp=args.temp, top_p=args.top_p, min_p=args.min_p,
                      top_k=args.top_k, repetition_penalty=args.repetition_penalty,
                      repetition_context_size=args.repetition_context_size, seed=args.seed,
                      max_kv_size=args.max_kv_size)
        prompt = read_prompt(args.prompt)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from .loader import load

    # transformers warns when a text outgrows the tokenizer's model_max_length; the
    # prompt bound below says it in one line of our own (and the fix).
    logging.getLogger("transformers.tokenization_utils_base").setLevel(logging.ERROR)
    bank, last = None, None
    try:
        model, tokenizer = load(args.model, backend=args.backend, adapter_path=args.adapter_path)
        if args.memory is not None:
            from .assistant import Assistant
            from .memory.bank import MemoryBank, default_user

            bank = MemoryBank(args.memory, backend=args.backend)
            helper = Assistant(model, tokenizer, bank, user=args.user or default_user(), system=args.system)
            ids, memories, _ = helper.prepare(prompt.strip())
            processors = helper.processors(ids, memories)
            scope = helper.reader_scope()  # the reader adapter, on a turn that shows memories
            if args.verbose:
                for e, s in memories:
                    print(f"[memory {s:.3f}] {e.text}", file=sys.stderr)
        else:
            ids = build_prompt(tokenizer, prompt, args.system, not args.no_chat_template)
            processors, scope = None, contextlib.nullcontext()
        ids = fit_prompt(model, ids, args.max_kv_size, args.truncate_prompt)
        if args.verbose:
            print(f"[backend: {model.backend}; model: {model.model_path}]", file=sys.stderr)
            print(tokenizer.decode(ids), file=sys.stderr)
        with scope:
            for last in stream_generate(
                model, tokenizer, ids, max_tokens=args.max_tokens, temp=args.temp, top_p=args.top_p,
                min_p=args.min_p, top_k=args.top_k, repetition_penalty=args.repetition_penalty,
                repetition_context_size=args.repetition_context_size, seed=args.seed,
                max_kv_size=args.max_kv_size, kv_bits=args.kv_bits, logits_processors=processors,
            ):
                print(last.text, end="", flush=True)
        print()
        if last is not None:
            if last.finish_reason == "length" and last.generation_tokens < args.max_tokens:
                print(f"note: stopped after {last.generation_tokens} tokens: the prompt ({last.prompt_tokens} "
                      f"tokens) and the reply fill the model's context of {context_length(model)} tokens.",
                      file=sys.stderr)
            print_stats(last)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] not in ("mlx", "mlx_lm"):
            raise
        print(f"error: this needs MLX ({e}); pip install mlx ('mlx[cpu]' on Linux), "
              "or use --backend numpy.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        # The text so far is already on stdout; end its line and say why it stopped.
        if last is not None:
            print(flush=True)
        print("[interrupted: generation stopped by Ctrl-C]", file=sys.stderr)
        return 130
    finally:
        if bank is not None:
            bank.close()
    return 0


class _CallableModule(type(sys)):
    """``mlx_synapse.generate`` names this module and the function: calling the module
    calls the function, whichever of the two the package attribute ends up being."""

    def __call__(self, *args, **kwargs):
        return self.generate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule


if __name__ == "__main__":
    sys.exit(main())
