"""``/v1/memories``: one user's memories — list, search, add, update, forget, stats.

Every call names its user (the ``user`` field or query parameter, or the
``X-Synapse-User`` header, else the server's default user) and sees only that user's
entries: the bank checks the user on every read and write.
"""

from __future__ import annotations

from typing import Annotated, Optional

from fastapi import APIRouter, Path, Query, Request

from .errors import ApiError
from .schemas import MemoryAdd, MemoryUpdate

router = APIRouter()
MAX_ID = 2**63 - 1  # SQLite's integer range


def _state(request: Request):
    return request.app.state.synapse


def _check_chars(st, n: int, what: str) -> None:
    if n > st.config.max_prompt_chars:
        raise ApiError(413, f"the {what} is {n:,} characters; this server takes at most {st.config.max_prompt_chars:,}. "
                            "Send less text or start the server with a larger --max-prompt-chars.",
                       code="prompt_too_long")


def user_of(request: Request, body_user: Optional[str] = None) -> str:
    """The memory bank user: the body's ``user``, else the ``X-Synapse-User`` header, else
    the ``user`` query parameter, else the server's default user. A request made with a
    per-user key (``--user-keys``) is that user's and may name no other (403)."""
    st = _state(request)
    named = body_user or request.headers.get("x-synapse-user") or request.query_params.get("user")
    bound = request.scope.get("state", {}).get("synapse_user")
    if bound is not None:
        if named is not None and named != bound:
            raise ApiError(403, f"this API key belongs to user {bound!r} and cannot act as {named[:40]!r}; drop "
                                "'user' or use that user's key.", param="user", code="wrong_user")
        return bound
    user = named or st.config.default_user
    if not user.strip() or len(user.encode()) > 256:
        raise ApiError(400, f"'user' must be 1 to 256 bytes of non-blank text but got {user[:40]!r}; send the "
                            "name whose memories this request reads and writes.", param="user", code="invalid_user")
    return user


def entry_json(e, score=None) -> dict:
    d = {"id": e.id, "object": "memory", "text": e.text, "source": e.source, "created": int(e.created),
         "last_access": int(e.last_access), "hits": e.hits, "tier": e.tier}
    if score is not None:
        d["score"] = round(float(score), 4)
    return d


def _bank(request: Request):
    st = _state(request)
    if st.bank is None:
        raise ApiError(404, "this server runs without a memory bank (--no-memory); start it without that flag.",
                       code="memory_off")
    return st


@router.get("/v1/memories")
async def list_memories(request: Request, user: Optional[str] = None):
    st = _bank(request)
    who = user_of(request, user)
    entries = await st.engine.call(lambda: st.bank.list(user=who))
    return {"object": "list", "user": who, "data": [entry_json(e) for e in entries]}


@router.get("/v1/memories/search")
async def search_memories(request: Request, q: str = Query(..., min_length=1), k: int = Query(5, ge=1, le=100),
                          user: Optional[str] = None):
    st = _bank(request)
    who = user_of(request, user)
    hits = await st.engine.call(lambda: st.bank.search(q, k, user=who, touch=False))
    return {"object": "list", "user": who, "data": [entry_json(e, s) for e, s in hits]}


@router.post("/v1/memories", status_code=201)
async def add_memory(req: MemoryAdd, request: Request):
    st = _bank(request)
    who = user_of(request, req.user)
    _check_chars(st, len(req.text), "memory text")

    def add():
        i = st.bank.add(req.text, user=who, source="server", force=True)
        return st.bank.get(i, user=who)

    try:
        e = await st.engine.call(add)
    except ValueError as err:
        raise ApiError(400, str(err), param="text") from None
    return entry_json(e)


@router.get("/v1/memories/stats")
async def memory_stats(request: Request, user: Optional[str] = None):
    """The user's memories by tier, and the bank's budget, encoder and policy (no other
    user's names or counts)."""
    st = _bank(request)
    who = user_of(request, user)

    def stats():
        mine = st.bank.list(user=who)
        s = st.bank.stats()
        return {"object": "memory.stats", "user": who, "entries": len(mine),
                "tiers": {t: sum(e.tier == t for e in mine) for t in ("hot", "warm", "cold")},
                "bank_bytes": s["bytes"], "budget_bytes": s["budget_bytes"], "encoder": s["encoder"],
                "policy": s["policy"]}

    return await st.engine.call(stats)


@router.patch("/v1/memories/{memory_id}")
async def update_memory(memory_id: Annotated[int, Path(ge=1, le=MAX_ID)], req: MemoryUpdate, request: Request):
    st = _bank(request)
    who = user_of(request, req.user)
    _check_chars(st, len(req.text), "memory text")

    def update():
        if st.bank.get(memory_id, user=who) is None:
            return None
        return st.bank.update(memory_id, user=who, text=req.text)

    try:
        e = await st.engine.call(update)
    except ValueError as err:
        raise ApiError(400, str(err), param="text") from None
    if e is None:
        raise ApiError(404, f"user {who!r} has no memory {memory_id}; list them with GET /v1/memories.",
                       code="memory_not_found")
    return entry_json(e)


@router.delete("/v1/memories/{memory_id}")
async def delete_memory(memory_id: Annotated[int, Path(ge=1, le=MAX_ID)], request: Request, user: Optional[str] = None):
    st = _bank(request)
    who = user_of(request, user)

    def forget():
        if st.bank.get(memory_id, user=who) is None:
            return False
        st.bank.forget([memory_id], user=who)
        return True

    if not await st.engine.call(forget):
        raise ApiError(404, f"user {who!r} has no memory {memory_id}; list them with GET /v1/memories.",
                       code="memory_not_found")
    return {"id": memory_id, "object": "memory.deleted", "deleted": True}
