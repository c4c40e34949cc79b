"""The HTTP server against the official ``openai`` client, on a live uvicorn with a tiny
random model (SmolLM2's tokenizer and chat template): replies equal the core's own
generation, streams parse, memory is per user, every refusal has OpenAI's error shape,
the API key, the body and queue limits, and a client leaving mid-stream stops the work."""

from __future__ import annotations

import base64
import json
import threading
import time

import numpy as np
import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from mlx_synapse.generate import build_prompt, generate  # noqa: E402
from mlx_synapse.memory.bank import MemoryBank  # noqa: E402
from mlx_synapse.server import ServerConfig, create_app  # noqa: E402

from .server_util import live, tiny_model_dir  # noqa: E402
from .test_memory_bank import BagOfWords  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, smollm2_dir):
    from mlx_synapse.loader import load

    return load(str(tiny_model_dir(tmp_path_factory.mktemp("tiny_server"), smollm2_dir)), backend="numpy")


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory):
    model, tok = tiny
    bank = MemoryBank(tmp_path_factory.mktemp("bank") / "m.db", BagOfWords(), backend="numpy")
    app = create_app(model, tok, bank, ServerConfig(parallel=2, max_queue=4, max_body_bytes=64 * 1024))
    with live(app) as url:
        yield url, app.state.synapse


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0, timeout=120)


def _err(r) -> dict:
    """The OpenAI error object of response ``r`` (asserting its shape and a one-line message)."""
    body = r.json()
    assert set(body) == {"error"}, body
    e = body["error"]
    assert set(e) == {"message", "type", "param", "code"}, e
    assert e["message"] and "\n" not in e["message"] and "Traceback" not in e["message"], e
    return e


def test_chat_equals_the_core_and_streams_the_same(client, tiny):
    model, tok = tiny
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]
    want = generate(model, tok, build_prompt(tok, "Name a colour.", system="Be brief."), max_tokens=12)
    r = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=12, extra_body={"memory": False})
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == want
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 12
    assert r.usage.prompt_tokens == len(build_prompt(tok, "Name a colour.", system="Be brief."))

    chunks = list(client.chat.completions.create(model="tiny", messages=msgs, max_tokens=12, stream=True,
                                                 stream_options={"include_usage": True}, extra_body={"memory": False}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert len({c.id for c in chunks}) == 1


def test_text_completion_and_stop_sequence(client, tiny):
    model, tok = tiny
    want = generate(model, tok, "Once upon a time", max_tokens=10)
    r = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=10)
    assert r.object == "text_completion" and r.choices[0].text == want
    # stop at the first character of the second generated word: the text before it, finish 'stop'
    stop = want.split(" ")[2][:2] if len(want.split(" ")) > 2 else want[3:5]
    r = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=10, stop=[stop])
    assert r.choices[0].text == want[:want.index(stop)] and r.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="tiny", prompt="Once upon a time", max_tokens=10, stop=[stop], stream=True))
    assert streamed == want[:want.index(stop)]


