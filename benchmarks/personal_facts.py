"""Fictional personal facts for the personalization benchmark: first-person statements
with values a pretrained model cannot guess, paraphrased questions, corrections and
distractor memories.

How it is made: an *item* is something a user can be asked about ("my dentist's
name", "where my sister lives", "my locker number"): a subject, a predicate, a fact
template, three question templates (none contains the value) and a value kind.
Values are invented, not drawn from a model's world: names and places are built
from syllables ("Ysolvane", "Quarnmere"), bands and books from odd word pairs
("The Gloaming Hares"), dates and numbers at random. Each item draws its value and
its correction value from ``random.Random(f"{seed}:{item key}")``, so a fact's value
does not depend on how many facts are asked for: ``build(seed, 1000).facts[:300]``
holds the same facts as ``build(seed, 300)``. People, pets, preferences, dates,
places and numbers are mixed by one seeded shuffle; "chained" people ("my sister's
dentist") come after the direct items, which is how a user gets past ~450 facts.

Distractors are first-person or everyday statements ("The bakery on Mill Lane
closes at six on Sundays.") built from ordinary words only; ``build`` checks that no
distractor contains any fact's answer (or a variant) and that no question does.

Limits: English only, templated paraphrases; invented names are tokenised into many
pieces by a small model's vocabulary (that is the point: it cannot know them);
dates are unambiguous only in the accepted written forms listed in ``variants``.

    from mlx_synapse.benchmarks.personal_facts import build, matches
    data = build(seed=0, n_facts=300)
    f = data.facts[0]; f.text, f.questions, f.answer, f.correction_text
"""

from __future__ import annotations

import argparse
import random
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

__all__ = ["Fact", "FactSet", "build", "normalize", "matches", "first_sentence", "MONTHS"]

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December")

# ---------------------------------------------------------------- value makers

_ONSET = ("br", "dr", "kv", "qu", "th", "v", "z", "y", "l", "m", "n", "s", "t", "k", "g", "h", "r", "sk", "tr", "ph")
_NUCLEUS = ("a", "e", "i", "o", "u", "ae", "ei", "ou", "y")
_CODA = ("", "n", "r", "l", "th", "s", "x", "nd", "rk", "v")
_PLACE_SUFFIX = ("mere", "wick", "ford", "holm", "stead", "by", "thorpe", "vale", "haven", "crag")
_ADJ = ("Gloaming", "Copper", "Velvet", "Hollow", "Brindled", "Quiet", "Crooked", "Saffron", "Ashen",
        "Lantern", "Tidal", "Fennel", "Pewter", "Moth-Eaten", "Wandering", "Obsidian")
_NOUN = ("Hares", "Lanterns", "Orchards", "Kettles", "Ravens", "Thimbles", "Anchors", "Marrows",
         "Weavers", "Herons", "Cobbles", "Spindles", "Lichens", "Bellows")
_RARE_COLOURS = ("celadon", "gamboge", "zaffre", "fulvous", "glaucous", "coquelicot", "smaragdine",
                 "falu red", "wenge", "caput mortuum", "isabelline", "eburnean", "sarcoline", "amaranth pink")


def _word(r: random.Random, syllables: int) -> str:
    w = "".join(r.choice(_ONSET) + r.choice(_NUCLEUS) + r.choice(_CODA) for _ in range(syllables))
    return w[0].upper() + w[1:]


def _name(r):
    return _word(r, r.choice((2, 3)))


def _surname(r):
    return "Dr. " + _word(r, 3)


def _place(r):
    return _word(r, 2) + r.choice(_PLACE_SUFFIX)


def _title(r):
    return f"The {r.choice(_ADJ)} {r.choice(_NOUN)}"


def _book(r):
    return f"The {r.choice(_NOUN)[:-1]} of {_place(r)}"


def _game(r):
    return _word(r, 3)


def _colour(r):
    return r.choice(_RARE_COLOURS)


def _number(r):
    return str(r.randint(1000, 9999))


def _street(r):
    return f"{r.randint(11, 389)} {_word(r, 2)} Road"


def _day(r):
    return f"{r.randint(1, 28)} {r.choice(MONTHS)}"


def _date(r):
    return f"{_day(r)} {r.randint(1961, 2023)}"


