"""The OpenAI endpoints (chat, completions, models, embeddings) and ``/health``.

A generation holds one of the engine's slots from admission to its last token; a
stream's first token is produced before the response starts, so a prompt the model
cannot take is a 4xx, not a broken stream. The client's leaving (a closed stream, or a
disconnect while a non-streamed reply is generated) closes the generator at once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import math
import secrets
import time
from typing import Optional

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from .errors import ApiError, log
from .generation import StopText, chat_stream, completion_stream
from .structured import GrammarProcessor, grammar_for, ll_tokenizer
from .memories import _check_chars, entry_json, user_of
from .schemas import ChatRequest, CompletionRequest, EmbeddingRequest

router = APIRouter()


def _state(request: Request):
    return request.app.state.synapse


def _sampling(st, req) -> tuple:
    """``(max_tokens, stream_generate options)`` for ``req``, checked against the server's limits."""
    if req.n != 1:
        raise ApiError(400, f"n={req.n} is not supported; this server returns one choice per request (n=1). "
                            "Send several requests instead.", param="n", code="unsupported")
    if len(req.stops()) > 4:
        raise ApiError(400, f"'stop' has {len(req.stops())} sequences; at most 4 are allowed.", param="stop")
    want = getattr(req, "max_completion_tokens", None) or req.max_tokens or st.config.default_max_tokens
    if want > st.config.max_tokens_limit:
        raise ApiError(400, f"max_tokens={want} is more than this server allows ({st.config.max_tokens_limit}); "
                            "ask for fewer or start the server with a larger --max-tokens-limit.",
                       param="max_tokens", code="max_tokens_too_large")
    c = st.config
    opts = dict(temp=req.temperature if req.temperature is not None else c.temperature,
                top_p=req.top_p if req.top_p is not None else 1.0, top_k=req.top_k or 0, min_p=req.min_p or 0.0,
                repetition_penalty=req.repetition_penalty, seed=req.seed)
    return want, opts


def _finite(lp: float) -> float:
    """JSON has no infinities: a forbidden token's -inf is reported as OpenAI does, -9999."""
    return lp if math.isfinite(lp) else -9999.0


def _chat_logprobs(lps) -> Optional[dict]:
    if lps is None:
        return None

    def one(t, lp):
        return {"token": t, "logprob": _finite(lp), "bytes": list(t.encode("utf-8"))}

    return {"content": [{**one(x.token, x.logprob), "top_logprobs": [one(t, lp) for t, lp in x.top]} for x in lps]}


def _text_logprobs(lps, offset: int = 0) -> Optional[dict]:
    if lps is None:
        return None
    offsets, o = [], offset
    for x in lps:
        offsets.append(o)
        o += len(x.token)
    return {"tokens": [x.token for x in lps], "token_logprobs": [_finite(x.logprob) for x in lps],
            "top_logprobs": [{t: _finite(lp) for t, lp in x.top} for x in lps], "text_offset": offsets}


