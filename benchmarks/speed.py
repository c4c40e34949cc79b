"""Prompt and decode throughput of mlx_synapse against peers, in one run.

Pairs compared on the same checkpoint, the same prompt tokens and the same
number of generated tokens (greedy, EOS ignored):

* ``mlx_synapse[mlx]`` vs ``mlx-lm`` (both on MLX's default device);
* ``mlx_synapse[numpy]`` vs PyTorch eager (``transformers`` ``generate``), fp32.

Usage::

    python -m mlx_synapse.benchmarks.speed                    # default model, 4-bit and bf16
    python -m mlx_synapse.benchmarks.speed --forms q4 --prompt-tokens 512 --gen-tokens 128 --trials 3

Warm-up runs are not counted; each figure is the median of ``--trials``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Optional

FORMS = ("q4", "bf16", "f32")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}"


def commit() -> str:
    try:
        root = Path(__file__).resolve().parent.parent
        return subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def time_steps(steps: Iterable, sync: Callable[[], None] = lambda: None) -> tuple:
    """(seconds to the first token, seconds for the rest, tokens) of a token generator."""
    tic = time.perf_counter()
    first = None
    n = 0
    for n, _ in enumerate(steps, start=1):
        if n == 1:
            sync()
            first = time.perf_counter() - tic
            tic = time.perf_counter()
    sync()
    return first, time.perf_counter() - tic, n


def measure(run: Callable[[], tuple], trials: int, prompt_len: int) -> dict:
    run()  # warm-up, not counted
    prefill, decode = [], []
    for _ in range(trials):
        first, rest, n = run()
        prefill.append(prompt_len / first)
        decode.append((n - 1) / rest)
    return {"prompt_tps": statistics.median(prefill), "decode_tps": statistics.median(decode),
            "trials_prompt_tps": prefill, "trials_decode_tps": decode}


def ours(path: Path, backend: str, ids: list, n_gen: int) -> Callable[[], tuple]:
    from mlx_synapse.loader import load

    model, _ = load(path, backend=backend)
    if backend == "numpy":
        from mlx_synapse.backends.numpy import generate_step

        return lambda: time_steps(generate_step(ids, model, max_tokens=n_gen))
    import mlx.core as mx

    from mlx_synapse.generate import generate_step

    return lambda: time_steps(generate_step(mx.array(ids), model, max_tokens=n_gen), mx.synchronize)


def mlx_lm_peer(path: Path, ids: list, n_gen: int) -> Callable[[], tuple]:
    import mlx.core as mx
    from mlx_lm import load
    from mlx_lm.generate import generate_step

    model, _ = load(str(path))
    return lambda: time_steps(generate_step(mx.array(ids), model, max_tokens=n_gen), mx.synchronize)


def torch_peer(path: Path, ids: list, n_gen: int, threads: int) -> Callable[[], tuple]:
    """transformers ``generate``: time of 1 new token = prefill; the rest = decode."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    x = torch.tensor([ids])

    def gen(n):
        with torch.inference_mode():
            model.generate(x, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)

    def run():
        t0 = time.perf_counter()
        gen(1)
        t1 = time.perf_counter()
        gen(n_gen)
        t2 = time.perf_counter()
        return t1 - t0, (t2 - t1) - (t1 - t0), n_gen

    return run


def prepare_forms(forms: Iterable[str]) -> dict:
    """Model directories for each weight form of the default model (made once, cached)."""
    from mlx_synapse.convert.gguf import convert_gguf
    from mlx_synapse.defaults import cache_dir, default_model_path, find_default_gguf

    out = {}
    for form in forms:
        if form == "q4":
            out[form] = default_model_path()
            continue
        target = cache_dir() / "models" / f"SmolLM2-135M-Instruct-{form}"
        if not (target / "config.json").is_file():
            dtype = {"bf16": "bfloat16", "f32": "float32"}[form]
            convert_gguf(find_default_gguf(), target, dequantize=True, dtype=dtype, progress=False)
        out[form] = target
    return out


def float_dir(forms: dict) -> Path:
    """An fp32 directory for the PyTorch peer (same values as the quantized weights)."""
    return forms.get("f32") or prepare_forms(["f32"])["f32"]


def prompt_ids(tokenizer_dir: Path, n: int) -> list:
    from mlx_synapse.tokenizer import load_tokenizer

    text_file = Path(__file__).resolve().parent.parent.parent / "shared/data/eval/wikitext2_raw_test.txt"
    tok = load_tokenizer(tokenizer_dir)
    text = text_file.read_text(encoding="utf-8")[: n * 8] if text_file.is_file() else "The sea. " * n
    ids = tok.encode(text)[:n]
    if len(ids) < n:
        ids = (ids * (n // max(len(ids), 1) + 1))[:n]
    return ids


def main(argv: Optional[list] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mlx_synapse.benchmarks.speed", description=__doc__.split("\n")[0])
    p.add_argument("--forms", default="q4,bf16", help=f"weight forms of the default model: {','.join(FORMS)}")
    p.add_argument("--model", default=None, help="benchmark this model dir instead of the default forms")
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--gen-tokens", type=int, default=128)
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--pairs", default="mlx,numpy", help="mlx: ours vs mlx-lm; numpy: ours vs PyTorch eager")
    p.add_argument("--json", default=None, help="write all trials here")
    args = p.parse_args(argv)

    forms = {Path(args.model).name: Path(args.model)} if args.model else prepare_forms(args.forms.split(","))
    pairs = args.pairs.split(",")
    first_dir = next(iter(forms.values()))
    ids = prompt_ids(first_dir, args.prompt_tokens)
    report = {"machine": machine(), "commit": commit(), "prompt_tokens": args.prompt_tokens,
              "gen_tokens": args.gen_tokens, "trials": args.trials, "results": []}
    print(f"# {report['machine']}; commit {report['commit']}; prompt {args.prompt_tokens} tokens, "
          f"generate {args.gen_tokens}, median of {args.trials}")
    print("| weights | ours | peer | ours prompt tok/s | peer prompt tok/s | ratio | ours decode tok/s | peer decode tok/s | ratio |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for form, path in forms.items():
        for pair in pairs:
            if pair == "mlx":
                a = measure(ours(path, "mlx", ids, args.gen_tokens), args.trials, len(ids))
                b = measure(mlx_lm_peer(path, ids, args.gen_tokens), args.trials, len(ids))
                names = ("mlx_synapse[mlx]", "mlx-lm")
            else:
                a = measure(ours(path, "numpy", ids, args.gen_tokens), args.trials, len(ids))
                b = measure(torch_peer(float_dir(forms) if form != "f32" else path, ids, args.gen_tokens,
                                       args.threads), args.trials, len(ids))
                names = ("mlx_synapse[numpy]", "PyTorch eager fp32")
            row = {"weights": form, "ours": names[0], "peer": names[1], "ours_stats": a, "peer_stats": b,
                   "prompt_ratio": a["prompt_tps"] / b["prompt_tps"], "decode_ratio": a["decode_tps"] / b["decode_tps"]}
            report["results"].append(row)
            print(f"| {form} | {names[0]} | {names[1]} | {a['prompt_tps']:.1f} | {b['prompt_tps']:.1f} | "
                  f"{row['prompt_ratio']:.2f}x | {a['decode_tps']:.1f} | {b['decode_tps']:.1f} | "
                  f"{row['decode_ratio']:.2f}x |", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
