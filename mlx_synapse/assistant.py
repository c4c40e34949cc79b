"""A chat that remembers: a frozen model plus the user's memory bank.

``Assistant(model, tokenizer, memory, user=...)``:

* ``respond(message)`` retrieves the user's memories for the message (full-text BM25
  and dense search fused, with a second hop on names, :mod:`mlx_synapse.memory.retrieval`;
  those with cosine ``min_score`` or more, or named by one shown, at most ``k``;
  superseded facts and raw messages whose facts stand for them are left out,
  :func:`visible`), puts them before
  the question as ``Context:`` one per line (the best one last; each with the date it
  was said when the question asks about time), keeps the session's earlier turns up
  to ``history_tokens``, and generates with a bias toward repeating the shown
  memories' words exactly (:mod:`mlx_synapse.copy_bias`). No worked example is shown:
  the model copied their answers. A question about a slot no fact has, with only facts
  about other slots found (:meth:`not_told`), is shown none of them and told how to
  say it does not know. The reply says which memories were used, with their scores.
* ``learn(message, ts=None)`` splits the message into atomic facts
  (:mod:`mlx_synapse.memory.extraction`): each is an entry of its own (metadata
  ``kind="fact"``, ``slot``, ``valid_from``, ``raw_id``) beside the message
  (``kind="message"``); a fact with the slot of an older one, or restating it with a
  new value, supersedes it (``superseded_by``; the old one stays as history,
  :meth:`history_of`); "actually, it's X" fixes the fact said just before (or the
  memory the last reply used); values that hold side by side are also kept as one
  list. A message with no facts (chit-chat, other languages) is stored verbatim, past
  the surprise gate unless it speaks of the user. ``respond`` calls it on every message.
* ``remember(text)`` and ``forget(query)`` are explicit; ``forget_candidates(query)``
  lists what a forget would delete (an exact text match first, else the close search
  hits), and ``forget`` deletes only one clear match unless told which, together with
  what it is linked to (:meth:`linked`: its raw message, its supersession chain, the
  lists it is part of).
* Bounds: ``prompt + max_tokens`` never exceeds the model's context: memories shown are
  held to ``memory_tokens``, earlier turns to what is left, and the user's turn is cut
  (its end kept) when it alone does not fit; a message longer than ``chunk_chars`` is
  stored as sentence-sized chunks (:mod:`mlx_synapse.chat_limits`). ``Reply.notes`` says
  when any of this happened.

Why this form (SmolLM2-135M-Instruct, greedy, dev split of ``benchmarks/conversation``,
8 questions per category, each pair measured in one run on the same code): an always-on
"if the notes do not say, answer I don't know" instruction made the model refuse
answerable questions (21/64 answerable right, against 37/64 without it); a date on every
note made it answer with the date or misread the notes (47/64, against 51/64 with dates
only for questions about time); one fixed worked example scored 27/64 against 40/64
without it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Iterator, List, Optional, Sequence, Tuple

import re
import time

import numpy as np

from .chat_limits import model_context, split_chunks, truncate_tokens
from .copy_bias import make_copy_bias
from .generate import stream_generate
from .memory.bank import Entry, MemoryBank
from .memory.extraction import day, extract, question_slot
from .memory.retrieval import adaptive_prefix
from .statements import _CORRECTION, _FIRST_PERSON, _NOT_VALUES, _VALUE, _norm, _strip_value, is_question, plain
from .statements import replace_value, restates

__all__ = ["Assistant", "Reply", "EXAMPLES", "N_EXAMPLES", "READER_INSTRUCTION", "ABSTAIN", "asks_when", "context_turn",
           "is_question", "note", "replace_value", "restates", "visible", "said_on"]

# Worked examples (fictional, not the user's): the two whose fact is closest to the best
# memory shown go before the question, the closer one last. A small model copies the
# nearest example's form, so one shaped like the memory ("I was born in ...") teaches it
# to answer "You were born in ..." instead of repeating an unrelated example.
EXAMPLES = (
    ("My favorite fruit is persimmon.", "What's my favourite fruit?", "Your favorite fruit is persimmon."),
    ("My cousin's name is Evander.", "What is my cousin called?", "Your cousin's name is Evander."),
    ("I was born in Port Ellery.", "Where was I born?", "You were born in Port Ellery."),
    ("We are planning to visit Carrow Bay in the spring.", "Where are we going this spring?",
     "You are going to Carrow Bay in the spring."),
    ("My bike lock code is 5821.", "What's the code for my bike lock?", "The code for your bike lock is 5821."),
    ("My nephew started school on 4 September 2019.", "When did my nephew start school?",
     "Your nephew started school on 4 September 2019."),
    ("My uncle works as a glassblower.", "What does my uncle do for a living?", "Your uncle works as a glassblower."),
    ("My aunt's cat is named Biscuit.", "What's the name of my aunt's cat?", "Your aunt's cat is named Biscuit."),
)
N_EXAMPLES = 2  # kept for older callers; the prompt no longer shows worked examples (see build_messages)

ABSTAIN = "I don't know."
READER_INSTRUCTION = "If the context does not say, answer: " + ABSTAIN


# A question about time: the notes shown carry the date each was said. Shown always, dates
# made the model answer with them ("(said on ...") or misread the notes ("sorry for your loss").
_WHEN = re.compile(r"^\s*(?:when|since when|how long ago|what (?:day|date|year|month|time)|which (?:day|date|year|month)|"
                   r"on what (?:day|date))\b", re.I)


def asks_when(message: str) -> bool:
    """Whether ``message`` asks about time: the notes shown then carry the date each was said."""
    return bool(_WHEN.match(message))


def note(text: str, when: Optional[float] = None) -> str:
    """One memory as a line of the context: its text, and the day it was said when ``when`` is given."""
    return text + (f" (said on {day(when)})" if when is not None else "")


def context_turn(message: str, notes: Sequence[str] = (), abstain: bool = False) -> str:
    """The user turn the model sees: ``notes`` (context lines, in order, the best last) before the
    question; with none and ``abstain``, the empty context and the way to say it does not know;
    else the message alone. The reader adapter's training data (:mod:`mlx_synapse.reader.data`)
    is built with this same function, so the two cannot drift apart."""
    if notes:
        return "Context:\n" + "\n".join(notes) + f"\n\nQuestion: {message}"
    if abstain:  # asked about what was never said: nothing shown, and the way to say so
        return f"Context:\n(nothing about this)\n\nQuestion: {message}\n{READER_INSTRUCTION}"
    return message


def _superseded(e: Entry) -> bool:
    return isinstance(e.metadata, dict) and e.metadata.get("superseded_by") is not None


def visible(hits: List[Tuple[Entry, float]], bank: Optional[MemoryBank] = None,
            user: Optional[str] = None) -> List[Tuple[Entry, float]]:
    """What a turn may show of ``hits``: nothing superseded (history: an older fact, or the
    message an older fact came from), no raw message when one of its facts is among the
    hits (the fact says it plainly), no text twice. Order kept. With ``bank``, a raw message
    found is shown as its current facts (at its score) when it has any."""
    if bank is not None:
        swapped = []
        for e, s in hits:
            m = e.metadata if isinstance(e.metadata, dict) else {}
            facts = [bank.get(i, user=user) for i in m.get("fact_ids") or []] if m.get("kind") == "message" else []
            facts = [f for f in facts if f is not None and not _superseded(f)]
            swapped += [(f, s) for f in facts] if facts else [(e, s)]
        hits = swapped
    out, seen = [], set()
    raws = {e.metadata.get("raw_id") for e, _ in hits if isinstance(e.metadata, dict)
            and e.metadata.get("superseded_by") is None}
    for e, s in hits:
        m = e.metadata if isinstance(e.metadata, dict) else {}
        if m.get("superseded_by") is not None or (m.get("kind") == "message" and e.id in raws):
            continue
        key = plain(e.text)
        if key in seen:
            continue
        seen.add(key)
        out.append((e, s))
    return out


def slot_fits(e: Entry, want: str) -> bool:
    """Whether fact ``e`` answers a question about slot ``want`` (:func:`question_slot`):
    the same slot, a part of it (``user.favorite`` <- ``user.favorite.dish``), the list
    it belongs to, or the slot of a named one of the asked-about people ("friend_ximena.job"
    answers "my friend's job")."""
    m = e.metadata if isinstance(e.metadata, dict) else {}
    slot = m.get("slot") or ""
    if slot == want or slot.startswith(want + ".") or m.get("topic") == want:
        return True
    subj, _, attr = slot.partition(".")
    wsubj, _, wattr = want.partition(".")
    return bool(wattr) and subj.startswith(wsubj + "_") and (attr == wattr or attr.startswith(wattr + "."))


def said_on(e: Entry) -> float:
    """When ``e`` was said: its metadata's ``valid_from``, else when it was stored."""
    m = e.metadata if isinstance(e.metadata, dict) else {}
    v = m.get("valid_from")
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else float(e.created)