def _time(r):
    return f"{r.choice((6, 7, 8, 9, 10, 11))}:{r.choice(('05', '10', '20', '35', '40', '50', '55'))}"


MAKERS = {"name": _name, "doctor": _surname, "place": _place, "title": _title, "book": _book, "game": _game,
          "colour": _colour, "number": _number, "street": _street, "day": _day, "date": _date, "time": _time}

# ---------------------------------------------------------------- items

# (key, fact template, three questions, kind). ``{s}`` is a subject ("sister"), ``{v}`` the value.
ROLE_PREDICATES = (
    ("name", "My {s}'s name is {v}.", ("What is my {s}'s name?", "What is my {s} called?",
                                      "Remind me, who is my {s}?"), "name"),
    ("city", "My {s} lives in {v}.", ("Where does my {s} live?", "Which town is my {s} based in?",
                                      "In what place does my {s} have a home?"), "place"),
    ("birthday", "My {s}'s birthday is on {v}.", ("When is my {s}'s birthday?",
                                                 "On what day was my {s} born?",
                                                 "When should I wish my {s} a happy birthday?"), "day"),
    ("band", "My {s}'s favourite band is {v}.", ("What is my {s}'s favourite band?",
                                                "Which band does my {s} like best?",
                                                "What music group is my {s} a fan of?"), "title"),
    ("car", "My {s} drives a {v}.", ("What car does my {s} drive?", "Which make of car does my {s} have?",
                                     "What does my {s} drive?"), "game"),
    ("dog", "My {s}'s dog is called {v}.", ("What is my {s}'s dog called?", "What's the name of my {s}'s dog?",
                                           "What did my {s} name their dog?"), "name"),
)
ROLES = ("sister", "brother", "mother", "father", "grandmother", "grandfather", "aunt", "uncle", "cousin",
         "niece", "nephew", "son", "daughter", "wife", "stepbrother", "godmother", "godfather",
         "mother-in-law", "father-in-law", "sister-in-law", "best friend", "neighbour", "flatmate",
         "boss", "landlord", "tennis partner", "childhood friend", "pen pal", "mentor", "colleague",
         "piano teacher", "yoga instructor", "personal trainer", "babysitter", "gardener", "tailor",
         "driving instructor", "accountant", "plumber", "barber")