def test_logprobs_are_the_models(client, tiny):
    model, tok = tiny
    from mlx_synapse.generate import stream_generate

    ids = build_prompt(tok, "Hi there.")
    want = [(r.token, float(np.asarray(r.logprobs)[r.token]), np.sort(np.asarray(r.logprobs))[::-1][:3])
            for r in stream_generate(model, tok, ids, max_tokens=5)]
    r = client.chat.completions.create(model="t", messages=[{"role": "user", "content": "Hi there."}], max_tokens=5,
                                       logprobs=True, top_logprobs=3, extra_body={"memory": False})
    content = r.choices[0].logprobs.content
    assert [c.token for c in content] == [tok.decode([t]) for t, _, _ in want]
    np.testing.assert_allclose([c.logprob for c in content], [lp for _, lp, _ in want], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose([[x.logprob for x in c.top_logprobs] for c in content], [t for _, _, t in want],
                               rtol=1e-5, atol=1e-5)
    assert content[0].top_logprobs[0].logprob >= content[0].logprob  # greedy: the sampled one is the best
    streamed = [c for ch in client.chat.completions.create(
        model="t", messages=[{"role": "user", "content": "Hi there."}], max_tokens=5, logprobs=True, stream=True,
        extra_body={"memory": False}) if ch.choices and ch.choices[0].logprobs for c in ch.choices[0].logprobs.content]
    assert [c.token for c in streamed] == [c.token for c in content]
    t = client.completions.create(model="t", prompt="Once upon a time", max_tokens=4, logprobs=2).choices[0].logprobs
    assert len(t.tokens) == len(t.token_logprobs) == len(t.top_logprobs) == 4 and t.text_offset[0] == 0
    assert all(len(d) <= 2 and max(d.values()) >= lp for d, lp in zip(t.top_logprobs, t.token_logprobs))


SCHEMA = {"type": "object", "additionalProperties": False, "required": ["colour", "size", "ok"],
          "properties": {"colour": {"enum": ["red", "green", "blue"]}, "size": {"type": "integer", "minimum": 1,
                                                                                 "maximum": 9},
                         "ok": {"type": "boolean"}}}


def test_json_schema_output_parses_and_conforms(client):
    pytest.importorskip("llguidance")
    msgs = [{"role": "user", "content": "Describe a ball as JSON."}]
    free = client.chat.completions.create(model="t", messages=msgs, max_tokens=40, extra_body={"memory": False})
    with pytest.raises(ValueError):  # the random model alone does not write JSON
        json.loads(free.choices[0].message.content)
    for seed in (0, 1, 2):
        r = client.chat.completions.create(
            model="t", messages=msgs, max_tokens=40, temperature=1.0, seed=seed, extra_body={"memory": False},
            response_format={"type": "json_schema", "json_schema": {"name": "ball", "schema": SCHEMA}})
        obj = json.loads(r.choices[0].message.content)
        assert r.choices[0].finish_reason == "stop"
        assert set(obj) == {"colour", "size", "ok"} and obj["colour"] in ("red", "green", "blue")
        assert isinstance(obj["size"], int) and 1 <= obj["size"] <= 9 and isinstance(obj["ok"], bool)
    r = client.chat.completions.create(model="t", messages=msgs, max_tokens=60, extra_body={"memory": False},
                                       response_format={"type": "json_object"}, stream=True)
    chunks = [c for c in r if c.choices]
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text.startswith("{")
    if chunks[-1].choices[0].finish_reason == "stop":  # else cut by max_tokens: a prefix of an object
        assert isinstance(json.loads(text), dict)


def test_models_and_embeddings(client):
    assert [m.id for m in client.models.list().data] == ["mlx-synapse"]
    r = client.embeddings.create(model="enc", input=["my dog", "a cat"])
    got = np.array([d.embedding for d in r.data], np.float32)
    np.testing.assert_allclose(got, BagOfWords()(["my dog", "a cat"]), atol=1e-6)
    b64 = client.embeddings.create(model="enc", input="my dog", encoding_format="base64").data[0].embedding
    np.testing.assert_allclose(np.frombuffer(base64.b64decode(b64), "<f4"), got[0], atol=1e-6)


def test_memory_is_per_user_and_returned_with_the_reply(server, client):
    url, _ = server
    r = httpx.post(url + "/v1/memories", json={"text": "My sister Ana lives in Porto.", "user": "alice"})
    assert r.status_code == 201
    mid = r.json()["id"]
    q = [{"role": "user", "content": "Where does my sister Ana live?"}]
    raw = client.chat.completions.with_raw_response.create(model="t", messages=q, max_tokens=4, user="alice")
    body = json.loads(raw.text)
    assert [m["id"] for m in body["memories"]] == [mid] and body["memories"][0]["score"] > 0.35
    body = json.loads(client.chat.completions.with_raw_response.create(model="t", messages=q, max_tokens=4,
                                                                          user="bob").text)
    assert body["memories"] == []  # bob cannot read alice's memories
    assert httpx.get(url + "/v1/memories", params={"user": "bob"}).json()["data"] == []
    assert httpx.get(url + "/v1/memories/search", params={"user": "alice", "q": "sister Porto"}).json()["data"][0]["id"] == mid
    gone = httpx.delete(url + f"/v1/memories/{mid}", params={"user": "bob"})
    assert gone.status_code == 404 and _err(gone)["code"] == "memory_not_found"
    assert httpx.patch(url + f"/v1/memories/{mid}", json={"text": "x", "user": "bob"}).status_code == 404
    r = httpx.patch(url + f"/v1/memories/{mid}", json={"text": "My sister Ana lives in Lyon.", "user": "alice"})
    assert r.status_code == 200 and r.json()["text"] == "My sister Ana lives in Lyon."
    stats = httpx.get(url + "/v1/memories/stats", params={"user": "alice"}).json()
    assert stats["entries"] == 1 and stats["tiers"]["hot"] == 1 and "users" not in stats
    assert httpx.get(url + "/v1/memories/stats", params={"user": "bob"}).json()["entries"] == 0
    assert httpx.delete(url + f"/v1/memories/{mid}", headers={"X-Synapse-User": "alice"}).json()["deleted"]
    assert httpx.get(url + "/v1/memories", params={"user": "alice"}).json()["data"] == []


def test_chat_learns_what_the_user_says_and_memory_can_be_off(server, client):
    url, _ = server
    msg = [{"role": "user", "content": "My dog is called Pickle."}]
    body = json.loads(client.chat.completions.with_raw_response.create(model="t", messages=msg, max_tokens=2,
                                                                          user="carol").text)
    assert body["memory_learned"] == "added"
    assert [m["text"] for m in httpx.get(url + "/v1/memories", params={"user": "carol"}).json()["data"]] == [
        "My dog is called Pickle."]
    client.chat.completions.create(model="t", messages=[{"role": "user", "content": "My cat is Tom."}], max_tokens=2,
                                   user="dave", extra_body={"memory": False})
    assert httpx.get(url + "/v1/memories", params={"user": "dave"}).json()["data"] == []


BAD = [  # (body or raw bytes, status, code or param)
    (b"{not json", 400, "invalid_json"),
    ({"messages": []}, 422, "messages"),
    ({}, 422, "messages"),
    ({"messages": [{"role": "user", "content": "x"}], "temperature": -1}, 422, "temperature"),
    ({"messages": [{"role": "user", "content": "x"}], "top_p": 0}, 422, "top_p"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, 422, "max_tokens"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, 422, "messages.0.role"),
    ({"messages": [{"role": "user", "content": "x"}], "n": 2}, 400, "n"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 100000}, 400, "max_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}, 400, "tools"),
    ({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "yaml"}}, 400, "response_format.type"),
    ({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema"}}, 400,
     "response_format.json_schema.schema"),
    ({"messages": [{"role": "assistant", "content": "x"}]}, 400, "messages"),
    ({"messages": [{"role": "user", "content": "   "}]}, 400, "invalid_prompt"),
]


@pytest.mark.parametrize("body,status,what", BAD)
def test_bad_requests_get_one_line_openai_errors(server, body, status, what):
    url, _ = server
    kw = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(url + "/v1/chat/completions", **kw)
    assert r.status_code == status, r.text
    e = _err(r)
    assert what in (e["code"], e["param"]), e


def test_other_refusals(server, client):
    url, _ = server
    e = _err(r := httpx.get(url + "/v2/nothing"))
    assert r.status_code == 404 and "/v1/chat/completions" in e["message"]
    big = httpx.post(url + "/v1/chat/completions", content=b"x" * (65 * 1024), headers={"content-type": "application/json"})
    assert big.status_code == 413 and _err(big)["code"] == "body_too_large"

    def chunked():  # no Content-Length: counted while read
        for _ in range(70):
            yield b"y" * 1024

    big = httpx.post(url + "/v1/chat/completions", content=chunked(), headers={"content-type": "application/json"})
    assert big.status_code == 413
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model="t", messages=[{"role": "user", "content": "x"}], temperature=9)
    # a prompt longer than the tiny model's context of 512 tokens
    with pytest.raises(openai.BadRequestError, match="context"):
        client.completions.create(model="t", prompt="word " * 2000, max_tokens=4)


