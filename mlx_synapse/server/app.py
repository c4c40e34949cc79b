"""The ASGI application: ``create_app(model, tokenizer, bank, config)``.

Around the routes (:mod:`.routes`, :mod:`.memories`) sit, outermost first: CORS (off unless
``allowed_origins``), then one guard that counts requests for ``/metrics``, checks the
API key on ``/v1/*`` and ``/metrics`` (the page, ``/health`` and ``/docs`` are open),
and refuses a body over ``max_body_bytes`` (413) before any of it is parsed.
"""

from __future__ import annotations

import contextlib
import hmac
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Dict, Optional, Sequence

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .engine import Engine
from .errors import ApiError, install, send_error
from .metrics import Metrics
from . import memories, routes

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/embeddings", "/v1/memories",
             "/health", "/metrics", "/")


@dataclass
class ServerConfig:
    """What the server allows; the command line (:mod:`.__main__`) fills it."""

    api_key: Optional[str] = None
    user_keys: Optional[Dict[str, str]] = None  # key -> the one memory user that key may act as
    allowed_origins: Sequence[str] = ()
    max_body_bytes: int = 1 << 20
    max_prompt_chars: int = 100_000
    default_max_tokens: int = 256
    max_tokens_limit: int = 2048
    temperature: float = 0.0
    memory: bool = True  # chat reads and writes the user's memories unless the request says "memory": false
    default_user: str = "default"
    parallel: int = 1
    max_queue: int = 16
    batch: bool = True  # decode admitted streams together (NumPy backend on the compiled engine)
    model_id: str = "mlx-synapse"

    def __post_init__(self):
        if self.max_body_bytes < 1024 or self.max_prompt_chars < 1 or self.default_max_tokens < 1:
            raise ValueError("[server] need max_body_bytes >= 1024, max_prompt_chars >= 1, default_max_tokens >= 1.")
        if self.max_tokens_limit < self.default_max_tokens:
            raise ValueError(f"[server] max_tokens_limit={self.max_tokens_limit} is below default_max_tokens="
                             f"{self.default_max_tokens}; raise --max-tokens-limit.")


@dataclass
class State:
    model: object
    tokenizer: object
    bank: object
    engine: Engine
    config: ServerConfig
    metrics: Metrics
    model_id: str
    created: int
    lltok: dict = field(default_factory=dict)  # llguidance tokenizers by vocabulary size (structured output)


def _endpoint(path: str) -> str:
    if path.startswith("/v1/memories"):
        return "/v1/memories"
    return path if path in ENDPOINTS else "other"


class Guard:
    """Metrics, API key and body size, as plain ASGI (nothing is parsed before the checks)."""

    def __init__(self, app, state_of):
        self.app, self.state_of = app, state_of

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        st: State = self.state_of()
        path, t0 = scope["path"], time.perf_counter()
        status = [500]

        async def counting_send(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            err = self._auth(st, scope)
            if err is None and scope["method"] in ("POST", "PUT", "PATCH"):
                receive, err = await self._body(st, scope, receive)
            if err is not None:
                await send_error(counting_send, err)
            else:
                await self.app(scope, receive, counting_send)
        finally:
            ep = _endpoint(path)
            st.metrics.requests.labels(ep, str(status[0])).inc()
            st.metrics.duration.labels(ep).observe(time.perf_counter() - t0)

    @staticmethod
    def _auth(st: State, scope) -> Optional[ApiError]:
        """None when the request may go on; a user key also binds the request to its user
        (``scope["state"]["synapse_user"]``, read by :func:`.memories.user_of`)."""
        key, user_keys = st.config.api_key, st.config.user_keys or {}
        path = scope["path"]
        if not (key or user_keys) or scope["method"] == "OPTIONS" or not (path.startswith("/v1/") or path == "/metrics"):
            return None
        headers = dict(scope["headers"])
        got = headers.get(b"authorization", b"").decode("latin-1")
        got = got[7:].strip() if got.lower().startswith("bearer ") else headers.get(b"x-api-key", b"").decode("latin-1")
        if got and key and hmac.compare_digest(got.encode(), key.encode()):
            return None
        for k, user in user_keys.items():  # every key compared: the time taken says nothing about which matched
            if got and hmac.compare_digest(got.encode(), k.encode()):
                scope.setdefault("state", {})["synapse_user"] = user
        if got and "synapse_user" in scope.get("state", {}):
            return None
        what = "no API key was sent" if not got else "the API key is wrong"
        return ApiError(401, f"{what}; send 'Authorization: Bearer <key>' with the key the server was started with "
                             "(--api-key, MLX_SYNAPSE_API_KEY or a --user-keys entry).", code="invalid_api_key")

    @staticmethod
    async def _body(st: State, scope, receive):
        """Read the whole body (at most ``max_body_bytes``) and hand it on; or a 413."""
        limit = st.config.max_body_bytes
        too_big = ApiError(413, f"the request body is larger than this server's limit of {limit:,} bytes; send less "
                                "or start the server with a larger --max-body-mb.", code="body_too_large")
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return receive, too_big
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return receive, ApiError(400, "the client disconnected before sending the body.")
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > limit:
                return receive, too_big
            more = message.get("more_body", False)
        replayed = [False]

        async def replay():
            if not replayed[0]:
                replayed[0] = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()  # after the body: disconnect notices

        return replay, None


def create_app(model, tokenizer, bank, config: Optional[ServerConfig] = None) -> FastAPI:
    """The server for ``model``/``tokenizer`` (from :func:`mlx_synapse.load`) and ``bank``
    (a :class:`~mlx_synapse.memory.MemoryBank`, or None: no memory, no embeddings).

    The bank must have been opened on the engine's thread or allow other threads (it does:
    its SQLite connection is opened with ``check_same_thread=False``); it is closed at shutdown.
    """
    config = config or ServerConfig()
    engine = Engine(parallel=config.parallel, max_queue=config.max_queue, batch=config.batch)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        engine.closing = True
        engine.shutdown()
        if bank is not None:
            bank.close()

    app = FastAPI(title="mlx_synapse", version="0.1.0", lifespan=lifespan,
                  description="OpenAI-compatible API with per-user memory.")
    app.state.synapse = State(model, tokenizer, bank, engine, config, Metrics(engine), config.model_id, int(time.time()))
    install(app)
    app.include_router(routes.router)
    app.include_router(memories.router)

    @app.get("/metrics")
    async def metrics(request: Request):
        return Response(generate_latest(app.state.synapse.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(resources.files("mlx_synapse.server").joinpath("static/index.html").read_text("utf-8"))

    app.add_middleware(Guard, state_of=lambda: app.state.synapse)
    if config.allowed_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(config.allowed_origins), allow_methods=["*"],
                           allow_headers=["*"])
    return app