PROFESSIONALS = (
    ("dentist", "My {s}dentist is {v}.", ("Who is my {s}dentist?", "What's the name of my {s}dentist?",
                                          "Which dentist do{d} I go to?"), "doctor"),
    ("GP", "My {s}GP is {v}.", ("Who is my {s}GP?", "What is my {s}family doctor called?",
                                "Which doctor do{d} I see for check-ups?"), "doctor"),
    ("vet", "My {s}vet is {v}.", ("Who is my {s}vet?", "What's my {s}vet's name?",
                                  "Which vet looks after my {s}pets?"), "doctor"),
    ("optician", "My {s}optician is {v}.", ("Who is my {s}optician?", "What is my {s}optician called?",
                                            "Who checks my {s}eyes?"), "doctor"),
    ("therapist", "My {s}therapist is {v}.", ("Who is my {s}therapist?", "What's my {s}therapist's name?",
                                              "Who do{d} I talk to in therapy?"), "doctor"),
)
PETS = ("dog", "cat", "parrot", "tortoise", "horse", "rabbit", "goldfish", "ferret", "hamster", "iguana")
PERSONAL = (
    ("hometown", "I grew up in {v}.", ("Where did I grow up?", "What is my hometown?",
                                       "Which town was I raised in?"), "place"),
    ("honeymoon", "We went to {v} for our honeymoon.", ("Where did we go on our honeymoon?",
                                                         "What was our honeymoon destination?",
                                                         "Where did we travel after the wedding?"), "place"),
    ("university", "I studied at the University of {v}.", ("Where did I go to university?",
                                                             "Which university did I attend?",
                                                             "Where did I get my degree?"), "place"),
    ("holiday", "Next summer we are going on holiday to {v}.", ("Where are we going on holiday next summer?",
                                                                 "What's our summer holiday destination?",
                                                                 "Where is our next summer trip?"), "place"),
    ("band", "My favourite band is {v}.", ("What is my favourite band?", "Which group do I like most?",
                                           "Who is my favorite band?"), "title"),
    ("pub", "My local pub is {v}.", ("What is my local pub?", "Which pub do I usually go to?",
                                     "What's the name of my regular pub?"), "title"),
    ("book", "My favourite book is {v}.", ("What is my favourite book?", "Which book do I love most?",
                                           "What's my favorite novel?"), "book"),
    ("boardgame", "My favourite board game is {v}.", ("What is my favourite board game?",
                                                       "Which board game do I like best?",
                                                       "What game do I always want to play at game night?"),
     "game"),
    ("colour", "My favourite colour is {v}.", ("What is my favourite colour?", "Which colour do I like best?",
                                               "What's my favorite color?"), "colour"),
    ("locker", "My gym locker number is {v}.", ("What is my gym locker number?", "Which locker do I use at the gym?",
                                                "What number is my locker at the gym?"), "number"),
    ("pin", "The code for my garage door is {v}.", ("What is the code for my garage door?",
                                                    "How do I open my garage door?",
                                                    "What's my garage code?"), "number"),
    ("address", "My office is at {v}.", ("Where is my office?", "What is the address of my office?",
                                         "Where do I work from?"), "street"),
    ("wedding", "My wedding anniversary is on {v}.", ("When is my wedding anniversary?",
                                                      "On what date did I get married?",
                                                      "When is our anniversary?"), "date"),
    ("moved", "I moved into my flat on {v}.", ("When did I move into my flat?", "What date did I move in?",
                                               "When did I start living in my flat?"), "date"),
    ("passport", "My passport expires on {v}.", ("When does my passport expire?",
                                                 "What is my passport's expiry date?",
                                                 "Until when is my passport valid?"), "date"),
    ("alarm", "My alarm is set for {v} on weekdays.", ("What time is my weekday alarm?",
                                                       "When does my alarm go off on weekdays?",
                                                       "What time do I wake up during the week?"), "time"),
    ("car", "My car is called {v}.", ("What is my car called?", "What name did I give my car?",
                                      "What do I call my car?"), "name"),
    ("boat", "My boat is named {v}.", ("What is my boat named?", "What's the name of my boat?",
                                       "What did I call my boat?"), "name"),
)
CHAIN_OWNERS = ("sister", "brother", "mother", "father", "wife", "son", "daughter", "boss", "neighbour",
                "best friend", "cousin", "uncle", "aunt", "grandmother", "flatmate", "colleague", "mentor",
                "landlord", "godmother", "niece")


def _items() -> List[Tuple[str, str, Tuple[str, ...], str, int]]:
    """All items as (key, fact template, questions, kind, tier); tier 0 = direct, 1 = someone
    else's professional ("my sister's dentist"), 2 = someone else's relation ("my boss's niece")."""
    out = []
    for role in ROLES:
        for key, fact, qs, kind in ROLE_PREDICATES:
            out.append((f"{role}/{key}", fact.replace("{s}", role), tuple(q.replace("{s}", role) for q in qs),
                        kind, 0))
    for pro, fact, qs, kind in PROFESSIONALS:
        out.append((f"me/{pro}", fact.replace("{s}", ""), tuple(q.replace("{s}", "").replace("{d}", "")
                                                             for q in qs), kind, 0))
    for pet in PETS:
        out.append((f"{pet}/name", f"My {pet} is called {{v}}.",
                    (f"What is my {pet}'s name?", f"What is my {pet} called?", f"What did I name my {pet}?"),
                    "name", 0))
    for key, fact, qs, kind in PERSONAL:
        out.append((f"me/{key}", fact, qs, kind, 0))
    for owner in ROLES:
        for pro, fact, qs, kind in PROFESSIONALS:
            s = f"{owner}'s "
            qq = tuple(q.replace("{s}", s).replace("do{d} I", f"does my {owner}") for q in qs)
            out.append((f"{owner}/{pro}", fact.replace("{s}", s), qq, kind, 1))
    for owner in CHAIN_OWNERS:
        for role in ROLES:
            if role != owner:
                s = f"{owner}'s {role}"
                out.append((f"{owner}/{role}/name", f"The name of my {s} is {{v}}.",
                            (f"What is my {s}'s name?", f"What is my {s} called?", f"Who is my {s}?"), "name", 2))
    return out


ITEMS = _items()

# ---------------------------------------------------------------- answers

_SENT_END = re.compile(r"(?<!\bDr)(?<!\bMr)(?<!\bMrs)(?<!\bMs)(?<!\bSt)(?<!\bNo)[.!?](?=\s|$)")


