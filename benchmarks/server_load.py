"""Load on the HTTP server: N concurrent streaming clients, R requests each.

``python -m mlx_synapse.benchmarks.server_load --clients 1 8 16 --requests 8 --max-tokens 32``

Starts the server in this process (uvicorn on a free loopback port, the default model
unless ``--model``), then for each N in ``--clients`` runs N client threads that each
send R streaming chat requests one after another (memory off unless ``--memory``: this
measures serving, not retrieval), greedy (temperature 0), fixed prompts and
``max_tokens``. The server gets ``--parallel N`` slots, so N streams are decoded in one
batch on the NumPy backend's engine (``--no-batch``: interleaved one at a time). Per
request: time to the first content chunk (TTFT, from sending the request) and the
completion tokens the server reports. Per N: errors, requests/s and generated tokens/s
over the whole wall time, TTFT p50/p99, the mean batch the engine ran, and tokens/s
against the one-client level. One warm-up request runs first and is not counted.

``--peer-llama-server BIN``: the same clients against llama.cpp's ``llama-server`` on the
same GGUF (``--peer-gguf``), started on loopback with ``--parallel`` (``--peer-parallel``,
8) ``--cont-batching --no-repack`` and as many threads as the engine uses; its requests
send ``cache_prompt: false`` (ours has no prompt cache). ``--save DIR`` writes the rows
as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List, Optional

PROMPTS = ["Write a short poem about the sea.", "Explain what a rainbow is.", "Give three tips for sleeping well.",
           "Describe a cat to someone who has never seen one.", "What is the capital of France and why is it famous?",
           "Tell me a fun fact about octopuses.", "How do plants make food?", "Name some uses of a paperclip."]


def _one(url: str, i: int, max_tokens: int, memory: Optional[bool]) -> dict:
    """One streamed chat request; ``memory`` None: a peer server (no memory fields sent)."""
    import httpx

    body = {"messages": [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}], "max_tokens": max_tokens,
            "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True}}
    if memory is not None:
        body.update(memory=memory, user=f"load{i % 4}")
    else:  # llama-server: no reuse of an earlier request's prompt (ours has no prompt cache either)
        body["cache_prompt"] = False
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
    return {"server": "direct", "clients": "direct", "requests": requests, "errors": 0, "wall_s": wall, "req_per_s": requests / wall,
            "tok_per_s": tokens / wall, "ttft_p50_s": statistics.median(ttfts), "ttft_p99_s": max(ttfts),
            "first_error": None, "parallel": "-"}


def engine_batches(model, sizes: List[int], context: int = 64, repeats: int = 5, steps: int = 4) -> List[dict]:
    """The engine alone, no HTTP: decode steps of B sequences (``step_batch``, each its own
    cache holding ``context`` prompt tokens) against one sequence's ``step``; best of
    ``repeats`` timings of ``steps`` steps each, the sizes interleaved so that a change in
    the machine's load hits them all alike."""
    import numpy as np

    eng = model.engine
    rng = np.random.default_rng(0)

    def caches(n):
        out = []
        for _ in range(n):
            c = model.make_cache()
            model.prefill(rng.integers(0, model.vocab_size, context), c)
            out.append(c)
        return out

    one, sets = caches(1)[0], {b: caches(b) for b in sizes}
    best = {b: float("inf") for b in [0] + list(sizes)}
    for _ in range(repeats):
        for b in best:
            t = time.perf_counter()
            for _ in range(steps):
                eng.step(5, one) if b == 0 else eng.step_batch([5] * b, sets[b])
            best[b] = min(best[b], (time.perf_counter() - t) / steps)
    single = 1 / best[0]
    return [{"batch": b, "ms_per_step": 1e3 * best[b], "tok_per_s": b / best[b], "vs_single": b / best[b] / single}
            for b in sizes] + [{"batch": "single step", "ms_per_step": 1e3 * best[0], "tok_per_s": single,
                                "vs_single": 1.0}]


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
    extra = ""
    if row.get("mean_batch"):
        extra += f", mean batch {row['mean_batch']:.1f}"
    if row.get("vs_one_client"):
        extra += f", {row['vs_one_client']:.2f}x one client"
    return (f"{row.get('server', 'synapse'):>12} clients {row['clients']!s:>6} (slots {row['parallel']}): "
            f"{row['requests']} requests, {row['errors']} errors, {row['req_per_s']:.2f} req/s, "
            f"{row['tok_per_s']:.1f} tok/s, TTFT p50 {row['ttft_p50_s']:.3f} s p99 {row['ttft_p99_s']:.3f} s{extra}"
            + (f"  first error: {row['first_error']}" if row["errors"] else ""))


