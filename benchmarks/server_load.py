"""Load on the HTTP server: N concurrent streaming clients, R requests each.

``python -m mlx_synapse.benchmarks.server_load --clients 1 4 --requests 4 --max-tokens 32``

Starts the server in this process (uvicorn on a free loopback port, the default model
unless ``--model``), then for each N in ``--clients`` runs N client threads that each
send R streaming chat requests one after another (memory off unless ``--memory``: this
measures serving, not retrieval). Per request: time to the first content chunk (TTFT,
from sending the request) and the completion tokens the server reports. Per N: errors,
requests/s and generated tokens/s over the whole wall time, TTFT p50/p99. One warm-up
request runs first and is not counted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from typing import List, Optional

PROMPTS = ["Write a short poem about the sea.", "Explain what a rainbow is.", "Give three tips for sleeping well.",
           "Describe a cat to someone who has never seen one.", "What is the capital of France and why is it famous?",
           "Tell me a fun fact about octopuses.", "How do plants make food?", "Name some uses of a paperclip."]


def _one(url: str, i: int, max_tokens: int, memory: bool) -> dict:
    import httpx

    body = {"messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], "max_tokens": max_tokens,
            "stream": True, "stream_options": {"include_usage": True}, "memory": memory, "user": f"load{i % 4}"}
    t0 = time.perf_counter()
    ttft, tokens = None, 0
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=600) as r:
        if r.status_code != 200:
            r.read()
            return {"error": f"{r.status_code} {r.text[:120]}"}
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            c = json.loads(line[6:])
            if c.get("usage"):
                tokens = c["usage"]["completion_tokens"]
            elif ttft is None and c["choices"] and c["choices"][0]["delta"].get("content"):
                ttft = time.perf_counter() - t0
    return {"ttft": ttft if ttft is not None else time.perf_counter() - t0, "tokens": tokens}


def direct(model, tok, requests: int, max_tokens: int) -> dict:
    """The same requests through ``stream_generate`` in this process, one after another: the
    engine's own speed, without HTTP, queueing or JSON (the baseline for one client)."""
    from mlx_synapse.generate import build_prompt, stream_generate

    ttfts, tokens = [], 0
    t0 = time.perf_counter()
    for i in range(requests):
        last = None
        for last in stream_generate(model, tok, build_prompt(tok, PROMPTS[i % len(PROMPTS)]), max_tokens=max_tokens):
            pass
        ttfts.append(last.ttft)
        tokens += last.generation_tokens
    wall = time.perf_counter() - t0
    return {"clients": "direct", "requests": requests, "errors": 0, "wall_s": wall, "req_per_s": requests / wall,
            "tok_per_s": tokens / wall, "ttft_p50_s": statistics.median(ttfts), "ttft_p99_s": max(ttfts),
            "first_error": None, "parallel": "-"}