@dataclass
class Reply:
    """What ``respond`` produced: the text, the memories used (``(Entry, score)``, best
    first), what ``learn`` did with the message, and generation statistics."""

    text: str
    memories: List[Tuple[Entry, float]] = field(default_factory=list)
    learned: Optional[str] = None  # 'added' | 'refreshed' | 'corrected' | 'skipped' | None
    prompt_tokens: int = 0
    generation_tokens: int = 0
    generation_tps: float = 0.0
    notes: List[str] = field(default_factory=list)  # what was cut or split to fit, in words
    stopped: bool = False  # generation was interrupted; ``text`` is what came before


class Assistant:
    """A frozen model that answers from the user's memories (see the module docstring).

    Args:
        model, tokenizer: from :func:`mlx_synapse.load` (either backend).
        memory: the user's :class:`MemoryBank`.
        user: whose memories are read and written.
        k, min_score: at most ``k`` memories with cosine >= ``min_score`` (or named by a
            memory shown) are put in the prompt.
        margin, lexical: kept for callers of the older dense-only retrieval; unused.
        history_tokens: earlier turns of this session kept in the prompt (newest first).
        max_tokens, temp, top_p: generation settings.
        system: an optional system message.
        auto_learn: ``respond`` passes each message to :meth:`learn`.
        context: the model's context in tokens (default: its ``max_position_embeddings``;
            None there means unbounded); the prompt is kept to ``context - max_tokens``.
        memory_tokens: the most tokens of memories shown in one prompt.
        chunk_chars: a message longer than this is stored as chunks of at most this size.
        max_message_chars: longer messages are refused (ValueError).
        reader: the reader adapter switched on for turns whose prompt shows a ``Context:``
            block (:mod:`mlx_synapse.reader`): None/True the shipped one (or
            ``$MLX_SYNAPSE_READER``: a directory, or 0 for none), False none, a path that
            adapter. Turns without memories never see it (the base model, bit for bit). When
            no adapter is found or it does not fit the model, turns run as without one and
            ``reader_note`` says why.
    """

    def __init__(self, model, tokenizer, memory: MemoryBank, *, user: str, k: int = 3,
                 min_score: float = 0.35, margin: float = 0.03, lexical: float = 0.2, copy_bonus: float = 6.0,
                 history_tokens: int = 1024, max_tokens: int = 128, temp: float = 0.0, top_p: float = 1.0,
                 system: Optional[str] = None, auto_learn: bool = True, context: Optional[int] = None,
                 memory_tokens: int = 512, chunk_chars: int = 500, max_message_chars: int = 200_000,
                 reader=None):
        if k < 1 or history_tokens < 0 or max_tokens < 1 or margin < 0 or lexical < 0 or copy_bonus < 0:
            raise ValueError("[assistant] need k >= 1, history_tokens >= 0, max_tokens >= 1 and margin, "
                             "lexical, copy_bonus >= 0.")
        if memory_tokens < 1 or chunk_chars < 20 or max_message_chars < chunk_chars:
            raise ValueError(f"[assistant] need memory_tokens >= 1, chunk_chars >= 20 and max_message_chars >= "
                             f"chunk_chars but got {memory_tokens}, {chunk_chars}, {max_message_chars}.")
        self.context = context if context is not None else model_context(model)
        if self.context is not None and self.context < max_tokens + 64:
            raise ValueError(f"[assistant] max_tokens={max_tokens} leaves no room for a prompt in the model's "
                             f"context of {self.context} tokens; use max_tokens <= {self.context - 64}.")
        self.memory_tokens, self.chunk_chars, self.max_message_chars = memory_tokens, chunk_chars, max_message_chars
        self.read_only = False  # set when the bank cannot be written: retrieval stops touching it, nothing is learned
        self.model, self.tokenizer, self.memory, self.user = model, tokenizer, memory, user
        self.k, self.min_score, self.margin, self.lexical, self.copy_bonus = k, min_score, margin, lexical, copy_bonus
        self.history_tokens, self.max_tokens, self.temp, self.top_p = history_tokens, max_tokens, temp, top_p
        self.system, self.auto_learn = system, auto_learn
        self.history: List[Tuple[str, str]] = []  # (user message, reply) of this session
        self._example_vecs: Optional[np.ndarray] = None
        self.last: Optional[Reply] = None
        self._session_facts: list = []  # (id, Fact) stored by the last learn(): what "actually, it's X" fixes
        self._current: Optional[dict] = None  # id -> Entry: the user's facts not superseded (_current_facts)
        self._abstain = False  # this turn's question asks what the user never said (not_told)
        self._current_dv = None
        self.notes: List[str] = []  # what the current turn cut or split (see Reply.notes)
        self._reader_setting, self._reader, self.reader_note = reader, None, None
        self._context_shown = False  # the last prepared prompt shows a Context block (memories or abstention)

    # ------------------------------------------------------------------ memory

    def retrieve(self, message: str) -> List[Tuple[Entry, float]]:
        query = message if len(message) <= 2 * self.chunk_chars else message[-2 * self.chunk_chars:]
        # Fused BM25 + dense retrieval with a second hop (mlx_synapse.memory.retrieval): memories
        # in fused order, fewer where the fused score drops sharply; a memory is shown when its
        # cosine reaches min_score, or when a shown one named it (the two-hop bridge). Superseded
        # facts stay out; a raw message found is shown as the facts taken from it (``visible``).
        # The score given with each memory is its cosine.
        want = question_slot(message) if is_question(message) else None
        # One search without the adaptive cut; the cut (what retrieve(adaptive=True) returns)
        # is taken from it, and only those hits count as used.
        more = self.memory.retrieve(query, 2 * self.k, user=self.user, min_score=self.min_score,
                                    adaptive=False, touch=False)
        hits = adaptive_prefix(more)
        if not self.read_only:
            self.memory._note_uses([h.entry.id for h in hits], time.time())
        pairs = [(h.entry, h.cosine) for h in hits]
        if want is not None:
            # A question about a known slot ("What is my friend Ximena's job?"): the candidates
            # holding that slot go first, even where the fused ranking put a fact with more words
            # in common ("My friend is called Ximena.") above them and cut the rest.
            fit = [(e, c) for e, c in visible([(h.entry, h.cosine) for h in more], self.memory, self.user)
                   if slot_fits(e, want)]  # (a raw message found stands for its facts)
            ids = {e.id for e, _ in fit}
            pairs = fit + [p for p in pairs if p[0].id not in ids]
        shown = visible(pairs, self.memory, self.user)
        # A question that names someone ("Which instrument does my colleague Eloise play?") is
        # shown only the memories that name them, when any does: facts about other people
        # beside it are what a small model answers from by mistake.
        names = {w.lower() for w in re.findall(r"(?<![.?!]\s)(?<!^)\b([A-Z][a-zà-ÿ]+)(?:'s)?\b", message.strip())}
        if names:
            named = [(e, c) for e, c in shown if names & {w.lower() for w in re.findall(r"[A-Za-zÀ-ÿ]+", e.text)}]
            if named:
                shown = named
        return shown[:self.k]

    def remember(self, text: str) -> Optional[int]:
        """Store ``text`` as a memory, past the surprise gate; a text longer than
        ``chunk_chars`` as chunks (see :meth:`learn_long`). Returns the (first) id."""
        if len(text.strip()) <= self.chunk_chars:
            i = self.memory.add(text, user=self.user, source="chat:remember", force=True)
            self._cache_ids([i])
            return i
        ids = self._store_chunks(text, "chat:remember", force=True)
        return ids[0] if ids else None

    def forget_candidates(self, query: str, min_score: float = 0.5, k: int = 10) -> List[Tuple[Entry, float]]:
        """What ``query`` may mean, best first: the memories whose text is ``query`` (case,
        spacing and final punctuation aside) when there are any, each with score 1;
        else the search hits scoring ``min_score`` or more (at most ``k``)."""
        want = plain(query)
        exact = [(e, 1.0) for e in self.memory.list(user=self.user) if plain(e.text) == want]
        if exact:
            return exact
        return self.memory.search(query, k, user=self.user, min_score=min_score, touch=False)

    def forget(self, query: str, which=None, min_score: float = 0.5) -> List[Entry]:
        """Delete what ``query`` means; returns the deleted entries.

        With one candidate (:meth:`forget_candidates`) that one is deleted. With several,
        ``which`` picks: ``"all"`` or 1-based positions in the candidate list; without it
        nothing is deleted and a ValueError lists them (never more than the user meant)."""
        cands = [e for e, _ in self.forget_candidates(query, min_score)]
        cands = [e for e in cands if not _superseded(e)] or cands  # the current fact; its history goes with it
        if len(cands) > 1:
            if which is None:
                listed = "; ".join(f"{i}. {e.text!r}" for i, e in enumerate(cands, 1))
                raise ValueError(f"[assistant] {len(cands)} memories match {query!r}: {listed}. "
                                 f"Pass which= (positions, or 'all') to say which to forget.")
            if which != "all":
                picks = [which] if isinstance(which, int) else list(which)
                bad = [i for i in picks if not (isinstance(i, int) and 1 <= i <= len(cands))]
                if bad:
                    raise ValueError(f"[assistant] which={which!r}: positions must be 1 to {len(cands)}.")
                cands = [cands[i - 1] for i in sorted(set(picks))]
        if cands:
            chain = self.linked([e.id for e in cands])
            self.memory.forget([e.id for e in chain], user=self.user)
            self._current = None
            self._session_facts = []
            return chain
        return cands

    def history_of(self, query: str, min_score: float = 0.3) -> List[Entry]:
        """What the user said about ``query`` over time, oldest first: the current fact
        closest to ``query`` and the facts it superseded ("Where did I live before?")."""
        hits = visible(self.memory.search(query, 4 * self.k, user=self.user, min_score=min_score, touch=False))
        facts = [e for e, _ in hits if isinstance(e.metadata, dict) and e.metadata.get("kind") == "fact"]
        if not facts:
            return [e for e, _ in hits[:1]]
        older: dict = {}
        for e in self.memory.list(user=self.user):
            m = e.metadata if isinstance(e.metadata, dict) else {}
            if m.get("superseded_by") is not None and m.get("kind") != "message":
                older.setdefault(m["superseded_by"], []).append(e)
        chain, todo = [facts[0]], [facts[0]]
        while todo:
            for e in older.get(todo.pop().id, []):
                if e not in chain:
                    chain.append(e)
                    todo.append(e)
        return sorted(chain, key=lambda e: (said_on(e), e.id))

    def linked(self, ids) -> List[Entry]:
        """Entries ``ids`` with everything forgetting them must take along: the raw message a
        fact came from, the facts of a raw message (or of a fact worded as its message), and every fact of a supersession chain
        (older and newer). Entries of ``ids`` first, in order."""
        entries = {e.id: e for e in self.memory.list(user=self.user)}
        meta = {i: (e.metadata if isinstance(e.metadata, dict) else {}) for i, e in entries.items()}
        older: dict = {}
        from_raw: dict = {}
        for i, m in meta.items():
            if m.get("superseded_by") is not None:
                older.setdefault(m["superseded_by"], []).append(i)
            if m.get("raw_id") is not None:
                from_raw.setdefault(m["raw_id"], []).append(i)
            for p in m.get("parts") or []:  # a list fact says what each of its parts says
                from_raw.setdefault(p, []).append(i)
        order, seen, todo = [], set(), [i for i in ids if i in entries]
        while todo:
            i = todo.pop(0)
            if i in seen:
                continue
            seen.add(i)
            order.append(i)
            m = meta[i]
            nxt = list(older.get(i, []))
            if m.get("superseded_by") in entries:
                nxt.append(m["superseded_by"])
            if m.get("raw_id") in entries:
                nxt.append(m["raw_id"])
            nxt += from_raw.get(i, [])  # a message's facts (also of a message stored as its fact), lists
            todo += [j for j in nxt if j not in seen]
        return [entries[i] for i in order]

    def learn(self, message: str, ts: Optional[float] = None) -> Optional[str]:
        """Store what ``message`` tells about the user; returns what was done (or None).

        The message is split into atomic facts (:func:`mlx_synapse.memory.extraction.extract`):
        each is stored as its own entry (metadata ``kind="fact"``, ``slot``, ``valid_from`` =
        ``ts`` or now, ``raw_id``) beside the message itself (``kind="message"``), and a fact
        with the slot of an older one supersedes it (the old entry's ``superseded_by``; it
        stays as history). "Actually, it's X" replaces the value of the fact said last in
        this session (else of the memory the last reply used). A message with no facts
        (chit-chat, another language) is stored verbatim, past the surprise gate unless it
        speaks of the user. Questions are not stored. A message longer than ``chunk_chars``
        is stored as chunks (:meth:`learn_long`)."""
        text = message.strip()
        prev, self._session_facts = self._session_facts, []  # a correction fixes the message just before
        if len(text) > self.chunk_chars:
            return self.learn_long(text)
        if not text:
            return None
        when = time.time() if ts is None else float(ts)
        ex = extract(text, when)
        if ex.question:
            return None
        if ex.correction is not None:
            fixed = self._correct_last(prev, ex.correction, when)
            if fixed:
                return fixed
            if self.last is not None and self.last.memories:
                fixed = self._correct(ex.correction, when)
                if fixed:
                    return fixed
        if not ex.facts:
            meta = {"kind": "message", "valid_from": when}
            if not _FIRST_PERSON.search(text) or not ex.english:
                return self.memory.write(text, user=self.user, source="chat", metadata=meta,
                                         force=bool(_FIRST_PERSON.search(text)) and ex.english).action
            old = self._same_fact(text)  # a known fact with a new value replaces the old one
            r = self.memory.write(text, user=self.user, source="chat", metadata=meta, force=True)
            if old is not None and r.id is not None and r.id != old.id:
                self._supersede(old, r.id)
                return "corrected"
            return r.action
        return self._store_facts(text, ex.facts, when)

    def _store_facts(self, text: str, facts: list, when: float) -> str:
        """Store ``text`` (kind=message) and its ``facts`` (kind=fact), supersede what they replace."""
        # A fact worded as the message itself ("My friend Ximena works as a beekeeper.") is the
        # message: stored once, as the fact (with its slot), and the other facts name it.
        same = next((i for i, f in enumerate(facts) if plain(f.text) == plain(text)), None)
        facts = facts + self._resolved(facts)
        m = _CORRECTION.match(text)
        core = m.group(2).strip() if m and m.group(2).strip() else text  # "No, my sister is Anna." -> the statement
        items = [dict(text=f.text, source="chat:fact", force=True,
                      metadata={"kind": "fact", "slot": f.slot, "valid_from": when, "superseded_by": None,
                                "raw_id": None, "subject": f.subject, "value": f.value,
                                **({"topic": f.topic, "form": f.form} if f.topic and f.form else {})})
                 for f in facts]
        raw = [] if same is not None else [dict(text=text, source="chat", force=True,
                                      metadata={"kind": "message", "valid_from": when, "facts": len(facts)})]
        written = self.memory.write_many(raw + items, user=self.user)  # one write: one search of the index
        raw_id = written[0].id if raw else None
        written = written[len(raw):]
        link = raw_id if raw_id is not None else written[same].id if same is not None and len(written) > 1 else None
        if link is not None:  # each new fact names its message
            for it, r in zip(items, written):
                if r.action == "added" and r.id != link:
                    self.memory.update(r.id, user=self.user, metadata=dict(it["metadata"], raw_id=link))
        self._cache_ids([r.id for r in written if r.action == "added"])
        actions = [r.action for r in written]
        action = "added" if "added" in actions else actions[0] if actions else "skipped"
        self._session_facts = []
        batch = {r.id for r in written if r.action == "added"}
        before = [e for e in self._current_facts(any_kind=True) if e.id not in batch]
        newest = {}  # slot -> the last fact of this message with it: said later, it wins
        for f, r in zip(facts, written):
            if r.action == "added" and f.slot:
                newest[f.slot] = r.id
        for f, r in zip(facts, written):
            if r.id is None:
                continue
            self._session_facts.append((r.id, f))
            if r.action == "refreshed":
                continue
            if f.slot and newest.get(f.slot) != r.id:  # "I was a nurse, now I'm a teacher": the later one
                self._supersede(self.memory.get(r.id, user=self.user), newest[f.slot])
                continue
            olds = [e for e in before if e.id != r.id and (
                (f.slot and (e.metadata or {}).get("slot") == f.slot)
                or restates(e.text, f.text) or (len(facts) == 1 and restates(e.text, core)))]
            for e in olds:
                if not _superseded(e):
                    self._supersede(e, r.id)
                    action = "corrected"
        if raw_id is not None:  # the message knows its facts: a search that finds it can show them instead
            raw = self.memory.get(raw_id, user=self.user)
            if raw is not None:
                self.memory.update(raw_id, user=self.user, metadata=dict(
                    raw.metadata or {}, fact_ids=[r.id for r in written if r.id is not None]))
        for topic in dict.fromkeys(f.topic for f in facts if f.topic and f.form):
            self._summarize(topic, when)
        return action

    def _summarize(self, topic: str, when: float) -> None:
        """Facts that hold side by side ("I play the oboe." / "I play the harp.") also as one
        list ("I play the oboe and harp."), a fact of slot ``<topic>.all`` that the next
        list supersedes: "Which instruments do I play?" then needs one memory, not several."""
        from .memory.extraction import join_values

        parts = [e for e in self._current_facts() if (e.metadata or {}).get("topic") == topic
                 and (e.metadata or {}).get("form")]
        values = list(dict.fromkeys(str(e.metadata["value"]) for e in parts if e.metadata.get("value")))
        if len(values) < 2:
            return
        text = parts[-1].metadata["form"].replace("{v}", join_values(values))
        slot = topic + ".all"
        r = self.memory.write(text, user=self.user, source="chat:fact", force=True, metadata={
            "kind": "fact", "slot": slot, "valid_from": when, "superseded_by": None, "raw_id": None,
            "subject": topic.split(".")[0], "value": values, "parts": [e.id for e in parts]})
        if r.id is None or r.action != "added":
            return
        self._cache_ids([r.id])
        for e in self._current_facts():
            if e.id != r.id and (e.metadata or {}).get("slot") == slot:
                self._supersede(e, r.id)

    def _resolved(self, facts: list) -> list:
        """Two-hop facts written once: "Ilse lives in Porto." with "My sister is called Ilse."
        known gives "My sister Ilse lives in Porto." (and the other way round)."""
        from .memory.extraction import Fact

        out = []
        known = self._current_facts()
        names = {}  # lower-cased name -> (relation key, relation words)
        for e in known:
            m = e.metadata or {}
            if (m.get("slot") or "").endswith(".name") and m.get("value") and m.get("subject") != "user":
                names[str(m["value"]).lower()] = (m["subject"], e.text.split(" is called ")[0])
        for f in facts:
            if f.slot and f.slot.endswith(".name") and f.value and f.subject != "user":
                names[f.value.lower()] = (f.subject, f.text.split(" is called ")[0])
        for f in facts:  # a fact about a named person whose relation is known
            if f.subject and f.subject in names and f.text.lower().startswith(f.subject.replace("_", " ")):
                rel, words = names[f.subject]
                name = f.text[:len(f.subject)]
                attr = f.slot.split(".", 1)[1] if f.slot else None
                out.append(Fact(f"{words} {name}{f.text[len(f.subject):]}", f"{rel}.{attr}" if attr else None,
                                f.value, rel, f.change))
        for f in facts:  # a relation's name given after facts about that name
            if f.slot and f.slot.endswith(".name") and f.value and f.subject != "user":
                key = f.value.lower().replace(" ", "_")
                words = f.text.split(" is called ")[0]
                for e in known:
                    m = e.metadata or {}
                    if m.get("subject") == key and e.text.lower().startswith(f.value.lower()):
                        attr = m["slot"].split(".", 1)[1] if m.get("slot") else None
                        out.append(Fact(f"{words} {e.text}", f"{f.subject}.{attr}" if attr else None, m.get("value"),
                                        f.subject, False))
        return out

    def _current_facts(self, any_kind: bool = False) -> List[Entry]:
        """The user's facts not superseded (kind=fact, superseded_by null); ``any_kind``: also
        entries stored without extraction (``remember``), raw messages aside. Kept in a cache
        that this assistant's own writes update and another process's writes invalidate."""
        dv = self.memory.store.data_version()
        if self._current is None or dv != self._current_dv:
            self._current, self._current_dv = {}, dv
            for e in self.memory.list(user=self.user):
                self._cache(e)
        return [e for e in self._current.values()
                if any_kind or (isinstance(e.metadata, dict) and e.metadata.get("kind") == "fact")]

    def _cache(self, e: Optional[Entry]) -> None:
        if self._current is None or e is None:
            return
        m = e.metadata if isinstance(e.metadata, dict) else {}
        if m.get("superseded_by") is None and m.get("kind") != "message":
            self._current[e.id] = e
        else:
            self._current.pop(e.id, None)

    def _cache_ids(self, ids) -> None:
        if self._current is not None:
            for i in ids:
                if i is not None:
                    self._cache(self.memory.get(i, user=self.user))

    def _supersede(self, old: Entry, new_id: int) -> None:
        """Mark ``old`` as superseded by entry ``new_id``, and the message it came from: that
        message says the old value too."""
        meta = dict(old.metadata) if isinstance(old.metadata, dict) else {}
        meta["superseded_by"] = new_id
        try:
            self._cache(self.memory.update(old.id, user=self.user, metadata=meta))
            raw = self.memory.get(meta["raw_id"], user=self.user) if meta.get("raw_id") is not None else None
            if raw is not None and isinstance(raw.metadata, dict) and raw.metadata.get("superseded_by") is None:
                self.memory.update(raw.id, user=self.user, metadata=dict(raw.metadata, superseded_by=new_id))
        except KeyError:  # evicted or deleted meanwhile
            self._current = None

    def _correct_last(self, prev: list, value: str, when: float) -> Optional[str]:
        """"Actually, it's X": the fact the previous message stated (``prev``), with X for its value."""
        from .memory.extraction import Fact

        # the message's own claim before the names it mentioned on the way ("my sister Ilse moved to Porto")
        ordered = [p for p in reversed(prev) if not (p[1].slot or "").endswith(".name")]
        ordered += [p for p in reversed(prev) if (p[1].slot or "").endswith(".name")]
        for fid, f in ordered:
            if not f.value or f.value not in f.text or plain(f.value) == plain(value):
                continue
            old = self.memory.get(fid, user=self.user)
            if old is None:
                continue
            new = Fact(f.text.replace(f.value, value, 1), f.slot, value, f.subject, True)
            meta = {"kind": "fact", "slot": f.slot, "valid_from": when, "superseded_by": None,
                    "raw_id": (old.metadata or {}).get("raw_id"), "subject": f.subject, "value": value}
            r = self.memory.write(new.text, user=self.user, source="chat:fact", metadata=meta, force=True)
            self._cache_ids([r.id])
            if r.id is not None and r.id != fid:
                self._supersede(old, r.id)
                self._session_facts = [(r.id, new)]
            return "corrected"
        return None

    def learn_long(self, text: str) -> Optional[str]:
        """Store a long message as chunks of at most ``chunk_chars`` (sentences packed
        together), each its own memory: first-person ones always, the rest past the
        surprise gate. Returns 'added' when any chunk was, else the first action."""
        actions = [r.action for r in self._store_chunks(text, "chat:long", force=None, results=True)]
        return "added" if "added" in actions else (actions[0] if actions else None)

    def _store_chunks(self, text: str, source: str, force: Optional[bool], results: bool = False) -> list:
        """Write ``text``'s chunks (``force=None``: first-person ones forced); ids or WriteResults."""
        chunks = split_chunks(text, self.chunk_chars)
        items = [dict(text=c, source=source, force=bool(_FIRST_PERSON.search(c)) if force is None else force)
                 for c in chunks]
        written = self.memory.write_many(items, user=self.user) if items else []
        self._cache_ids([r.id for r in written if r.action == "added"])
        added = sum(r.action == "added" for r in written)
        self.notes.append(f"a {len(text):,}-character message was stored as {len(chunks)} memories of at most "
                          f"{self.chunk_chars} characters ({added} new)")
        return written if results else [r.id for r in written]

    def _same_fact(self, text: str) -> Optional[Entry]:
        for e, _ in self.memory.search(text, 3, user=self.user, min_score=0.5, touch=False):
            if restates(e.text, text) and not _superseded(e):
                return e
        return None

    def _correct(self, value: str, when: Optional[float] = None) -> Optional[str]:
        """Put ``value`` in place of the old value in the memory the last reply used: a new
        entry that supersedes the old one (kept as history)."""
        question = self.history[-1][0] if self.history else ""
        best = None
        for e, _ in self.last.memories:
            new, sure = replace_value(e.text, value, self.last.text, question)
            if new is not None and (best is None or sure > best[0]):
                best = (sure, e, new)
        if best is None:
            return None
        _, e, new = best
        if new != e.text:
            meta = dict(e.metadata) if isinstance(e.metadata, dict) else {"kind": "fact"}
            meta.update(valid_from=time.time() if when is None else when, superseded_by=None, value=value)
            r = self.memory.write(new, user=self.user, source="chat:fact", metadata=meta, force=True)
            self._cache_ids([r.id])
            if r.id is not None and r.id != e.id:
                self._supersede(e, r.id)
        return "corrected"

    # ------------------------------------------------------------------ prompting

    def _count(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    def build_messages(self, message: str, memories: List[Tuple[Entry, float]],
                       history_tokens: Optional[int] = None) -> List[dict]:
        """The chat messages for ``message`` with ``memories`` shown, as they are (no
        budget but ``history_tokens``, default ``self.history_tokens``); :meth:`build_prompt`
        fits them to the context."""
        budget = self.history_tokens if history_tokens is None else history_tokens
        msgs: List[dict] = [{"role": "system", "content": self.system}] if self.system else []
        kept, used = [], 0
        for u, a in reversed(self.history):
            cost = self._count(u) + self._count(a)
            if used + cost > budget:
                break
            kept.append((u, a))
            used += cost
        for u, a in reversed(kept):
            msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
        # one per line, the best one nearest the question; dates only when it asks about time
        dated = asks_when(message)
        notes = [note(e.text, said_on(e) if dated else None) for e, _ in reversed(memories)]
        msgs.append({"role": "user", "content": context_turn(message, notes, abstain=self._abstain)})
        return msgs

    def examples_for(self, memory: str) -> List[Tuple[str, str, str]]:
        """The ``N_EXAMPLES`` worked examples whose fact is closest to ``memory`` (by the
        bank's encoder), least close first; the first ones of ``EXAMPLES`` when the
        encoder cannot be used."""
        enc = getattr(self.memory, "encoder", None)
        try:
            if self._example_vecs is None:
                v = np.asarray(enc([f for f, _, _ in EXAMPLES]), np.float32)
                self._example_vecs = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
            m = np.asarray(enc([memory]), np.float32)[0]
            order = np.argsort(-(self._example_vecs @ m), kind="stable")[:N_EXAMPLES]
        except (TypeError, ValueError, AttributeError):  # no usable encoder: the fixed examples
            order = np.arange(N_EXAMPLES)
        return [EXAMPLES[i] for i in order[::-1]]

    def prompt_budget(self) -> Optional[int]:
        """The most prompt tokens (``context - max_tokens``), None when unbounded."""
        return None if self.context is None else self.context - self.max_tokens

    def fit_memories(self, memories: List[Tuple[Entry, float]]) -> List[Tuple[Entry, float]]:
        """The best memories whose texts fit ``memory_tokens`` together; the best alone,
        cut to that budget (an :class:`Entry` copy; the bank is unchanged), when it does not."""
        kept, used = [], 0
        for e, s in memories:
            cost = self._count(e.text)
            if used + cost > self.memory_tokens:
                break
            kept.append((e, s))
            used += cost
        if memories and not kept:
            e, s = memories[0]
            cut = truncate_tokens(e.text, self.memory_tokens, self._count, keep="start")
            self.notes.append(f"memory [{e.id}] is {self._count(e.text):,} tokens; {self._count(cut):,} shown")
            kept = [(replace(e, text=cut), s)] if cut else []
        return kept

    def build_prompt(self, message: str, memories: List[Tuple[Entry, float]]) -> Tuple[list, List[Tuple[Entry, float]]]:
        """Prompt token ids for ``message`` that leave ``max_tokens`` of the context free,
        and the memories actually shown. In order: memories are held to ``memory_tokens``;
        if the turn alone is still too long it is cut to its end (and with no room for
        even 16 tokens of it the memories go); earlier turns get what is left."""
        budget = self.prompt_budget()
        memories = self.fit_memories(memories)
        ids = self._prompt_ids(self.build_messages(message, memories, 0))
        if budget is not None and len(ids) > budget:
            if memories and self._count(message) - (len(ids) - budget) < 16:
                self.notes.append("the message leaves no room for memories in the prompt; none shown")
                memories = []
                ids = self._prompt_ids(self.build_messages(message, memories, 0))
            n, cut = self._count(message), message
            want = n - (len(ids) - budget)
            while len(ids) > budget and want > 0:
                cut = truncate_tokens(message, want, self._count)
                ids = self._prompt_ids(self.build_messages(cut, memories, 0))
                want -= max(1, len(ids) - budget)
            if len(ids) > budget:
                raise ValueError(f"[assistant] the prompt needs {len(ids)} tokens even without the message; the "
                                 f"context is {self.context} with max_tokens={self.max_tokens}: lower max_tokens.")
            if cut != message:
                self.notes.append(f"the message is {n:,} tokens; only its last {self._count(cut):,} were given to "
                                  f"the model (context {self.context:,} tokens, {self.max_tokens} kept for the reply)")
            message = cut
        room = self.history_tokens if budget is None else min(self.history_tokens, budget - len(ids))
        while room > 0 and self.history:
            with_history = self._prompt_ids(self.build_messages(message, memories, room))
            if budget is None or len(with_history) <= budget:
                return with_history, memories
            room -= len(with_history) - budget  # the template's own tokens per turn were not counted
        return ids, memories

    def _prompt_ids(self, msgs: List[dict]) -> list:
        tok = self.tokenizer
        if getattr(tok, "has_chat_template", False) or getattr(tok, "chat_template", None):
            ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):
                ids = ids["input_ids"]
            return list(ids)
        text = "\n\n".join(f"{m['role']}: {m['content']}" for m in msgs) + "\n\nassistant:"
        return list(tok.encode(text))

    # ------------------------------------------------------------------ chatting

    def prepare(self, message: str) -> Tuple[list, List[Tuple[Entry, float]], Optional[str]]:
        """Retrieve, learn (if ``auto_learn``) and build the prompt for ``message``:
        ``(prompt token ids, memories used, what learn did)``. ``stream_respond`` and
        ``python -m mlx_synapse.generate --memory`` both go through here."""
        if not isinstance(message, str) or not message.strip():
            raise ValueError("[assistant] the message is empty.")
        if len(message) > self.max_message_chars:
            raise ValueError(f"[assistant] the message is {len(message):,} characters; one turn takes at most "
                             f"{self.max_message_chars:,}. Send it in parts.")
        self.notes = []
        memories = self.retrieve(message)
        self._abstain = bool(memories) and self.not_told(message, memories)
        if self._abstain:
            memories = []
        learned = self.learn(message) if self.auto_learn and not self.read_only else None
        try:
            ids, memories = self.build_prompt(message, memories)
            self._context_shown = bool(memories) or self._abstain
        finally:
            self._abstain = False
        return ids, memories, learned

    def reader(self):
        """The reader adapter on this assistant's model (:class:`mlx_synapse.reader.Reader`),
        installed on first use; None when there is none (``reader_note`` says why)."""
        if self._reader is None and self.reader_note is None:
            from .reader import reader_for, resolve

            path, self.reader_note = resolve(self._reader_setting)
            if path is not None and self.model is None:
                path, self.reader_note = None, "reader off: no model"
            if path is not None:
                try:
                    self._reader = reader_for(self.model, path)
                except (ValueError, FileNotFoundError, ImportError) as e:
                    self.reader_note = f"reader off: {e}"
        return self._reader

    def turn_reader(self):
        """The reader adapter the reply to the last :meth:`prepare` is generated with: the
        :class:`mlx_synapse.reader.Reader` when that prompt shows a ``Context:`` block and a
        reader is installed, else None (the base model)."""
        return self.reader() if self._context_shown else None

    def reader_scope(self):
        """A context in which the model generates the reply to the last :meth:`prepare`: the
        reader adapter on when that prompt shows a ``Context:`` block, else nothing changed."""
        import contextlib

        r = self.turn_reader()
        return r.active() if r is not None else contextlib.nullcontext()

    def not_told(self, message: str, memories: List[Tuple[Entry, float]]) -> bool:
        """True when ``message`` asks about a slot (:func:`question_slot`: "What is my niece's
        job?" -> ``niece.job``) that no current fact has, and every memory found is a fact
        about some other slot: the notes cannot answer it, and a small model shown them
        answers with their value. Unsure (no slot, or an unstructured memory found): False."""
        want = question_slot(message)
        if want is None or not is_question(message):
            return False
        for e, _ in memories:
            m = e.metadata if isinstance(e.metadata, dict) else {}
            if m.get("kind") != "fact" or not (m.get("slot") or m.get("topic")):
                return False
        return not any(slot_fits(e, want) for e in self._current_facts())

    def processors(self, ids: list, memories: List[Tuple[Entry, float]]) -> list:
        """Logits processors for the reply to prompt ``ids``: the copy bias toward the
        memories shown (:mod:`mlx_synapse.copy_bias`), when there are any."""
        if not memories or not self.copy_bonus:
            return []
        sources = [self.tokenizer.encode(" " + e.text) for e, _ in memories]
        return [make_copy_bias(sources, len(ids), self.copy_bonus)]

    def stream_respond(self, message: str) -> Iterator[str]:
        """Yield the reply piece by piece; ``self.last`` holds the whole :class:`Reply` after."""
        ids, memories, learned = self.prepare(message)
        text, last, done = "", None, False
        try:
            with self.reader_scope():  # on only for a turn that shows memories; off again after, also on Ctrl-C
                for last in stream_generate(self.model, self.tokenizer, ids, max_tokens=self.max_tokens,
                                            temp=self.temp, top_p=self.top_p,
                                            logits_processors=self.processors(ids, memories)):
                    text += last.text
                    yield last.text
            done = True
        finally:  # also when the caller stops early (Ctrl-C, close()): the session keeps what was said
            reply = Reply(text.strip(), memories, learned, len(ids),
                          last.generation_tokens if last else 0, last.generation_tps if last else 0.0,
                          list(self.notes), stopped=not done)
            self.history.append((message, reply.text))
            self.last = reply

    def respond(self, message: str) -> Reply:
        for _ in self.stream_respond(message):
            pass
        return self.last  # type: ignore[return-value]

    def reset(self) -> None:
        """Forget this session's turns (memories stay)."""
        self.history.clear()
        self.last = None