def test_api_key(tiny):
    model, tok = tiny
    with live(create_app(model, tok, None, ServerConfig(api_key="s3cret", memory=False))) as url:
        for key in ("wrong", None):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            r = httpx.get(url + "/v1/models", headers=headers)
            assert r.status_code == 401 and _err(r)["code"] == "invalid_api_key"
        assert httpx.get(url + "/metrics").status_code == 401
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="nope", max_retries=0).models.list()
        ok = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
        assert ok.models.list().data[0].id == "mlx-synapse"
        assert ok.chat.completions.create(model="t", messages=[{"role": "user", "content": "hi"}], max_tokens=2).usage
        assert httpx.get(url + "/health").json()["status"] == "ok"  # open: for load balancers
        assert "<title>mlx_synapse</title>" in httpx.get(url + "/").text


def test_user_keys_bind_a_request_to_its_user(tiny, tmp_path):
    model, tok = tiny
    keys = {"key-of-alice": "alice", "key-of-bob-1": "bob"}
    bank = MemoryBank(tmp_path / "m.db", BagOfWords(), backend="numpy")
    with live(create_app(model, tok, bank, ServerConfig(user_keys=keys))) as url:
        alice, bob = ({"Authorization": f"Bearer {k}"} for k in keys)
        r = httpx.post(url + "/v1/memories", json={"text": "My locker code is 4411."}, headers=alice)
        assert r.status_code == 201 and bank.get(r.json()["id"]).user == "alice"
        assert httpx.get(url + "/v1/memories", headers=bob).json()["data"] == []
        for how in ({"params": {"user": "alice"}}, {"headers": {**bob, "X-Synapse-User": "alice"}}):
            r = httpx.get(url + "/v1/memories", **{"headers": bob, **how})
            assert r.status_code == 403 and _err(r)["code"] == "wrong_user"
        c = openai.OpenAI(base_url=url + "/v1", api_key="key-of-bob-1", max_retries=0)
        with pytest.raises(openai.PermissionDeniedError):
            c.chat.completions.create(model="t", messages=[{"role": "user", "content": "My code?"}], user="alice",
                                      max_tokens=2)
        body = json.loads(c.chat.completions.with_raw_response.create(
            model="t", messages=[{"role": "user", "content": "What is my locker code?"}], max_tokens=2).text)
        assert body["memories"] == []  # bob's own memories: none of alice's
        c = openai.OpenAI(base_url=url + "/v1", api_key="key-of-alice", max_retries=0)
        body = json.loads(c.chat.completions.with_raw_response.create(
            model="t", messages=[{"role": "user", "content": "What is my locker code?"}], max_tokens=2).text)
        assert [m["text"] for m in body["memories"]] == ["My locker code is 4411."]
        assert httpx.get(url + "/v1/memories").status_code == 401