def grammar_overhead(tok, vocab: int, n_docs: int = 20) -> dict:
    """Microseconds per token that structured output adds: the llguidance processor fed a
    valid JSON document token by token (mask computed and applied to a (V,) row each
    step), against the same loop without it. No model runs; the tokenizer is the model's."""
    import numpy as np

    from mlx_synapse.server.structured import GrammarProcessor, grammar_for, ll_tokenizer

    schema = {"type": "object", "additionalProperties": False, "required": ["name", "age", "tags"],
              "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                             "tags": {"type": "array", "items": {"type": "string"}}}}
    grammar = grammar_for({"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    t0 = time.perf_counter()
    lltok = ll_tokenizer(tok, vocab)
    setup = time.perf_counter() - t0
    logits = np.zeros(vocab, np.float32)
    per_token = []
    for i in range(n_docs):
        doc = json.dumps({"name": f"Person {i}", "age": 20 + i, "tags": ["a", "b" * (i % 5 + 1)]},
                         separators=(",", ":"))
        ids = tok.encode(doc, add_special_tokens=False)
        proc = GrammarProcessor(lambda v: lltok, grammar, tok.eos_token_ids)
        prompt = np.array([1, 2, 3], np.int64)
        t0 = time.perf_counter()
        for k in range(len(ids) + 1):
            out = proc(np.concatenate([prompt, np.array(ids[:k], np.int64)]), logits)
            if k < len(ids):
                assert np.isfinite(out[ids[k]]), f"token {k} of a valid document was masked"
        per_token.append((time.perf_counter() - t0) / (len(ids) + 1))
    return {"vocab": vocab, "tokenizer_setup_s": setup, "us_per_token_p50": 1e6 * statistics.median(per_token),
            "us_per_token_max": 1e6 * max(per_token)}


def _line(row: dict) -> str:
    return (f"clients {row['clients']!s:>6} (slots {row['parallel']}): {row['requests']} requests, {row['errors']} errors, "
            f"{row['req_per_s']:.2f} req/s, {row['tok_per_s']:.1f} tok/s, TTFT p50 {row['ttft_p50_s']:.3f} s "
            f"p99 {row['ttft_p99_s']:.3f} s" + (f"  first error: {row['first_error']}" if row["errors"] else ""))


def run_level(url: str, clients: int, requests: int, max_tokens: int, memory: bool) -> dict:
    results: List[dict] = []
    lock = threading.Lock()

    def worker(c: int):
        for r in range(requests):
            try:
                out = _one(url, c * requests + r, max_tokens, memory)
            except Exception as e:  # a transport error counts as an error of the run
                out = {"error": f"{type(e).__name__}: {e}"}
            with lock:
                results.append(out)

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ok = [r for r in results if "error" not in r]
    ttfts = sorted(r["ttft"] for r in ok)
    q = (lambda p: ttfts[min(len(ttfts) - 1, int(round(p * (len(ttfts) - 1))))]) if ttfts else (lambda p: float("nan"))
    return {"clients": clients, "requests": len(results), "errors": len(results) - len(ok), "wall_s": wall,
            "req_per_s": len(ok) / wall, "tok_per_s": sum(r["tokens"] for r in ok) / wall,
            "ttft_p50_s": statistics.median(ttfts) if ttfts else float("nan"), "ttft_p99_s": q(0.99),
            "first_error": next((r["error"] for r in results if "error" in r), None)}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mlx_synapse.benchmarks.server_load", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None)
    p.add_argument("--backend", default="auto", choices=("auto", "mlx", "numpy"))
    p.add_argument("--clients", type=int, nargs="*", default=[1, 4], help="levels to run (none: skip the load)")
    p.add_argument("--requests", type=int, default=4, help="requests per client")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--parallel", type=int, default=None, help="server slots (default: the number of clients)")
    p.add_argument("--memory", action="store_true", help="chat through the memory bank (a fresh temporary one)")
    p.add_argument("--no-direct", action="store_true", help="skip the in-process baseline")
    p.add_argument("--grammar", action="store_true", help="also time structured output's mask per token")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    import tempfile

    from mlx_synapse.loader import load
    from mlx_synapse.server import ServerConfig, create_app

    from .common import commit, machine
    from mlx_synapse.server.live import live

    model, tok = load(args.model, backend=args.backend)
    rows = []
    if args.grammar:
        vocab = int(getattr(getattr(model, "args", None), "vocab_size", 0) or len(tok.vocab))
        g = grammar_overhead(tok, vocab)
        print(f"structured output (llguidance, vocab {g['vocab']}): {g['us_per_token_p50']:.0f} us/token p50, "
              f"max {g['us_per_token_max']:.0f}; tokenizer setup {g['tokenizer_setup_s']:.2f} s once", flush=True)
    if not args.no_direct:
        direct(model, tok, 1, 4)  # warm-up
        rows.append(direct(model, tok, args.requests, args.max_tokens))
        if not args.json:
            print(_line(rows[-1]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.clients:
            bank = None
            if args.memory:
                from mlx_synapse.memory.bank import MemoryBank

                bank = MemoryBank(f"{tmp}/m{n}.db", backend=args.backend)
            cfg = ServerConfig(memory=args.memory, parallel=args.parallel or n, max_queue=max(16, n),
                               default_max_tokens=args.max_tokens)
            with live(create_app(model, tok, bank, cfg)) as url:
                _one(url, 0, 4, args.memory)  # warm-up, not counted
                row = run_level(url, n, args.requests, args.max_tokens, args.memory)
            row["parallel"] = cfg.parallel
            rows.append(row)
            if not args.json:
                print(_line(row), flush=True)
    info = {"machine": machine(), "commit": commit(), "backend": getattr(model, "backend", "?"),
            "max_tokens": args.max_tokens, "memory": args.memory, "rows": rows}
    print(json.dumps(info, indent=1) if args.json else f"({info['machine']}, commit {info['commit']}, backend "
                                                        f"{info['backend']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