async def _generate(request: Request, make, *, stream: bool, include_usage: bool, stops, kind: str,
                    logprobs: bool = False):
    """Admit, build the generator on the worker thread, then stream or collect it."""
    st = _state(request)
    t0 = time.perf_counter()
    stack = contextlib.AsyncExitStack()
    await stack.enter_async_context(st.engine.slot())
    try:
        def build():  # on the worker thread: the stream's model (batched decode where it can be), its generator
            gm = st.engine.stream_model(st.model)
            return (*make(gm), gm)

        gen, turn, gm = await st.engine.call(build)
        tokens = st.engine.iterate(gen, gm)
        stack.push_async_callback(tokens.aclose)
        try:
            first = await tokens.__anext__()
        except StopAsyncIteration:
            first = None
    except ValueError as e:  # the core's own one-line messages (empty message, prompt longer than the context)
        await stack.aclose()
        raise ApiError(400, str(e), code="invalid_prompt") from None
    except BaseException:
        await stack.aclose()
        raise
    st.metrics.ttft.labels(kind).observe(time.perf_counter() - t0)
    rid = ("chatcmpl-" if kind == "chat" else "cmpl-") + secrets.token_hex(12)
    created = int(time.time())
    ext = {}
    if kind == "chat":
        ext = {"memories": [entry_json(e, s) for e, s in turn.memories], "memory_learned": turn.learned}
        if turn.notes:
            ext["notes"] = turn.notes

    async def pieces():
        """``(text, finish_reason, last GenerationResponse, token logprobs or None)`` until the
        end or a stop sequence; the logprobs are those of the tokens since the previous piece."""
        cut = StopText(stops)
        last, item, lps = None, first, []
        while item is not None:
            last = item
            if logprobs:
                lps.append(item.logprobs)
            text, hit = cut.feed(item.text)
            if hit or item.finish_reason:
                yield (text if hit else text + cut.flush()), "stop" if hit else item.finish_reason, last, lps or None
                return
            if text:
                yield text, None, last, lps or None
                lps = []
            try:
                item = await tokens.__anext__()
            except StopAsyncIteration:
                item = None
        yield cut.flush(), "stop", last, lps or None

    def usage(last) -> dict:
        p = last.prompt_tokens if last else 0
        n = last.generation_tokens if last else 0
        return {"prompt_tokens": p, "completion_tokens": n, "total_tokens": p + n}

    def account(last, finish) -> None:
        if last is not None:
            st.metrics.prompt_tokens.inc(last.prompt_tokens)
            st.metrics.generated_tokens.inc(last.generation_tokens)
        st.engine.last_finish = (finish, last.generation_tokens if last else 0)

    if not stream:
        text, finish, last, lps = "", "stop", None, None
        watch = asyncio.ensure_future(_watch_disconnect(request))
        try:
            collect = asyncio.ensure_future(_collect(pieces()))
            done, _ = await asyncio.wait({collect, watch}, return_when=asyncio.FIRST_COMPLETED)
            if collect not in done:  # the client left: stop generating now
                collect.cancel()
                st.engine.cancelled += 1
                account(None, "cancelled")
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await collect
                return JSONResponse({"error": {"message": "client disconnected", "type": "invalid_request_error",
                                               "param": None, "code": "client_disconnected"}}, status_code=499)
            text, finish, last, lps = collect.result()
        finally:
            watch.cancel()
            await stack.aclose()
        account(last, finish)
        if kind == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": text},
                      "logprobs": _chat_logprobs(lps), "finish_reason": finish}
            body = {"id": rid, "object": "chat.completion", "created": created, "model": st.model_id,
                    "choices": [choice], "usage": usage(last), **ext}
        else:
            body = {"id": rid, "object": "text_completion", "created": created, "model": st.model_id,
                    "choices": [{"index": 0, "text": text, "logprobs": _text_logprobs(lps), "finish_reason": finish}],
                    "usage": usage(last)}
        return JSONResponse(body)

    offset = [0]

    def chunk(delta_or_text, finish, lps=None) -> dict:
        if kind == "chat":
            choice = {"index": 0, "delta": delta_or_text, "logprobs": _chat_logprobs(lps), "finish_reason": finish}
            obj = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": st.model_id,
                   "choices": [choice]}
        else:
            obj = {"id": rid, "object": "text_completion", "created": created, "model": st.model_id,
                   "choices": [{"index": 0, "text": delta_or_text, "logprobs": _text_logprobs(lps, offset[0]),
                                "finish_reason": finish}]}
            offset[0] += sum(len(x.token) for x in lps or [])
        return obj

    def sse(obj) -> str:
        return f"data: {json.dumps(obj)}\n\n"

    async def body():
        last, finish, done = None, None, False
        try:
            if kind == "chat":
                yield sse({**chunk({"role": "assistant", "content": ""}, None), **ext})
            async for text, finish, last, lps in pieces():
                if text or lps:
                    yield sse(chunk({"content": text} if kind == "chat" else text, None, lps))
                if finish:
                    yield sse(chunk({} if kind == "chat" else "", finish))
            if include_usage:
                yield sse({"id": rid, "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
                           "created": created, "model": st.model_id, "choices": [], "usage": usage(last)})
            yield "data: [DONE]\n\n"
            done = True
        except Exception as e:  # after the headers: the error goes in the stream, in OpenAI's shape
            log.exception("generation failed mid-stream")
            done = True
            finish = "error"
            yield sse({"error": {"message": f"generation failed ({type(e).__name__}: {str(e)[:200]}); the server "
                                            "log has the details.", "type": "server_error", "param": None,
                                 "code": "generation_failed"}})
            yield "data: [DONE]\n\n"
        finally:
            if not done:
                st.engine.cancelled += 1
            account(last, finish if done else "cancelled")
            await stack.aclose()

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _collect(pieces):
    text, finish, last, lps = "", "stop", None, None
    async for t, f, last, more in pieces:
        text += t
        finish = f or finish
        if more:
            lps = (lps or []) + more
    return text, finish, last, lps


async def _watch_disconnect(request: Request):
    while not await request.is_disconnected():
        await asyncio.sleep(0.1)


def _constraint(st, response_format):
    """The grammar processor for ``response_format`` (None for plain text)."""
    grammar = grammar_for(response_format)
    if grammar is None:
        return None

    def lltok_for(vocab: int):  # built once per vocabulary size, on the worker thread
        if vocab not in st.lltok:
            st.lltok[vocab] = ll_tokenizer(st.tokenizer, vocab)
        return st.lltok[vocab]

    return GrammarProcessor(lltok_for, grammar, st.tokenizer.eos_token_ids)