def _wait(cond, timeout=30.0):
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            return False
        time.sleep(0.02)
    return True


def test_queue_bound_429_and_health_stays_fast(tiny):
    model, tok = tiny
    app = create_app(model, tok, None, ServerConfig(memory=False, parallel=1, max_queue=1))
    st = app.state.synapse
    with live(app) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=120)
        msgs = [{"role": "user", "content": "Tell me a long story."}]
        running = c.chat.completions.create(model="t", messages=msgs, max_tokens=300, stream=True)
        next(iter(running))
        waiter = threading.Thread(target=lambda: c.chat.completions.create(model="t", messages=msgs, max_tokens=1))
        waiter.start()
        assert _wait(lambda: st.engine.waiting == 1)
        r = httpx.post(url + "/v1/chat/completions", json={"messages": msgs, "max_tokens": 1})
        assert r.status_code == 429 and _err(r)["code"] == "queue_full" and int(r.headers["retry-after"]) >= 1
        t0 = time.perf_counter()
        h = httpx.get(url + "/health")
        assert h.json()["active"] == 1 and h.json()["waiting"] == 1
        assert time.perf_counter() - t0 < 1.0  # the event loop is not blocked by generation
        metrics = httpx.get(url + "/metrics").text
        assert 'synapse_requests_total{endpoint="/v1/chat/completions",status="429"} 1.0' in metrics
        assert "synapse_queue_depth 1.0" in metrics
        running.close()
        waiter.join(60)
        assert _wait(lambda: st.engine.active == 0 and st.engine.waiting == 0)


def test_client_leaving_mid_stream_stops_generation(server, monkeypatch):
    url, st = server
    # each decode round takes at least 5 ms, so 400 tokens take 2 s or more whatever the
    # machine's speed: the client always leaves before the generation could end by itself
    slow_round = st.engine._round

    def round_5ms(ready):
        time.sleep(0.005)
        return slow_round(ready)

    monkeypatch.setattr(st.engine, "_round", round_5ms)
    before = st.engine.cancelled
    c = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=120)
    s = c.chat.completions.create(model="t", messages=[{"role": "user", "content": "Count to a thousand."}],
                                  max_tokens=400, stream=True, extra_body={"memory": False})
    it = iter(s)
    for _ in range(3):
        next(it)
    s.close()
    assert _wait(lambda: st.engine.active == 0, timeout=20)
    assert st.engine.cancelled == before + 1
    reason, tokens = st.engine.last_finish
    assert reason == "cancelled" and tokens < 400

    # and a non-streamed request whose client gives up after 0.3 s, long before 400 tokens
    before = st.engine.cancelled
    with pytest.raises(httpx.TimeoutException):
        httpx.post(url + "/v1/chat/completions", timeout=0.3, json={
            "messages": [{"role": "user", "content": "Count."}], "max_tokens": 400, "memory": False})
    assert _wait(lambda: st.engine.active == 0, timeout=20)
    assert st.engine.cancelled == before + 1


