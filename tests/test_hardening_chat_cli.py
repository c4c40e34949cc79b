"""The chat on a tiny random model with the default model's tokenizer (so the prompt is
ChatML and counted in real tokens): a 50,000-character line is answered quickly within
the context and stored as chunks; Ctrl-C in `python -m mlx_synapse.chat` stops a reply
and keeps the session, and at the prompt ends the chat without a traceback."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from .conftest import _or_skip
from .test_hardening_chat import _paste
from .test_memory_bank import BagOfWords

CONTEXT = 512


def _tiny_llama(out, vocab=49152, hidden=64, layers=2, heads=2, kv_heads=1, ff=96, seed=0):
    """A random Llama checkpoint (config.json + model.safetensors) written with NumPy."""
    import json

    import numpy as np
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    hd = hidden // heads

    def w(*shape):
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    t = {"model.embed_tokens.weight": w(vocab, hidden), "model.norm.weight": np.ones(hidden, np.float32)}
    for i in range(layers):
        p = f"model.layers.{i}."
        t.update({p + "self_attn.q_proj.weight": w(heads * hd, hidden), p + "self_attn.k_proj.weight": w(kv_heads * hd, hidden),
                  p + "self_attn.v_proj.weight": w(kv_heads * hd, hidden), p + "self_attn.o_proj.weight": w(hidden, heads * hd),
                  p + "mlp.gate_proj.weight": w(ff, hidden), p + "mlp.up_proj.weight": w(ff, hidden),
                  p + "mlp.down_proj.weight": w(hidden, ff), p + "input_layernorm.weight": np.ones(hidden, np.float32),
                  p + "post_attention_layernorm.weight": np.ones(hidden, np.float32)})
    save_file(t, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=hidden, intermediate_size=ff,
               num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=vocab,
               max_position_embeddings=CONTEXT, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True,
               bos_token_id=1, eos_token_id=2, hidden_act="silu", torch_dtype="float32")
    (out / "config.json").write_text(json.dumps(cfg))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, smollm2_dir):
    """A 2-layer random Llama (hidden 64, context 512) with SmolLM2's tokenizer files."""
    out = tmp_path_factory.mktemp("tiny_chat")
    _tiny_llama(out)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(smollm2_dir / f, out / f)
    return out


def test_huge_line_replies_fast_within_the_context(tiny_dir, tmp_path):
    from mlx_synapse.assistant import Assistant
    from mlx_synapse.loader import load
    from mlx_synapse.memory.bank import MemoryBank

    model, tok = load(str(tiny_dir), backend="numpy")
    with MemoryBank(tmp_path / "m.db", BagOfWords(), backend="numpy") as bank:
        a = Assistant(model, tok, bank, user="me", max_tokens=32)
        assert a.context == CONTEXT
        line = _paste(50_000, seed=1) + " What did I just paste?"
        t0 = time.perf_counter()
        pieces = a.stream_respond(line)
        next(pieces)
        first = time.perf_counter() - t0
        for _ in pieces:
            pass
        assert first < 20.0, first  # it hung for 500 s before
        assert CONTEXT - 32 - 40 < a.last.prompt_tokens <= CONTEXT - 32
        assert any("only its last" in n for n in a.last.notes)
        stored = bank.list(user="me")
        assert len(stored) > 80 and max(len(e.text) for e in stored) <= a.chunk_chars
        # Later turns stay small: a chunk is shown, not a 50,000-character memory.
        r = a.respond(stored[5].text.split(".")[0] + "?")
        assert r.prompt_tokens <= CONTEXT - 32 and len(r.memories) >= 1
        assert sum(len(tok.encode(e.text)) for e, _ in r.memories) <= a.memory_tokens


SLOW = """
import sys, time
import mlx_synapse.assistant as A
real = A.stream_generate
def slow(*a, **k):  # a reply long enough to interrupt
    for r in real(*a, **k):
        time.sleep(0.05)
        yield r
A.stream_generate = slow
from mlx_synapse.chat import main
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_stops_a_reply_then_ends_the_chat(tiny_dir, tmp_path):
    import pty
    import select

    from mlx_synapse.memory import find_minilm_dir

    _or_skip(find_minilm_dir)
    env = dict(os.environ, MLX_SYNAPSE_MEMORY_DB=str(tmp_path / "m.db"))
    argv = [sys.executable, "-c", SLOW, "--user", "kim", "--max-tokens", "400", "--model", str(tiny_dir),
            "--backend", "numpy"]
    master, slave = pty.openpty()
    p = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=subprocess.PIPE, env=env, close_fds=True)
    os.close(slave)
    buf = b""

    def read_until(marker: bytes, timeout=120.0):
        nonlocal buf
        deadline = time.monotonic() + timeout
        while marker not in buf:
            assert time.monotonic() < deadline, f"no {marker!r} in {buf.decode(errors='replace')!r}"
            if select.select([master], [], [], 0.5)[0]:
                buf += os.read(master, 4096)
        head, buf = buf.split(marker, 1)
        return head.decode(errors="replace")

    try:
        read_until(b"\n> ")
        os.write(master, b"My favourite tree is the rowan.\n")
        read_until(b"rowan.\r\n")  # the terminal's echo; the reply follows
        time.sleep(2.0)
        p.send_signal(signal.SIGINT)
        reply = read_until(b" [stopped]")
        assert reply.strip(), "nothing was generated before Ctrl-C"
        read_until(b"\n> ")  # the session goes on
        os.write(master, b"/memories\n")
        listed = read_until(b"\n> ")
        assert "My favourite tree is the rowan." in listed
        p.send_signal(signal.SIGINT)  # at the prompt: the end
        assert p.wait(timeout=30) == 0
        err = p.stderr.read().decode()
        assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    finally:
        if p.poll() is None:
            p.kill()
        os.close(master)