def normalize(text: str) -> str:
    """Lowercase, diacritics and punctuation removed, whitespace collapsed; ordinals kept
    as their number ("3rd" -> "3")."""
    t = unicodedata.normalize("NFKD", text)
    t = "".join(c for c in t if not unicodedata.combining(c)).lower()
    t = re.sub(r"\b(\d+)(st|nd|rd|th)\b", r"\1", t)
    t = re.sub(r"[^\w\s]|_", " ", t)
    return " ".join(t.split())


def first_sentence(text: str) -> str:
    m = _SENT_END.search(text.strip())
    return text.strip()[: m.end()] if m else text.strip()


def matches(reply: str, accepted: Sequence[str]) -> bool:
    """True when a normalised accepted answer appears in the normalised reply as whole words."""
    r = f" {normalize(reply)} "
    return any(f" {normalize(a)} " in r for a in accepted if normalize(a))


def variants(value: str, kind: str) -> Tuple[str, ...]:
    """Accepted written forms of ``value`` (the value itself first)."""
    out = [value]
    if kind == "doctor":
        out.append(value.split(" ", 1)[1])  # the surname alone
    elif kind == "title":
        out.append(value[4:])  # without "The"
    elif kind in ("day", "date"):
        parts = value.split(" ")
        d, mo = parts[0], parts[1]
        y = f" {parts[2]}" if len(parts) > 2 else ""
        out += [f"{mo} {d}{y}", f"{d} of {mo}{y}", f"{mo} {d},{y}"]
        if y:
            out.append(f"{int(d):02d}/{MONTHS.index(mo) + 1:02d}/{parts[2]}")
    elif kind == "time":
        h, m = value.split(":")
        out.append(f"{h} {m}")
    elif kind == "street":
        out.append(value.rsplit(" ", 1)[0])  # without "Road"
    return tuple(dict.fromkeys(out))


# ---------------------------------------------------------------- distractors

_D_TEMPLATES = (
    "The bakery on {street} closes at {hour} on Sundays.",
    "I need to buy {thing} before the weekend.",
    "The {thing} in the kitchen has been broken since {month}.",
    "It rained all afternoon on {weekday}.",
    "The train to the city was {mins} minutes late this morning.",
    "I finally finished painting the {room}.",
    "The supermarket had a sale on {food} yesterday.",
    "I have been trying to drink more water this {month}.",
    "The library extended its opening hours on {weekday}s.",
    "I watched a documentary about {topic} last night.",
    "There is a new {shop} opening near the station.",
    "My {thing} needs new batteries.",
    "The {room} window sticks when it is cold.",
    "I read an article about {topic} on my lunch break.",
    "The park near {street} is being resurfaced.",
    "I want to learn more about {topic} this year.",
)
_D_FILL = {
    "street": ("Mill Lane", "Church Street", "the high street", "Station Road", "Market Square", "Oak Avenue"),
    "hour": ("four", "five", "six", "noon", "three"),
    "thing": ("a new kettle", "light bulbs", "the toaster", "the remote control", "a doorstop", "bin bags",
              "the smoke alarm", "the radio", "a bike lock"),
    "month": ("January", "the spring", "last month", "the autumn", "the summer"),
    "weekday": ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"),
    "mins": ("five", "ten", "twelve", "twenty", "forty"),
    "room": ("hallway", "spare room", "bathroom", "landing", "garden shed", "kitchen"),
    "food": ("strawberries", "pasta", "coffee beans", "cheddar", "tinned tomatoes", "oranges"),
    "topic": ("octopuses", "volcanoes", "the Roman roads", "bees", "glaciers", "old maps", "deep sea fish",
              "medieval castles", "tea plantations", "bridges"),
    "shop": ("hardware shop", "florist", "bike repair shop", "noodle bar", "charity shop", "launderette"),
}


def _distractors(r: random.Random, n: int, banned: Sequence[str]) -> List[str]:
    banned = [f" {b} " for b in {normalize(a) for a in banned} if b]
    out, seen, tries = [], set(), 0
    while len(out) < n and tries < 100 * n:
        tries += 1
        t = r.choice(_D_TEMPLATES)
        text = re.sub(r"\{(\w+)\}", lambda m: r.choice(_D_FILL[m.group(1)]), t)
        text = text[0].upper() + text[1:]
        padded = f" {normalize(text)} "
        if text in seen or any(b in padded for b in banned):
            continue
        seen.add(text)
        out.append(text)
    if len(out) < n:
        raise ValueError(f"[personal_facts] only {len(out)} distinct distractors can be made; asked for {n}.")
    return out