def test_flood_past_the_queue_gets_429s_and_health_stays_fast(tiny):
    """40 requests at once against 1 slot and a queue of 2: every answer is 200 or 429
    (no 5xx, none lost), and /health answers quickly throughout."""
    from concurrent.futures import ThreadPoolExecutor

    model, tok = tiny
    app = create_app(model, tok, None, ServerConfig(memory=False, parallel=1, max_queue=2))
    with live(app) as url:
        body = {"messages": [{"role": "user", "content": "Hello."}], "max_tokens": 16}
        with ThreadPoolExecutor(40) as pool:
            futures = [pool.submit(httpx.post, url + "/v1/chat/completions", json=body, timeout=120) for _ in range(40)]
            pings = []
            with httpx.Client() as c:
                while not all(f.done() for f in futures):
                    t0 = time.perf_counter()
                    assert c.get(url + "/health").status_code == 200
                    pings.append(time.perf_counter() - t0)
                    time.sleep(0.05)
            codes = sorted(f.result().status_code for f in futures)
    assert set(codes) <= {200, 429} and codes.count(200) >= 3 and codes.count(429) >= 1, codes
    assert pings and float(np.median(pings)) < 0.1, pings


def test_a_failure_mid_stream_ends_the_stream_with_an_error_event(server, monkeypatch):
    from mlx_synapse.generate import GenerationResponse
    from mlx_synapse.server import generation

    url, st = server

    def broken(*a, **kw):
        yield GenerationResponse("Hel", 1, None, 3, 1.0, 1, 1.0, 0.1, 0.0)
        raise RuntimeError("the engine fell over")

    monkeypatch.setattr(generation, "stream_generate", broken)
    body = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 8, "stream": True, "memory": False}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        events = [ln[6:] for ln in r.iter_lines() if ln.startswith("data: ")]
    assert events[-1] == "[DONE]"
    err = json.loads(events[-2])["error"]
    assert err["code"] == "generation_failed" and "fell over" in err["message"] and "\n" not in err["message"]
    assert _wait(lambda: st.engine.active == 0)


@pytest.mark.slow
def test_default_model_answers_from_memory_told_over_http(tmp_path):
    """SmolLM2-135M-Instruct and the default encoder behind the server: a fact told in one
    request is answered in a fresh conversation, and the reply names the memory it used."""
    from mlx_synapse.loader import load

    from .conftest import _or_skip

    model, tok = _or_skip(lambda: load())
    bank = MemoryBank(tmp_path / "m.db", backend="numpy")
    with live(create_app(model, tok, bank, ServerConfig(default_max_tokens=24))) as url:
        c = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=300)
        told = json.loads(c.chat.completions.with_raw_response.create(
            model="m", user="sam", messages=[{"role": "user", "content": "My dog is called Pickle."}]).text)
        assert told["memory_learned"] == "added"
        raw = c.chat.completions.with_raw_response.create(
            model="m", user="sam", messages=[{"role": "user", "content": "What is my dog called?"}])
        body = json.loads(raw.text)
        assert "Pickle" in body["choices"][0]["message"]["content"]
        assert [m["text"] for m in body["memories"]] == ["My dog is called Pickle."]
        other = json.loads(c.chat.completions.with_raw_response.create(
            model="m", user="lee", messages=[{"role": "user", "content": "What is my dog called?"}]).text)
        assert other["memories"] == [] and "Pickle" not in other["choices"][0]["message"]["content"]


def test_cors_only_for_the_allowed_origins(tiny):
    model, tok = tiny
    pre = {"Origin": "http://app.example", "Access-Control-Request-Method": "POST"}
    with live(create_app(model, tok, None, ServerConfig(memory=False))) as url:
        r = httpx.options(url + "/v1/chat/completions", headers=pre)
        assert "access-control-allow-origin" not in r.headers
    with live(create_app(model, tok, None, ServerConfig(memory=False, api_key="k" * 8,
                                                         allowed_origins=["http://app.example"]))) as url:
        r = httpx.options(url + "/v1/chat/completions", headers=pre)  # preflight needs no key
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://app.example"
        r = httpx.options(url + "/v1/chat/completions", headers={**pre, "Origin": "http://evil.example"})
        assert r.headers.get("access-control-allow-origin") != "http://evil.example"
