"""The generate CLI and API on bad input: one line and an exit code, never a traceback.

Covers settings out of range (the same on both backends), prompts longer than the
context, invalid UTF-8 on stdin and Ctrl-C during generation, on a tiny local model
(context 128) converted from a GGUF with the tiny tokenizer.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlx_synapse.convert.gguf import convert_gguf
from mlx_synapse.generate import generate, main, stream_generate

from .gguf_writer_util import Q, hf_tiny_model, write_hf_as_gguf

ROOT = Path(__file__).resolve().parents[1]
CTX = 128  # the tiny model's max_position_embeddings


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    path, _ = write_hf_as_gguf(hf_tiny_model("llama"), d / "tiny.gguf", Q.F32)
    return convert_gguf(path, d / "model", dtype="float32", progress=False)


@pytest.fixture(scope="module")
def models(tiny_dir):
    from mlx_synapse.loader import load

    return {b: load(str(tiny_dir), backend=b) for b in ("numpy", "mlx")}


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


BAD_OPTIONS = [
    (["--max-tokens", "-5"], "max_tokens (--max-tokens)"),
    (["--temp", "-0.5"], "temp (--temp)"),
    (["--temp", "nan"], "temp (--temp)"),
    (["--top-p", "0"], "top_p (--top-p)"),
    (["--top-p", "1.5"], "top_p (--top-p)"),
    (["--top-k", "-1"], "top_k (--top-k)"),
    (["--min-p", "-0.1"], "min_p (--min-p)"),
    (["--min-p", "1.1"], "min_p (--min-p)"),
    (["--min-p", "1"], "min_p (--min-p)"),
    (["--repetition-penalty", "0"], "repetition_penalty (--repetition-penalty)"),
    (["--repetition-penalty", "-2"], "repetition_penalty (--repetition-penalty)"),
    (["--repetition-context-size", "0"], "repetition_context_size (--repetition-context-size)"),
    (["--max-kv-size", "0"], "max_kv_size (--max-kv-size)"),
    (["--max-kv-size", "4"], "max_kv_size (--max-kv-size)"),
    (["--max-kv-size", "7"], "max_kv_size (--max-kv-size)"),
    (["--seed", "-1"], "seed (--seed)"),
    (["--max-tokens", "abc"], "argument --max-tokens/-m: invalid int value: 'abc'"),
    (["--kv-bits", "3"], "argument --kv-bits: invalid choice"),
]


def _main(argv) -> int:
    try:
        return main(argv)
    except SystemExit as e:  # argparse: a value that is not a number at all
        return e.code


@pytest.mark.parametrize("argv,named", BAD_OPTIONS)
def test_cli_rejects_bad_options_in_one_line(tiny_dir, capsys, argv, named):
    rc = _main(["--model", str(tiny_dir), "--backend", "numpy", "-p", "hi", *argv])
    assert rc == 2
    assert named in _one_line(capsys.readouterr().err)


@pytest.mark.parametrize("backend", ["numpy", "mlx"])
@pytest.mark.parametrize("kw", [dict(max_tokens=-5), dict(max_tokens=-1), dict(temp=-1.0), dict(top_p=0.0),
                                dict(top_k=-3), dict(min_p=1.5), dict(repetition_penalty=0.0),
                                dict(max_kv_size=0)])
def test_api_rejects_bad_options_on_both_backends(models, backend, kw):
    model, tok = models[backend]
    name = next(iter(kw))
    with pytest.raises(ValueError, match=rf"\[generate\] {name} "):
        generate(model, tok, "hello", **kw)
    with pytest.raises(ValueError, match=rf"\[generate\] {name} "):
        next(stream_generate(model, tok, "hello", **kw))


@pytest.mark.parametrize("backend", ["numpy", "mlx"])
def test_max_tokens_zero_is_zero_on_both_backends(models, backend):
    model, tok = models[backend]
    assert list(stream_generate(model, tok, "hello", max_tokens=0)) == []
    assert len(list(stream_generate(model, tok, "hello", max_tokens=3))) <= 3


def _long_text(words: int) -> str:
    return " ".join(f"w{i}" for i in range(words))


@pytest.mark.parametrize("backend", ["numpy", "mlx"])
def test_prompt_longer_than_the_context_is_refused(tiny_dir, models, backend, capsys):
    model, tok = models[backend]
    ids = tok.encode(_long_text(300))
    assert len(ids) > CTX
    with pytest.raises(ValueError, match=rf"prompt is {len(ids)} tokens but the model's context .* is {CTX}"):
        generate(model, tok, ids, max_tokens=1)
    rc = main(["--model", str(tiny_dir), "--backend", backend, "-p", _long_text(300), "-m", "1"])
    out = capsys.readouterr()
    assert rc == 1
    assert f"is {CTX}; shorten it, or pass --truncate-prompt" in _one_line(out.err)
    assert out.out == ""
    r = _cli(["--model", str(tiny_dir), "--backend", backend, "-m", "1"], input=_long_text(300).encode())
    assert r.returncode == 1
    assert "shorten it, or pass --truncate-prompt" in _one_line(r.stderr.decode())


@pytest.mark.parametrize("backend", ["numpy", "mlx"])
def test_truncate_prompt_keeps_the_end(tiny_dir, models, backend, capsys):
    model, tok = models[backend]
    ids = tok.encode(_long_text(300))
    kept = next(stream_generate(model, tok, ids, max_tokens=1, truncate_prompt=True))
    assert kept.prompt_tokens == CTX
    # The kept tokens are the last CTX: the same first token as feeding them directly.
    direct = next(stream_generate(model, tok, ids[-CTX:], max_tokens=1))
    assert kept.token == direct.token
    rc = main(["--model", str(tiny_dir), "--backend", backend, "-p", _long_text(300), "-m", "2",
               "--truncate-prompt", "--no-chat-template"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert f"Prompt: {CTX} tokens" in out.out


@pytest.mark.parametrize("backend", ["numpy", "mlx"])
def test_generation_stops_at_the_context(tiny_dir, models, backend, capsys):
    model, tok = models[backend]
    eos = list(tok.eos_token_ids)

    def no_eos(tokens, logits):  # keep the random tiny model talking until the bound stops it
        logits[..., eos] = -1e9
        return logits

    ids = tok.encode(_long_text(300))[: CTX - 4]
    steps = list(stream_generate(model, tok, ids, max_tokens=50, logits_processors=[no_eos]))
    # Positions 0 .. CTX-1 are run: the prompt's CTX-4 and 4 generated tokens fed back, plus the last one.
    assert len(steps) == 5 and steps[-1].finish_reason == "length" and steps[-1].generation_tokens == 5
    short = list(stream_generate(model, tok, ids[:10], max_tokens=7, logits_processors=[no_eos]))
    assert len(short) == 7  # far from the bound: max_tokens decides
    text = " ".join(f"w{i}" for i in range(300))
    n_prompt = len(tok.encode(text))
    rc = main(["--model", str(tiny_dir), "--backend", backend, "-p", text, "-m", "500", "--truncate-prompt",
               "--no-chat-template"])
    out = capsys.readouterr()
    assert rc == 0 and n_prompt > CTX
    assert f"Generation: 1 tokens" in out.out  # the truncated prompt fills the context: one token fits
    assert f"the reply fill the model's context of {CTX} tokens" in _one_line(out.err)


def test_prompt_longer_than_max_kv_size_is_refused(tiny_dir, capsys):
    rc = main(["--model", str(tiny_dir), "--backend", "numpy", "-p", _long_text(30), "-m", "1",
               "--max-kv-size", "16", "--no-chat-template"])
    assert rc == 1
    assert "but --max-kv-size is 16" in _one_line(capsys.readouterr().err)


def _cli(args, **kw):
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    return subprocess.run([sys.executable, "-m", "mlx_synapse.generate", *args], cwd=ROOT, env=env,
                          capture_output=True, timeout=120, **kw)


def test_invalid_utf8_on_stdin(tiny_dir):
    r = _cli(["--model", str(tiny_dir), "--backend", "numpy"], input=b"hello \xff\xfe world")
    err = r.stderr.decode()
    assert r.returncode == 2
    assert "stdin is not valid UTF-8 (byte 0xff at offset 6)" in _one_line(err)
    r = _cli(["--model", str(tiny_dir), "--backend", "numpy", "-p", "-", "-m", "2", "--no-chat-template"],
             input="héllo".encode())
    assert r.returncode == 0, r.stderr.decode()


_STALLING_RUN = """
import sys, time
import mlx_synapse.generate as g
from mlx_synapse.generate import GenerationResponse