# ---------------------------------------------------------------- the set


@dataclass(frozen=True)
class Fact:
    """One stored fact: ``text`` is what the user said, ``questions`` ask for ``answer``
    (accepted written forms in ``accepted``); ``correction`` is a new value whose
    statement "Actually, it's <correction>." the user may make, ``correction_accepted``
    its forms, ``corrected_text`` the fact with the new value."""

    key: str
    category: str
    kind: str
    text: str
    questions: Tuple[str, ...]
    answer: str
    accepted: Tuple[str, ...]
    correction: str
    correction_accepted: Tuple[str, ...]
    corrected_text: str


@dataclass(frozen=True)
class FactSet:
    facts: List[Fact]
    distractors: List[str]
    seed: int
    meta: Dict[str, int] = field(default_factory=dict)

    def questions(self, per_fact: int = 2) -> List[Tuple[int, str]]:
        """``(fact index, question)`` pairs, ``per_fact`` per fact."""
        return [(i, q) for i, f in enumerate(self.facts) for q in f.questions[:per_fact]]


def build(seed: int = 0, n_facts: int = 300, n_distractors: int = 120, n_questions: int = 3) -> FactSet:
    """``n_facts`` facts (direct items first, in a seeded order, then chained ones) with
    ``n_questions`` paraphrased questions each (seeded order), and ``n_distractors``
    distractor memories, all from ``seed``."""
    if not 1 <= n_facts <= len(ITEMS):
        raise ValueError(f"[personal_facts] n_facts must be in [1, {len(ITEMS)}] but got {n_facts}.")
    if not 1 <= n_questions <= 3:
        raise ValueError(f"[personal_facts] n_questions must be in [1, 3] but got {n_questions}.")
    order = random.Random(seed)
    tiers = [[it for it in ITEMS if it[4] == t] for t in (0, 1, 2)]
    for t in tiers:
        order.shuffle(t)
    chosen = (tiers[0] + tiers[1] + tiers[2])[:n_facts]
    used: set = set()
    facts = []
    for key, template, qs, kind, tier in chosen:
        r = random.Random(f"{seed}:{key}")
        vals = []
        while len(vals) < 2:  # the value and its correction, distinct from every other value
            v = MAKERS[kind](r)
            if normalize(v) not in used:
                used.add(normalize(v))
                vals.append(v)
        qs = list(qs)
        r.shuffle(qs)
        subject = key.split("/")[0]
        facts.append(Fact(
            key=key, category=("chained" if tier else "people" if subject in ROLES else
                               "pets" if subject in PETS else "personal"),
            kind=kind, text=template.format(v=vals[0]), questions=tuple(qs[:n_questions]), answer=vals[0],
            accepted=variants(vals[0], kind), correction=vals[1], correction_accepted=variants(vals[1], kind),
            corrected_text=template.format(v=vals[1]),
        ))
    banned = [a for f in facts for a in f.accepted + f.correction_accepted]
    distractors = _distractors(random.Random(f"{seed}:distractors"), n_distractors, banned)
    for f in facts:
        for q in f.questions:
            if matches(q, f.accepted):
                raise AssertionError(f"[personal_facts] question {q!r} contains its answer")
    return FactSet(facts, distractors, seed, {"items": len(ITEMS)})


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--facts", type=int, default=300)
    p.add_argument("--examples", type=int, default=8)
    a = p.parse_args(argv)
    data = build(a.seed, a.facts)
    cats: Dict[str, int] = {}
    for f in data.facts:
        cats[f.category] = cats.get(f.category, 0) + 1
    print(f"seed {a.seed}: {len(data.facts)} facts (of {len(ITEMS)} items), {len(data.distractors)} distractors, "
          f"categories {cats}")
    for f in data.facts[: a.examples]:
        print(f"- {f.text}  | {f.questions[0]} -> {f.answer}  | correction: {f.correction}")
    for d in data.distractors[:3]:
        print(f"- distractor: {d}")


if __name__ == "__main__":
    main()
