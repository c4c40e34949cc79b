"""Quick speed check of the NumPy backend on one model directory.

    python -m mlx_synapse.backends.numpy.bench MODEL_DIR [--prompt-tokens 128] [--gen-tokens 128] [--trials 3]

Random prompt ids, greedy decoding (the caller-side EOS check is skipped so
every trial generates exactly --gen-tokens).  Prints load time, prefill tok/s
(prompt tokens / time to the first token) and decode tok/s (tokens after the
first / their time) per trial, then the best trial.  Timings depend on what
else runs on the machine: OpenBLAS threads are very sensitive to shared cores.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from .blas import decode_threads, get_threads
from .generate import generate_step
from .model import load_model


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--max-kv-size", type=int, default=None)
    a = ap.parse_args(argv)

    t0 = time.perf_counter()
    model = load_model(a.model)
    print(
        f"loaded {a.model} in {time.perf_counter() - t0:.2f}s "
        f"({model.args.model_type}, {model.num_layers} layers, vocab {model.vocab_size}); "
        f"BLAS threads {get_threads()}, decode threads {decode_threads() or 'auto'}"
    )
    prompt = np.random.default_rng(0).integers(0, model.vocab_size, a.prompt_tokens).tolist()
    best = (0.0, 0.0)
    for trial in range(a.trials):
        t0 = time.perf_counter()
        t1 = None
        n = 0
        for _tok, _lp in generate_step(prompt, model, max_tokens=a.gen_tokens, max_kv_size=a.max_kv_size):
            n += 1
            if t1 is None:
                t1 = time.perf_counter()
        t2 = time.perf_counter()
        pre = len(prompt) / (t1 - t0)
        dec = (n - 1) / (t2 - t1) if n > 1 else float("nan")
        best = max(best, (dec, pre))
        print(f"trial {trial}: prefill {pre:.1f} tok/s, decode {dec:.1f} tok/s ({n} tokens)")
    print(f"best: decode {best[0]:.1f} tok/s, prefill {best[1]:.1f} tok/s")
    speeds = {k: f"{1 / v:.1f} tok/s" for k, v in model._tuner._speed.items()}
    if speeds:
        print(f"decode thread tuner, last seen per thread count: {speeds}")


if __name__ == "__main__":
    main()
