"""A live uvicorn server in a thread of the test process, on a free loopback port, and
the tiny model the server tests run on (random weights, the default model's tokenizer)."""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
import time

from .test_hardening_chat_cli import _tiny_llama


def tiny_model_dir(out, smollm2_dir):
    """A 2-layer random Llama (context 512) with SmolLM2's tokenizer and chat template."""
    _tiny_llama(out)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(smollm2_dir / f, out / f)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def live(app):
    """Serve ``app`` with uvicorn until the block ends; yields the base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    t0 = time.monotonic()
    while not server.started:
        if not thread.is_alive() or time.monotonic() - t0 > 30:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