def slow_stream(*a, **k):
    for i in range(3):
        yield GenerationResponse(f"tok{i} ", i, None, 1, 1.0, i + 1, 1.0, 0.0, 0.0)
    print("READY", file=sys.stderr, flush=True)
    time.sleep(60)
    yield GenerationResponse("never ", 9, None, 1, 1.0, 4, 1.0, 0.0, 0.0)

g.stream_generate = slow_stream
sys.exit(g.main(sys.argv[1:]))
"""


def test_ctrl_c_stops_cleanly_with_exit_130(tiny_dir):
    p = subprocess.Popen([sys.executable, "-c", _STALLING_RUN, "--model", str(tiny_dir), "--backend", "numpy",
                          "-p", "hi"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    line = ""
    while "READY" not in line and time.monotonic() < deadline:
        line = p.stderr.readline()
        if not line and p.poll() is not None:
            break
    assert "READY" in line, p.stderr.read()
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 130
    assert out == "tok0 tok1 tok2 \n"  # the text so far, its line ended
    assert _one_line(err) == "[interrupted: generation stopped by Ctrl-C]"


_values = st.one_of(st.integers(-10**12, 10**12).map(str), st.floats(allow_nan=True).map(repr),
                    st.sampled_from(["", "x", "1e999", "-0", "0x10", " 3", "inf", "--"]),
                    st.text(max_size=6))
_FLAGS = ["--max-tokens", "--temp", "--top-p", "--top-k", "--min-p", "--repetition-penalty",
          "--repetition-context-size", "--seed", "--max-kv-size", "--kv-bits"]


@settings(max_examples=40, deadline=20000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(picks=st.lists(st.tuples(st.sampled_from(_FLAGS), _values), min_size=1, max_size=3))
def test_property_cli_bad_values_are_one_line_or_success(tiny_dir, capsys, picks):
    argv = ["--model", str(tiny_dir), "--backend", "numpy", "-p", "hi", "-m", "1"]
    for flag, value in picks:
        if flag == "--max-tokens" and value.strip().lstrip("+").isdigit() and int(value) > 4:
            value = "4"  # a valid large budget is just slow: the time bound is for errors
        argv += [f"{flag}={value}"]
    start = time.monotonic()
    rc = _main(argv)
    out = capsys.readouterr()
    assert time.monotonic() - start < 20
    if rc != 0:
        assert rc in (1, 2)
        assert _one_line(out.err).startswith(("error: ", "python -m mlx_synapse.generate: error: "))
    else:  # success: statistics printed, unless --max-tokens=0 asked for nothing
        assert "Traceback" not in out.err
        assert "Generation:" in out.out or ("--max-tokens", "0") in picks or out.out == "\n"


@settings(max_examples=60, deadline=10000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kw=st.fixed_dictionaries({}, optional={
    "max_tokens": st.integers(-5, 3), "temp": st.floats(-2, 3), "top_p": st.floats(-1, 2),
    "top_k": st.integers(-3, 5), "min_p": st.floats(-1, 2), "repetition_penalty": st.floats(-1, 3),
    "max_kv_size": st.integers(-2, 40), "seed": st.integers(-3, 2**33)}),
    backend=st.sampled_from(["numpy", "mlx"]))
def test_property_api_rejects_or_generates(models, kw, backend):
    model, tok = models[backend]
    try:
        pieces = list(stream_generate(model, tok, "hello there", **{"max_tokens": 2, **kw}))
    except ValueError as e:
        assert str(e).startswith("[generate] ") and "\n" not in str(e)
        return
    assert len(pieces) <= max(kw.get("max_tokens", 2), 0)