@router.post("/v1/chat/completions")
async def chat_completions(req: ChatRequest, request: Request):
    st = _state(request)
    if req.tools:
        raise ApiError(400, "tool calling is not supported by this server yet; drop 'tools'.", param="tools",
                       code="unsupported")
    _check_chars(st, sum(len(m.text()) for m in req.messages), "conversation")
    user = user_of(request, req.user)
    memory = st.config.memory if req.memory is None else req.memory
    if memory and st.bank is None:
        raise ApiError(400, "this server runs without a memory bank (--no-memory); send \"memory\": false.",
                       param="memory", code="memory_off")
    max_tokens, opts = _sampling(st, req)
    constraint = _constraint(st, req.response_format)
    make = lambda gm: chat_stream(st.model, st.tokenizer, st.bank, req.messages, user=user,  # noqa: E731
                                  memory=memory, max_tokens=max_tokens, sampling=opts,
                                  top_logprobs=req.top_k_logprobs(), constraint=constraint, gen_model=gm)
    return await _generate(request, make, stream=req.stream, stops=req.stops(), kind="chat",
                           logprobs=req.top_k_logprobs() is not None,
                           include_usage=bool(req.stream_options and req.stream_options.include_usage))


@router.post("/v1/completions")
async def completions(req: CompletionRequest, request: Request):
    st = _state(request)
    prompt = req.prompt
    if isinstance(prompt, list):
        if prompt and all(isinstance(p, str) for p in prompt):
            if len(prompt) != 1:
                raise ApiError(400, f"'prompt' has {len(prompt)} texts; send one per request.", param="prompt")
            prompt = prompt[0]
        elif not prompt:
            raise ApiError(400, "'prompt' is empty; send text or token ids.", param="prompt")
        else:
            vocab = _vocab_size(st)
            bad = [t for t in prompt if not 0 <= t < vocab]
            if bad:
                raise ApiError(400, f"'prompt' has token id {bad[0]}, outside this model's vocabulary of {vocab}; "
                                    f"send ids 0 to {vocab - 1}, or text.", param="prompt", code="invalid_token")
    if isinstance(prompt, str):
        _check_chars(st, len(prompt), "prompt")
    if req.echo:
        raise ApiError(400, "echo is not supported; drop 'echo'.", param="echo", code="unsupported")
    max_tokens, opts = _sampling(st, req)
    constraint = _constraint(st, req.response_format)
    make = lambda gm: completion_stream(gm, st.tokenizer, prompt, max_tokens=max_tokens,  # noqa: E731
                                        sampling=opts, top_logprobs=req.top_k_logprobs(), constraint=constraint)
    return await _generate(request, make, stream=req.stream, stops=req.stops(), kind="text",
                           logprobs=req.top_k_logprobs() is not None,
                           include_usage=bool(req.stream_options and req.stream_options.include_usage))


def _vocab_size(st) -> int:
    args = getattr(st.model, "args", None)
    return int(getattr(st.model, "vocab_size", None) or getattr(args, "vocab_size", None) or len(st.tokenizer.vocab))


@router.get("/v1/models")
async def models(request: Request):
    st = _state(request)
    return {"object": "list", "data": [{"id": st.model_id, "object": "model", "created": st.created,
                                        "owned_by": "mlx_synapse", "backend": getattr(st.model, "backend", "mlx")}]}


@router.post("/v1/embeddings")
async def embeddings(req: EmbeddingRequest, request: Request):
    st = _state(request)
    if st.bank is None:
        raise ApiError(400, "this server runs without a memory bank (--no-memory), so it has no sentence encoder "
                            "for embeddings; start it without --no-memory.", code="no_encoder")
    texts = [req.input] if isinstance(req.input, str) else list(req.input)
    if not texts or any(not t for t in texts):
        raise ApiError(400, "'input' has an empty text; send non-empty strings.", param="input")
    if len(texts) > 256:
        raise ApiError(400, f"'input' has {len(texts)} texts; send at most 256 per request.", param="input")
    _check_chars(st, sum(len(t) for t in texts), "input")
    vecs = np.asarray(await st.engine.call(st.bank.encoder, texts), np.float32)
    data = []
    for i, v in enumerate(vecs):
        emb = base64.b64encode(v.astype("<f4").tobytes()).decode() if req.encoding_format == "base64" else v.tolist()
        data.append({"object": "embedding", "index": i, "embedding": emb})
    n = sum(len(st.tokenizer.encode(t)) for t in texts)
    return {"object": "list", "data": data, "model": getattr(st.bank.encoder, "name", "encoder"),
            "usage": {"prompt_tokens": n, "total_tokens": n}}


@router.get("/health")
async def health(request: Request):
    st = _state(request)
    status = "shutting_down" if st.engine.closing else "ok"
    return JSONResponse({"status": status, "model": st.model_id, "active": st.engine.active,
                         "waiting": st.engine.waiting, "parallel": st.engine.parallel,
                         "batched_steps": st.engine.batched_steps, "batched_rows": st.engine.batched_rows},
                        status_code=503 if st.engine.closing else 200)