def _ratios(rows: List[dict]) -> None:
    """tok/s of each level against the same server's one-client level."""
    for server in {r.get("server") for r in rows}:
        one = next((r for r in rows if r.get("server") == server and r["clients"] == 1), None)
        for r in rows:
            if one and r.get("server") == server and one["tok_per_s"] > 0:
                r["vs_one_client"] = r["tok_per_s"] / one["tok_per_s"]


@contextlib.contextmanager
def llama_server(binary: str, gguf: str, parallel: int, threads: int, timeout: float = 120.0):
    """llama.cpp's server on a free loopback port (ours, killed at the end); yields its URL."""
    import httpx

    from mlx_synapse.server.live import free_port

    if not Path(binary).is_file():
        raise SystemExit(f"[server_load] --peer-llama-server {binary} is not a file; build llama.cpp's "
                         "llama-server or drop the option.")
    if not Path(gguf).is_file():
        raise SystemExit(f"[server_load] --peer-gguf {gguf} is not a file.")
    port = free_port()
    # --no-repack: on the Sapphire Rapids VM this was measured on, llama.cpp's AMX repacked matmul
    # crashes (SIGSEGV in ggml_backend_amx_mul_mat) before the server answers; Q4_1 is not repacked
    # for AVX-512 anyway, so the flag only turns the AMX path off.
    cmd = [binary, "-m", gguf, "--host", "127.0.0.1", "--port", str(port), "--parallel", str(parallel),
           "--cont-batching", "--no-repack", "-t", str(threads), "-tb", str(threads), "-c", str(2048 * parallel),
           "--log-disable"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.monotonic()
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"[server_load] llama-server exited with {proc.returncode}: "
                                 f"{(proc.stderr.read() or '')[-300:]}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() - t0 > timeout:
                raise SystemExit(f"[server_load] llama-server did not answer /health within {timeout:.0f} s")
            time.sleep(0.2)
        yield url, " ".join(cmd[1:])
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_level(url: str, clients: int, requests: int, max_tokens: int, memory: Optional[bool]) -> dict:
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
    p.add_argument("--clients", type=int, nargs="*", default=[1, 8], help="levels to run (none: skip the load)")
    p.add_argument("--requests", type=int, default=4, help="requests per client")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--parallel", type=int, default=None, help="server slots (default: the number of clients)")
    p.add_argument("--no-batch", action="store_true", help="decode the slots' streams one at a time (interleaved)")
    p.add_argument("--memory", action="store_true", help="chat through the memory bank (a fresh temporary one)")
    p.add_argument("--no-direct", action="store_true", help="skip the in-process baseline")
    p.add_argument("--grammar", action="store_true", help="also time structured output's mask per token")
    p.add_argument("--engine-batches", type=int, nargs="*", default=[], metavar="B",
                   help="also time the engine's batched decode step alone (no HTTP) at these batch sizes")
    p.add_argument("--peer-llama-server", default=None, metavar="BIN", help="also load llama.cpp's llama-server")
    p.add_argument("--peer-gguf", default=str(Path.home() / ".cache/mlx_synapse/downloads/SmolLM2-135M-Instruct.Q4_1.gguf"))
    p.add_argument("--peer-parallel", type=int, default=8, help="llama-server's --parallel")
    p.add_argument("--save", default=None, metavar="DIR", help="write the results as JSON under DIR")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    for name in ("requests", "max_tokens", "peer_parallel"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if any(n < 1 for n in args.clients):
        p.error("--clients levels must be at least 1")

    import tempfile

    from mlx_synapse.loader import load
    from mlx_synapse.server import ServerConfig, create_app

    from .common import commit, machine
    from mlx_synapse.server.live import live

    model, tok = load(args.model, backend=args.backend)
    eng = getattr(model, "engine", None) if getattr(model, "backend", "") == "numpy" else None
    threads = eng.threads if eng is not None else (os.cpu_count() or 1)
    rows = []
    if args.grammar:
        vocab = int(getattr(getattr(model, "args", None), "vocab_size", 0) or len(tok.vocab))
        g = grammar_overhead(tok, vocab)
        print(f"structured output (llguidance, vocab {g['vocab']}): {g['us_per_token_p50']:.0f} us/token p50, "
              f"max {g['us_per_token_max']:.0f}; tokenizer setup {g['tokenizer_setup_s']:.2f} s once", flush=True)
    batches = []
    if args.engine_batches:
        if eng is None or any(not 1 <= b <= 16 for b in args.engine_batches):
            p.error("--engine-batches needs the NumPy backend's compiled engine and sizes 1 to 16")
        batches = engine_batches(model, args.engine_batches)
        for r in batches:
            print(f"engine batch {r['batch']!s:>11}: {r['ms_per_step']:.1f} ms/step, {r['tok_per_s']:.1f} tok/s, "
                  f"{r['vs_single']:.2f}x one sequence's step", flush=True)
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
                               default_max_tokens=args.max_tokens, batch=not args.no_batch)
            app = create_app(model, tok, bank, cfg)
            engine = app.state.synapse.engine
            with live(app) as url:
                _one(url, 0, 4, args.memory)  # warm-up, not counted
                s0, r0 = engine.batched_steps, engine.batched_rows
                row = run_level(url, n, args.requests, args.max_tokens, args.memory)
                steps, batched = engine.batched_steps - s0, engine.batched_rows - r0
            row.update(server="synapse", parallel=cfg.parallel, batched_steps=steps,
                       mean_batch=batched / steps if steps else 0.0)
            rows.append(row)
            if not args.json:
                print(_line(row), flush=True)
    peer_cmd = None
    if args.peer_llama_server and args.clients:
        with llama_server(args.peer_llama_server, args.peer_gguf, args.peer_parallel, threads) as (url, peer_cmd):
            _one(url, 0, 4, None)  # warm-up, not counted
            for n in args.clients:
                row = run_level(url, n, args.requests, args.max_tokens, None)
                row.update(server="llama-server", parallel=args.peer_parallel)
                rows.append(row)
                if not args.json:
                    print(_line(row), flush=True)
    _ratios(rows)
    for r in rows:
        if r.get("vs_one_client") and r["clients"] != 1 and not args.json:
            print(f"{r['server']}: {r['clients']} clients = {r['vs_one_client']:.2f}x the tokens/s of one", flush=True)
    load_avg = os.getloadavg() if hasattr(os, "getloadavg") else None
    info = {"machine": machine(), "commit": commit(), "backend": getattr(model, "backend", "?"),
            "engine": None if eng is None else {"threads": eng.threads, "simd": eng.simd},
            "max_tokens": args.max_tokens, "requests_per_client": args.requests, "memory": args.memory,
            "batch": not args.no_batch, "peer": peer_cmd, "load_average_after": load_avg,
            "command": "python -m mlx_synapse.benchmarks.server_load " + " ".join(sys.argv[1:] if argv is None else argv),
            "engine_batches": batches, "rows": rows}
    if args.save:
        out = Path(args.save)
        out.mkdir(parents=True, exist_ok=True)
        path = out / f"server_load_{time.strftime('%Y%m%d-%H%M%S')}.json"
        path.write_text(json.dumps(info, indent=1))
        print(f"saved {path}", flush=True)
    print(json.dumps(info, indent=1) if args.json else f"({info['machine']}, commit {info['commit']}, backend "
                                                        f"{info['backend']}, load average after {load_avg})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
