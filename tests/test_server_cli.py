"""``python -m mlx_synapse.server`` as a process: refuses to listen beyond loopback
without an API key; a SIGKILL during memory writes loses no acknowledged write; on SIGTERM lets the reply being streamed finish, then exits
(with SIGTERM's status, as uvicorn re-raises the signal after its graceful shutdown)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from .server_util import free_port, tiny_model_dir  # noqa: E402


def _run(*args, **kw):
    return subprocess.run([sys.executable, "-m", "mlx_synapse.server", *args], capture_output=True, text=True,
                          timeout=120, **kw)


def test_public_host_needs_an_api_key(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "MLX_SYNAPSE_API_KEY"}
    r = _run("--host", "0.0.0.0", "--model", str(tmp_path), env=env)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.stderr
    assert "API key" in lines[0] and "127.0.0.1" in lines[0]
    r = _run("--api-key-file", str(tmp_path / "missing"), env=env)
    assert r.returncode == 2 and "--api-key-file" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_sigterm_lets_the_running_stream_finish(tmp_path, smollm2_dir):
    model = tiny_model_dir(tmp_path, smollm2_dir)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mlx_synapse.server", "--model", str(model), "--backend", "numpy",
                             "--no-memory", "--port", str(port), "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.monotonic()
        while True:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() - t0 < 90, proc.stderr.read() if proc.poll() else ""
            time.sleep(0.2)
        body = {"messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 40, "stream": True,
                "stream_options": {"include_usage": True}}
        events = []
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    if len(events) == 3:
                        proc.send_signal(signal.SIGTERM)
        assert events[-1] == "[DONE]"
        assert json.loads(events[-2])["usage"]["completion_tokens"] == 40  # finished, not cut
        # uvicorn re-raises the signal once its shutdown is done, so the exit is SIGTERM's own
        assert proc.wait(30) in (0, -signal.SIGTERM)
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _start(args, port):
    proc = subprocess.Popen([sys.executable, "-m", "mlx_synapse.server", *args, "--port", str(port),
                             "--log-level", "warning"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    while True:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() - t0 > 120:
            proc.kill()
            raise AssertionError(proc.stderr.read())
        time.sleep(0.2)


def test_sigkill_during_memory_writes_keeps_every_acknowledged_write(tmp_path, smollm2_dir):
    """The server is killed (SIGKILL) while a client adds memories as fast as it can; the
    database then opens cleanly and holds every memory whose 201 the client received."""
    from mlx_synapse.memory.bank import MemoryBank

    model, db = tiny_model_dir(tmp_path, smollm2_dir), tmp_path / "m.db"
    proc, url = _start(["--model", str(model), "--backend", "numpy", "--db", str(db)], free_port())
    acked, stop = [], threading.Event()

    def writer():
        with httpx.Client(timeout=10) as c:
            i = 0
            while not stop.is_set():
                try:
                    r = c.post(url + "/v1/memories", json={"text": f"Fact number {i} is about item {i * 7}.",
                                                           "user": "kim"})
                except httpx.TransportError:
                    return
                if r.status_code == 201:
                    acked.append((r.json()["id"], r.json()["text"]))
                i += 1

    t = threading.Thread(target=writer)
    try:
        t.start()
        assert _until(lambda: len(acked) >= 20, 120), "no writes acknowledged"
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        stop.set()
        t.join(30)
        if proc.poll() is None:
            proc.kill()
    with MemoryBank(db, backend="numpy") as bank:
        kept = {e.id: e.text for e in bank.list(user="kim")}
    assert len(acked) >= 20 and all(kept.get(i) == text for i, text in acked), (len(acked), len(kept))


def _until(cond, timeout):
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            return False
        time.sleep(0.05)
    return True


def test_user_keys_file_is_checked(tmp_path):
    bad = tmp_path / "keys"
    bad.write_text("alice short\n")
    r = _run("--user-keys", str(bad))
    assert r.returncode == 2 and "line 1" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = _run("--user-keys", str(tmp_path / "none"))
    assert r.returncode == 2 and "not found" in r.stderr
