"""Continuous batching in the server (``server/engine.py``): concurrent streams of a NumPy
model are decoded in one batched engine step per round, and every reply is still exactly
what the core generates for that request alone -- greedy and seeded sampling, stop strings,
logprobs, structured output -- with streams joining, finishing and leaving at different
times.  ``/health`` counts the batched steps, so a server that silently stopped batching
fails here too."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from mlx_synapse.generate import build_prompt, generate, stream_generate  # noqa: E402
from mlx_synapse.server import ServerConfig, create_app  # noqa: E402

from .server_util import live, tiny_model_dir  # noqa: E402

TEXTS = ["Name a colour.", "Tell me a long story about a dragon and a knight.", "Hi", "What is 2+2?",
         "Write a haiku.", "List three fruits please.", "Why is the sky blue?", "Say something."]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, smollm2_dir):
    from mlx_synapse.loader import load

    model, tok = load(str(tiny_model_dir(tmp_path_factory.mktemp("tiny_batch"), smollm2_dir)), backend="numpy")
    if model.engine is None:
        pytest.skip(f"the compiled CPU engine is unavailable ({model.engine_status})")
    return model, tok


def _chat(url, text, **extra):
    body = {"messages": [{"role": "user", "content": text}], "memory": False, "stream": True,
            "stream_options": {"include_usage": True}, **extra}
    out, lps, finish, usage = "", [], None, None
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            c = json.loads(line[6:])
            assert "error" not in c, c
            if c.get("usage"):
                usage = c["usage"]
            if c["choices"]:
                ch = c["choices"][0]
                out += ch["delta"].get("content") or ""
                finish = ch["finish_reason"] or finish
                if ch.get("logprobs"):
                    lps += [x["logprob"] for x in ch["logprobs"]["content"]]
    return {"text": out, "finish": finish, "logprobs": lps, "tokens": usage["completion_tokens"]}


def _together(url, jobs):
    """Run ``jobs`` [(text, extra)] at once (a barrier lines their starts up); results in order."""
    results, errors = [None] * len(jobs), []
    gate = threading.Barrier(len(jobs))

    def run(i, text, extra):
        try:
            gate.wait()
            results[i] = _chat(url, text, **extra)
        except Exception as e:  # reported below, with the job
            errors.append((i, repr(e)))

    threads = [threading.Thread(target=run, args=(i, t, e)) for i, (t, e) in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    return results


def _alone(model, tok, text, max_tokens, **opts):
    return generate(model, tok, build_prompt(tok, text), max_tokens=max_tokens, **opts)


def test_concurrent_streams_are_batched_and_equal_the_core_alone(tiny):
    model, tok = tiny
    app = create_app(model, tok, None, ServerConfig(memory=False, parallel=8, max_queue=8))
    st = app.state.synapse
    # different prompt lengths and reply lengths: streams finish (and the batch shrinks) at different steps
    jobs = [(t, {"max_tokens": 20 + 7 * i}) for i, t in enumerate(TEXTS)]
    with live(app) as url:
        got = _together(url, jobs)
        health = httpx.get(url + "/health").json()
    for (text, extra), r in zip(jobs, got):
        assert r["text"] == _alone(model, tok, text, extra["max_tokens"]), text
        assert r["tokens"] == extra["max_tokens"] and r["finish"] == "length"
    # 8 streams of 20..69 tokens decoded together: most steps carry several rows
    assert health["batched_steps"] > 10 and health["batched_rows"] > 3 * health["batched_steps"], health


def test_sampling_stops_logprobs_and_schema_stay_per_request(tiny):
    """Seeded sampling, a stop string, logprobs and a JSON schema in one batch with plain
    greedy streams: each as the core gives it alone."""
    pytest.importorskip("llguidance")
    model, tok = tiny
    app = create_app(model, tok, None, ServerConfig(memory=False, parallel=6, max_queue=6))
    greedy = _alone(model, tok, TEXTS[1], 30)
    stop = greedy.split(" ")[3][:2] if len(greedy.split(" ")) > 3 else greedy[5:7]
    schema = {"type": "object", "additionalProperties": False, "required": ["size"],
              "properties": {"size": {"type": "integer", "minimum": 1, "maximum": 9}}}
    jobs = [
        (TEXTS[0], {"max_tokens": 40, "temperature": 0.9, "seed": 7}),
        (TEXTS[1], {"max_tokens": 30, "stop": [stop]}),
        (TEXTS[2], {"max_tokens": 25, "logprobs": True}),
        (TEXTS[3], {"max_tokens": 40, "temperature": 1.0, "seed": 3,
                    "response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}}),
        (TEXTS[4], {"max_tokens": 40, "repetition_penalty": 1.3}),
        (TEXTS[5], {"max_tokens": 40}),
    ]
    with live(app) as url:
        before = app.state.synapse.engine.batched_steps
        got = _together(url, jobs)
        assert app.state.synapse.engine.batched_steps > before
    assert got[0]["text"] == _alone(model, tok, TEXTS[0], 40, temp=0.9, seed=7)
    assert got[1]["text"] == greedy[:greedy.index(stop)] and got[1]["finish"] == "stop"
    want = [float(np.asarray(r.logprobs)[r.token]) for r in stream_generate(model, tok, build_prompt(tok, TEXTS[2]),
                                                                             max_tokens=25)]
    np.testing.assert_array_equal(np.float32(got[2]["logprobs"]), np.float32(want))
    obj = json.loads(got[3]["text"])
    assert set(obj) == {"size"} and 1 <= obj["size"] <= 9
    assert got[4]["text"] == _alone(model, tok, TEXTS[4], 40, repetition_penalty=1.3)
    assert got[5]["text"] == _alone(model, tok, TEXTS[5], 40)


def test_a_stream_that_leaves_does_not_disturb_the_others(tiny):
    model, tok = tiny
    app = create_app(model, tok, None, ServerConfig(memory=False, parallel=4, max_queue=4))
    st = app.state.synapse
    with live(app) as url:
        left = threading.Event()

        def leaver():
            body = {"messages": [{"role": "user", "content": "Count to a thousand."}], "memory": False,
                    "stream": True, "max_tokens": 400}
            with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as r:
                for i, _ in enumerate(r.iter_lines()):
                    if i > 8:
                        break
            left.set()

        t = threading.Thread(target=leaver)
        t.start()
        got = _together(url, [(TEXTS[i], {"max_tokens": 60}) for i in (0, 3, 6)])
        t.join(60)
        assert left.is_set()
        deadline = time.monotonic() + 20
        while st.engine.active and time.monotonic() < deadline:
            time.sleep(0.02)
        assert st.engine.active == 0 and st.engine.cancelled >= 1
    for i, r in zip((0, 3, 6), got):
        assert r["text"] == _alone(model, tok, TEXTS[i], 60)


def test_batch_off_and_one_slot_never_batch(tiny):
    model, tok = tiny
    for cfg in (ServerConfig(memory=False, parallel=4, batch=False), ServerConfig(memory=False, parallel=1)):
        app = create_app(model, tok, None, cfg)
        with live(app) as url:
            got = _together(url, [(TEXTS[i], {"max_tokens": 16}) for i in range(3)])
            assert httpx.get(url + "/health").json()["batched_steps"] == 0
        for i, r in enumerate(got):
            assert r["text"] == _alone(model, tok, TEXTS[i], 16)


@pytest.mark.slow
def test_default_model_eight_streams_batched_equal_alone():
    """The default model (SmolLM2-135M-Instruct, 4-bit, NumPy backend + the C engine) behind
    the server: eight concurrent greedy streams, each the core's own reply to its prompt,
    decoded in batches (the load figures are benchmarks/server_load.py's)."""
    from mlx_synapse.loader import load

    model, tok = load(None, backend="numpy")
    if model.engine is None:
        pytest.skip(f"the compiled CPU engine is unavailable ({model.engine_status})")
    app = create_app(model, tok, None, ServerConfig(memory=False, parallel=8, max_queue=8))
    jobs = [(t, {"max_tokens": 24}) for t in TEXTS]
    with live(app) as url:
        got = _together(url, jobs)
        health = httpx.get(url + "/health").json()
    for (text, extra), r in zip(jobs, got):
        assert r["text"] == _alone(model, tok, text, 24), text
    assert health["batched_steps"] > 0 and health["batched_rows"] >= 4 * health["batched_steps"], health


def test_memory_turns_use_the_reader_even_in_a_batch(tiny, tmp_path, monkeypatch, smollm2_dir):
    """A chat turn that shows memories is answered with the reader adapter on, as the chat
    does; concurrent memory-less streams in the same batches see the base model only."""
    mx = pytest.importorskip("mlx.core")
    from mlx_synapse.learn import apply_lora, load_trainable, lora_layers, save_adapter
    from mlx_synapse.loader import load
    from mlx_synapse.memory.bank import MemoryBank

    from .test_memory_bank import BagOfWords

    (tmp_path / "tiny_reader").mkdir()
    path = tiny_model_dir(tmp_path / "tiny_reader", smollm2_dir)
    trainable, _ = load_trainable(path)
    mx.random.seed(1)
    apply_lora(trainable, num_layers=-1, rank=4, scale=2.0)
    rng = np.random.default_rng(5)
    for layer in lora_layers(trainable).values():
        layer.lora_b = mx.array(rng.normal(0, 0.3, layer.lora_b.shape).astype(np.float32))
    save_adapter(trainable, tmp_path / "reader")

    def ask_all(reader_setting, jobs, parallel):
        monkeypatch.setenv("MLX_SYNAPSE_READER", reader_setting)
        model, tok = load(str(path), backend="numpy")
        if model.engine is None:
            pytest.skip(f"the compiled CPU engine is unavailable ({model.engine_status})")
        bank = MemoryBank(tmp_path / f"m_{reader_setting[-6:]}_{parallel}.db", BagOfWords(), backend="numpy")
        bank.add("My sister lives in Coimbra.", user="u")
        bank.add("My dog is called Pickle.", user="u")
        app = create_app(model, tok, bank, ServerConfig(parallel=parallel, max_queue=8))
        try:
            with live(app) as url:
                got = _together(url, jobs) if parallel > 1 else [_chat(url, t, **e) for t, e in jobs]
                health = httpx.get(url + "/health").json()
        finally:
            bank.close()
        return got, health, model, tok

    ask = {"memory": True, "user": "u", "max_tokens": 24}
    jobs = [("Where does my sister live?", ask), ("What is my dog called?", ask),
            (TEXTS[0], {"max_tokens": 24}), (TEXTS[3], {"max_tokens": 24})]
    alone, _, _, _ = ask_all(str(tmp_path / "reader"), jobs, parallel=1)
    bare, _, _, _ = ask_all("0", jobs, parallel=1)
    together, health, model, tok = ask_all(str(tmp_path / "reader"), jobs, parallel=4)
    assert health["batched_steps"] > 0, health
    # the reader answers the memory turns: not the base model's reply ...
    assert [r["text"] for r in alone[:2]] != [r["text"] for r in bare[:2]]
    # ... and batching changes no reply: memory turns with the reader, the others without
    assert [r["text"] for r in together] == [r["text"] for r in alone]
    for (text, extra), r in zip(jobs[2:], together[2:]):
        assert r["text"] == _alone(model, tok, text, 24) == bare[jobs.index((text, extra))]["text"]
