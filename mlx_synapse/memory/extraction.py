"""Atomic facts from what a user says in ordinary conversation.

``extract(message, ts)`` turns a chatty message ("Long shift today. Being a carpenter is
tiring but I love my job.") into self-contained facts ("I work as a carpenter.", slot
``user.job``) that a later question ("What is my job?") finds, each carrying the
message's timestamp. It is plain-text rules, no model:

1. the message is split into sentences, the sentences into clauses (at ", but", "; ",
   ", and", " because ", ...); a clause that starts with "he", "she" or "they" takes the
   subject of the clause before it when that one named a person ("my sister", "Ilse");
2. each clause is matched against a small vocabulary of relations written from general
   English (work, home, origin, names of people and pets, favourites, what one plays,
   speaks, drives, is allergic to, owns), with subjects "I"/"we", "my <relation>" or a
   capitalised name; a match gives a normalised sentence, a ``slot`` (what the fact is
   about: ``user.job``, ``sister.city``, ``user.favorite.food``) and the value;
3. a first-person clause that no rule matched, and a clause about someone the user
   named, is kept as a fact of its own (its words as said; "today"/"yesterday" made
   into the date), so a long message does not hide it;
4. "actually, it's X" / "sorry, I meant X" with no statement of its own is a
   ``correction`` value for the caller to apply to the fact said just before.

Whatever matches nothing (chit-chat, other languages, anything unparseable) gives no
facts; the caller stores the message verbatim (``kind="message"``), never mangled.
A change said as such ("I moved to Lyon", "these days I work as a nurse", "lately my
favourite food is sushi") is marked ``change=True``; the caller lets a new fact of a
slot supersede the older one either way.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

__all__ = ["Fact", "Extraction", "extract", "split_sentences", "split_clauses", "looks_english", "day", "join_values",
           "question_slot"]

# ---------------------------------------------------------------------------- words

_REL_WORDS = (
    "sister", "brother", "mother", "mom", "mum", "father", "dad", "son", "daughter", "wife", "husband",
    "partner", "boyfriend", "girlfriend", "fiance", "fiancé", "fiancee", "fiancée", "aunt", "uncle", "cousin",
    "niece", "nephew", "grandmother", "grandma", "granny", "grandfather", "grandpa", "grandson",
    "granddaughter", "stepmother", "stepfather", "stepson", "stepdaughter", "stepsister", "stepbrother",
    "sister-in-law", "brother-in-law", "mother-in-law", "father-in-law", "best friend", "friend",
    "boss", "manager", "roommate", "flatmate", "housemate", "neighbor", "neighbour", "colleague", "coworker",
    "co-worker", "teacher", "doctor", "therapist", "landlord", "landlady", "mentor", "coach", "kid", "child",
    "baby", "twin",
)
_PET_WORDS = (
    "dog", "cat", "puppy", "kitten", "parrot", "hamster", "rabbit", "bunny", "horse", "pony", "goldfish", "fish",
    "bird", "budgie", "canary", "turtle", "tortoise", "snake", "lizard", "gecko", "iguana", "ferret",
    "guinea pig", "mouse", "rat", "chinchilla", "hedgehog", "pig", "goat", "chicken", "duck", "cockatoo",
)
_MODS = ("older", "younger", "little", "big", "baby", "twin", "elder", "eldest", "oldest", "youngest", "new",
         "old", "step", "late")
_REL = "|".join(sorted((re.escape(w) for w in _REL_WORDS + _PET_WORDS), key=len, reverse=True))
_PETS = "|".join(sorted((re.escape(w) for w in _PET_WORDS), key=len, reverse=True))
_MOD = "|".join(_MODS)

# Common occupations (general English), for "I'm a nurse"; any head noun ending like an
# occupation ("-ist", "-ician", "-eer", "-smith") counts too.
_JOBS = frozenset("""
accountant actor actress architect artist astronaut attorney baker banker barber barista bartender beekeeper
biologist blacksmith bookkeeper brewer bricklayer builder butcher buyer carpenter cashier chef chemist
cleaner clerk coach cook counselor counsellor courier curator dancer decorator dentist designer detective
developer dietitian diplomat director doctor driver economist editor electrician engineer farmer firefighter
fisherman florist gardener geologist hairdresser illustrator inspector instructor interpreter janitor jeweler
jeweller journalist judge labourer laborer lawyer lecturer librarian lifeguard locksmith machinist manager
mechanic midwife miner musician nanny navigator nurse officer optician painter paralegal paramedic pharmacist
photographer physician physicist pilot plasterer plumber poet policeman policewoman postman potter
professor programmer psychologist receptionist reporter researcher roofer sailor salesman saleswoman
scientist sculptor secretary singer soldier surgeon surveyor tailor teacher technician therapist translator
tutor upholsterer veterinarian vet waiter waitress welder writer zookeeper analyst consultant entrepreneur
student intern apprentice caretaker carer caregiver cook courier ranger shepherd steward stewardess
conductor composer animator coder tester trainer paramedic dispatcher glazier tiler stonemason mason
""".split())
_JOB_ENDINGS = ("ist", "ician", "ologist", "eer", "smith", "wright", "grapher", "monger")
# "being a kid", "as a result": not occupations.
_NOT_JOBS = frozenset("""kid child teen teenager result matter rule whole bonus treat family gift favor favour
joke change reminder side surprise way fan lot bit person human parent mom mum dad mother father adult beginner
friend""".split())

_TIME_TAIL = re.compile(
    r"(?:,?\s+(?:last|this|next|past)\s+(?:week|month|year|spring|summer|autumn|fall|winter|weekend|night|"
    r"morning|evening|monday|tuesday|wednesday|thursday|friday|saturday|sunday)"
    r"|,?\s+(?:now|today|tonight|yesterday|recently|lately|again|anymore|any more|too|as well|though|actually|"
    r"a lot|a bit|a little|daily|weekly|most \w+|"
    r"these days|nowadays|at the moment|right now|for now|for good|full[- ]time|part[- ]time|for a living|"
    r"for (?:a|the|about|almost|over|nearly) [\w ]+|for \d+ \w+|since [\w ]+|a (?:few|couple of) \w+ ago|"
    r"\w+ (?:days|weeks|months|years) ago|ago|every \w+|with (?:my|his|her|our) [\w ]+|"
    r"(?:which|who|that|where|because|since|so|and|but|while|when) .*)"
    r"|\s*\(.*\))\s*$",
    re.I,
)
_NOT_TAIL = re.compile(r"[,;]?\s*(?:\bnot\b|\brather than\b|\binstead of\b|\bno longer\b).*$", re.I)
_ENGLISH = frozenset("""i i'm im my me we our you your the a an and but is are was were am be been have has had do
does did to of in on at for with it this that it's so just not no yes he she they his her their there what
when where who how really today love like got get very""".split())
_CHANGE = re.compile(r"\b(?:moved|moving|relocated|relocating|these days|nowadays|now|lately|recently|"
                     r"anymore|any more|no longer|switched|changed|new|became|become|started|starting|"
                     r"just got|used to)\b", re.I)
_CORRECTION_START = re.compile(
    r"^\s*(?:actually|no|nope|sorry|correction|wait|oops|not quite|my bad|my mistake|i mean|i meant|"
    r"that's wrong|that is wrong|scratch that)\b[\s,:;.!-]*(.*)$", re.I | re.S)
_CORRECTION_VALUE = re.compile(
    r"^(?:(?:i|i've)\s+(?:meant|mean)\s+(?:to say\s+)?|it's\s+|it is\s+|its\s+|it was\s+|that's\s+|that is\s+|"
    r"they're\s+|they are\s+|he's\s+|he is\s+|she's\s+|she is\s+|the answer is\s+|should be\s+|"
    r"should have said\s+)(.+)$", re.I | re.S)
_NOT_VALUES = frozenset("fine ok okay alright all right good great nothing nevermind whatever correct true "
                        "wrong false then thanks no problem not important sure".split())
_QUESTION_START = re.compile(
    r"^\s*(what|what's|whats|who|who's|whom|whose|where|where's|when|when's|why|how|which|do|does|did|"
    r"is|are|am|was|were|can|could|should|would|will|have|has|tell me|remind me)\b", re.I)


@dataclass(frozen=True)
class Fact:
    """One atomic fact: ``text`` is a self-contained sentence; ``slot`` what it is about
    (a new fact of the same slot supersedes the old one), None for facts that may hold
    side by side (pets, allergies, events); ``subject`` who it is about ("user",
    "sister", or a lower-cased name); ``value`` the stated value, when a rule found one."""

    text: str
    slot: Optional[str] = None
    value: Optional[str] = None
    subject: Optional[str] = None
    change: bool = False
    topic: Optional[str] = None  # facts that hold side by side ("I play the oboe", "... the harp"): what they share
    form: Optional[str] = None  # the fact's sentence with "{v}" for the value: a list of values is written with it


@dataclass
class Extraction:
    facts: List[Fact] = field(default_factory=list)
    correction: Optional[str] = None  # "actually, it's X" with nothing else: X
    question: bool = False
    english: bool = True


# ---------------------------------------------------------------------------- splitting

_SENT_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n+")
_CLAUSE = re.compile(r"\s*(?:;|:\s|,?\s+but\s+|,\s*and\s+|\s+and\s+(?=(?:i|we|my|he|she|they)\b)|,?\s+because\s+|"
                     r",?\s+so\s+(?=(?:i|we|my|he|she|they)\b)|,?\s+although\s+|,?\s+though\s+|\s+-+\s+|"
                     r",\s*(?=(?:i|we|my)\b(?!\s+(?:mean|guess)\b)))\s*", re.I)


def split_sentences(text: str) -> List[str]:
    return [s.strip() for s in _SENT_END.split(text.strip()) if s and s.strip()]


def split_clauses(sentence: str) -> List[str]:
    return [c.strip(" ,;") for c in _CLAUSE.split(sentence) if c and c.strip(" ,;.!?")]


def looks_english(text: str) -> bool:
    """True when enough of the words are common English ones (a rough test: rules are
    only tried on English; anything else is stored as said)."""
    words = re.findall(r"[^\W\d_]+(?:'[^\W\d_]+)?", text.lower())
    if not words:
        return False
    if any(ord(c) > 0x24F for c in text if c.isalpha()):  # non-Latin script
        return False
    common = sum(w in _ENGLISH for w in words)
    return common >= 1 and common / len(words) >= 0.15


def day(ts: float) -> str:
    """``ts`` (unix seconds) as "3 May 2024" (UTC)."""
    d = dt.datetime.fromtimestamp(ts, dt.timezone.utc)
    return f"{d.day} {d.strftime('%B %Y')}"


# ---------------------------------------------------------------------------- values

def _clean(v: str) -> str:
    v = v.strip().strip("\"'")
    v = _NOT_TAIL.sub("", v)
    for _ in range(4):
        w = _TIME_TAIL.sub("", v.rstrip(".!?,;: "))
        if w == v:
            break
        v = w
    return v.strip().rstrip(".!?,;:").strip().strip("\"'")


def _cap_value(v: str) -> Optional[str]:
    """A proper-name value ("Lyon", "the Hague", "New York"): starts with a capital."""
    v = _clean(v)
    m = re.match(r"^((?:the\s+)?[A-Z][\w'.-]*(?:\s+(?:[A-Z][\w'.-]*|de|du|la|le|del|di|da|upon|on|of|am|im|"
                 r"an der)){0,4})", v)
    if not m:
        return None
    out = m.group(1).rstrip(".")
    return out if out.split()[-1][:1].isupper() else None


def _np_value(v: str, max_words: int = 5) -> Optional[str]:
    v = _clean(v)
    if not v or len(v.split()) > max_words:
        return None
    if v.lower() in _NOT_VALUES:
        return None
    return v


def _article(noun: str) -> str:
    return "an" if noun[:1].lower() in "aeiou" else "a"


def _is_job(noun: str) -> bool:
    head = noun.lower().split()[-1] if noun.split() else ""
    if not head or head in _NOT_JOBS or noun.lower() in _NOT_JOBS:
        return False
    return head in _JOBS or head.endswith(_JOB_ENDINGS)


def _norm_rel(rel: str) -> str:
    r = rel.lower().replace("mum", "mom").replace("fiancée", "fiance").replace("fiancé", "fiance")
    r = {"neighbour": "neighbor", "co-worker": "coworker", "grandma": "grandmother", "granny": "grandmother",
         "grandpa": "grandfather", "dad": "father", "mom": "mother", "fiancee": "fiance"}.get(r, r)
    return r.replace(" ", "_")


# ---------------------------------------------------------------------------- subjects

_NAME = r"[A-Z][a-zà-ÿ'-]+(?:\s+[A-Z][a-zà-ÿ'-]+)?"
_CNAME = rf"(?-i:{_NAME})"
_SUBJ = rf"(?P<subj>\bI\b|\bwe\b|\bmy\s+(?:(?:{_MOD})\s+)?(?:{_REL})\b(?:,?\s+(?-i:{_NAME})\b(?!\s+(?:is\s+)?(?:called|named)))?|" \
        rf"(?-i:(?<![\w'])(?!I\b|My\b|We\b|The\b|It\b|This\b|That\b|There\b|He\b|She\b|They\b|Our\b|Your\b){_NAME}))"
_PRONOUN_START = re.compile(r"^(he|she|they)('s|'re|\s)", re.I)
_NOT_NAMES = frozenset("""i my we the it this that there he she they our your his her their today yesterday
tomorrow monday tuesday wednesday thursday friday saturday sunday january february march april may june july
august september october november december lately recently actually honestly anyway also well so oh yes no
sadly luckily finally hopefully thankfully being as when after before since now these long just got""".split())


def _name_key(name: str) -> str:
    return re.sub(r"'s?$", "", name.strip()).lower().replace(" ", "_")


def _subject(raw: str) -> Tuple[str, str, bool]:
    """(slot prefix, how to write the subject, first person?) for a matched subject."""
    s = " ".join(raw.split())
    low = s.lower()
    if low in ("i", "we"):
        return "user", "I" if low == "i" else "We", True
    m = re.match(rf"my\s+(?:((?:{_MOD}))\s+)?({_REL})(?:,?\s+({_NAME}))?$", s, re.I)
    if m:
        mod, rel, name = (m.group(1) or "").lower(), m.group(2).lower(), m.group(3)
        key = _norm_rel(rel) if not mod else f"{mod}_{_norm_rel(rel)}"
        if name:  # "my friend Ximena": one of possibly several friends, her own slots
            key = f"{key}_{_name_key(name)}"
        return key, "My " + (f"{mod} " if mod else "") + rel + (f" {name}" if name else ""), False
    return low.replace(" ", "_"), s, False


def _ok_subject(raw: str) -> bool:
    return raw.lower() in ("i", "we") or raw.lower().startswith("my ") or raw.split()[0].lower() not in _NOT_NAMES


# ---------------------------------------------------------------------------- rules

def _v(first: bool, we: bool, i_form: str, third: str) -> str:
    return i_form if first else third


_ADDING = re.compile(r"\b(?:too|also|as well|another|both|in addition)\b", re.I)
_BE = r"(?:'m|'s|'re|\s+am|\s+is|\s+are|\s+was|\s+were)"
_ADV = r"(?:\s+(?:now|currently|still|also|actually|finally|just|recently|officially|really|even|already))*"


def _rules(clause: str) -> List[Fact]:
    out: List[Fact] = []
    c = clause.strip()
    change = bool(_CHANGE.search(c))

    def fact(subj_raw: str, attr: str, first_text: str, third_text: str, value: str, chg: bool = change,
             multi: bool = False) -> None:
        if not _ok_subject(subj_raw):
            return
        key, who, first = _subject(subj_raw)
        we = who == "We"
        if first:
            text = first_text.format(S=who, v=value, a=_article(value))
            if we:
                text = text.replace("I'm ", "We're ").replace(" am ", " are ")
        else:
            text = third_text.format(S=who, v=value, a=_article(value))
        text = text[0].upper() + text[1:]
        multi = multi or bool(_ADDING.search(c))  # "I play the oboe too": one more, not a replacement
        text = text if text.endswith(".") else text + "."
        topic = f"{key}.{attr.split('.')[0]}" if multi else None
        form = text.replace(value, "{v}", 1) if multi and value in text else None
        out.append(Fact(text, None if multi else f"{key}.{attr}", value, key, chg, topic, form))

    # work: "I work as a nurse", "my sister works as a pilot", "these days I'm employed as a chef"
    for m in re.finditer(rf"{_SUBJ}{_ADV}(?:{_BE})?{_ADV}\s+(?:work|works|worked|working|employed|"
                         rf"started (?:working|work)|got a (?:new )?job|trained|retrained|qualified|"
                         rf"began working|now working)\s+as\s+(?:an?\s+|the\s+)?(?P<v>[^,.;!?]+)", c, re.I):
        v = _np_value(m.group("v"), 4)
        if v:
            fact(m.group("subj"), "job", "I work as {a} {v}.", "{S} works as {a} {v}.", v)
    # "I'm a nurse", "my brother is an electrician" (only occupation nouns)
    for m in re.finditer(rf"{_SUBJ}{_ADV}{_BE}{_ADV}\s+(?:an?\s+)(?P<v>[a-z][a-z -]*?)(?:\s+by (?:trade|profession)|"
                         rf"\s+(?:at|in|for|and|but|who|now|these)\b|[,.;!?]|$)", c, re.I):
        v = _np_value(m.group("v"), 3)
        if v and _is_job(v):
            fact(m.group("subj"), "job", "I work as {a} {v}.", "{S} works as {a} {v}.", v)
    # "being a carpenter is tiring", "as a nurse, I ..."
    m = re.search(r"(?:^|\b(?:love|like|enjoy|hate|of|about|with)\s+)being\s+an?\s+(?P<v>[a-z][a-z-]*(?:\s+[a-z-]+){0,2})",
                  c, re.I)
    if m is None:
        m = re.search(r"^as\s+an?\s+(?P<v>[a-z][a-z-]*(?:\s+[a-z-]+){0,2})\s*,", c, re.I)
    if m:
        words = m.group("v").split()
        for n in range(len(words), 0, -1):  # the longest run of words that ends on an occupation
            v = " ".join(words[:n])
            if _is_job(v) and not (n > 1 and words[n - 1] in _NOT_JOBS):
                fact("I", "job", "I work as {a} {v}.", "", v)
                break
    # "my job as a nurse", "my job is being a nurse"
    m = re.search(r"\bmy\s+(?:new\s+)?(?:job|work|role|position|career|profession|occupation)\s+(?:as|is)\s+"
                  r"(?:being\s+)?an?\s+(?P<v>[a-z][a-z -]*?)\s*(?:\bis\b|\bwas\b|\bat\b|,|$|[.!?])", c, re.I)
    if m:
        v = _np_value(m.group("v"), 3)
        if v:
            fact("I", "job", "I work as {a} {v}.", "", v)

    # home: "I live in Lyon", "we moved to Porto", "my sister lives in Oslo", "I'm based in Leeds"
    for m in re.finditer(rf"{_SUBJ}{_ADV}(?:{_BE})?{_ADV}\s+(?:live|lives|lived|living|reside|resides|based|"
                         rf"settled|staying|stays)\s+in\s+(?P<v>.+)", c, re.I):
        v = _cap_value(m.group("v"))
        if v:
            fact(m.group("subj"), "city", "I live in {v}.", "{S} lives in {v}.", v)
    for m in re.finditer(rf"{_SUBJ}{_ADV}(?:\s+have|\s+has|'ve|'s)?{_ADV}\s+(?:moved|relocated|moving|relocating|"
                         rf"move|relocate)\s+(?:back\s+)?(?:to|over to)\s+(?P<v>.+)", c, re.I):
        v = _cap_value(m.group("v"))
        if v:
            fact(m.group("subj"), "city", "I live in {v}.", "{S} lives in {v}.", v, chg=True)
    m = re.search(r"\b(?:my|our)\s+(?:new\s+|little\s+|tiny\s+|rented\s+)?(?:home|place|apartment|flat|house|"
                  r"neighbou?rhood|street)\s+(?:is\s+|here\s+)?in\s+(?P<v>.+)", c, re.I)
    if m is None:
        m = re.search(r"\b(?:here|back home|at home|living)\s+in\s+(?P<v>(?-i:[A-Z]).+)", c, re.I)
    if m is None:
        m = re.search(r"(?:^|\b(?:love|like|enjoy|hate)\s+)living\s+in\s+(?P<v>.+)", c, re.I)
    if m:
        v = _cap_value(m.group("v"))
        if v:
            fact("I", "city", "I live in {v}.", "", v)
    # "the trams in Oslo were late again, typical of where I live"
    if not any(f.slot == "user.city" for f in out) and re.search(
            r"\b(?:where (?:I|we)(?:'ve)? (?:live|lived|am living|'m living)|my (?:city|town|home town|hometown)|"
            r"(?:round|around) here|our (?:city|town))\b", c, re.I):
        places = [p for p in (_cap_value(m.group(1)) for m in re.finditer(r"\bin\s+((?-i:[A-Z])[^,.;!?]*)", c, re.I))
                  if p]
        if len(set(places)) == 1:
            fact("I", "city", "I live in {v}.", "", places[0])
    # origin
    for m in re.finditer(rf"{_SUBJ}{_ADV}(?:{_BE})?{_ADV}\s+(?:originally\s+)?(?:from|come from|comes from|"
                         rf"hail from|hails from)\s+(?P<v>.+)", c, re.I):
        v = _cap_value(m.group("v"))
        if v:
            fact(m.group("subj"), "origin", "I am from {v}.", "{S} is from {v}.", v)
    for m in re.finditer(rf"{_SUBJ}{_ADV}(?:{_BE})\s+born\s+in\s+(?P<v>.+)", c, re.I):
        v = _cap_value(m.group("v"))
        if v:
            fact(m.group("subj"), "birthplace", "I was born in {v}.", "{S} was born in {v}.", v)
    for m in re.finditer(rf"{_SUBJ}{_ADV}\s+(?:grew|grow)\s+up\s+in\s+(?P<v>.+)", c, re.I):
        v = _cap_value(m.group("v"))
        if v:
            fact(m.group("subj"), "hometown", "I grew up in {v}.", "{S} grew up in {v}.", v)

    # names: "my sister is called Ilse", "my dog's name is Rex", "my sister Ilse", "I have a cat named Miso"
    for m in re.finditer(rf"\bmy\s+(?P<rel>(?:(?:{_MOD})\s+)?(?:{_REL}))(?P<verb>'s\s+name\s+is|\s+is\s+(?:called|named)|"
                         rf"\s+goes\s+by|\s+is|,)?\s+(?P<v>{_CNAME})", c, re.I):
        name = re.sub(r"'s?$", "", m.group("v"))  # "my roommate Griselda's dish": the name is Griselda
        if name.split()[0].lower() in _NOT_NAMES or name.split()[0] in _REL_WORDS:
            continue
        name = " ".join(w for w in name.split() if w.lower() not in _NOT_NAMES) or name
        key, who, _ = _subject("my " + m.group("rel").lower())
        if m.group("verb") is None:  # "my friend Ximena works as ...": a person introduced, not renamed
            key = f"{key}_{_name_key(name)}"
        out.append(Fact(f"{who} is called {name}.", f"{key}.name", name, key, change))
    for m in re.finditer(rf"\b(?:I|we)(?:\s+(?:have|had|got|adopted|bought|rescued|own|found|just got|now have|"
                         rf"also have)|'ve\s+got|'ve|\s+have\s+got)\s+(?:an?|two|three|one|another)\s+(?:new\s+)?"
                         rf"(?P<rel>(?:(?:{_MOD})\s+)?(?:{_REL}))(?:\s*,)?\s+(?:called|named)\s+(?P<v>{_CNAME})", c, re.I):
        key, who, _ = _subject("my " + m.group("rel").lower())
        name = m.group("v")
        out.append(Fact(f"{who} is called {name}.", f"{key}.name", name, key, change))
    # owning a pet (several may hold): "I have a dog", "we adopted a kitten"
    for m in re.finditer(rf"\b(?:I|we)(?:\s+(?:have|got|adopted|bought|rescued|own|just got|now have|also have|"
                         rf"just adopted)|'ve\s+got|\s+have\s+got)\s+(?:an?|another|two|three)\s+(?:new\s+|little\s+|"
                         rf"\w+\s+)?(?P<v>{_PETS})s?\b", c, re.I):
        pet = f"{_article(m.group('v'))} {m.group('v').lower()}"
        out.append(Fact(f"I have {pet}.", None, pet, "user", change, "user.pet", "I have {v}."))

    # favourites: "my favorite food is sushi", "sushi is my favourite food", "lately my favourite band is X"
    fav = r"fav(?:ou?rite|e)"
    for m in re.finditer(rf"(?P<subj>\bmy|\b(?:my\s+(?:(?:{_MOD})\s+)?(?:{_REL})|{_NAME})'s)\s+(?:new\s+|current\s+|"
                         rf"all-time\s+|absolute\s+|very\s+)?{fav}\s+(?P<what>[a-z]+(?:\s+[a-z]+)?)\s+"
                         rf"(?:is|are|has become|became|has always been|was)\s+(?:now\s+|still\s+|definitely\s+|"
                         rf"probably\s+)?(?P<v>[^,.;!?]+)", c, re.I):
        v = _np_value(m.group("v"), 5)
        what = m.group("what").lower()
        if v and what not in ("thing", "part"):
            subj = m.group("subj")
            if subj.lower() == "my":
                out.append(Fact(f"My favorite {what} is {v}.", f"user.favorite.{what.replace(' ', '_')}", v,
                                "user", change))
            else:
                key, who, _ = _subject(subj[:-2])
                out.append(Fact(f"{who}'s favorite {what} is {v}.", f"{key}.favorite.{what.replace(' ', '_')}",
                                v, key, change))
    for m in re.finditer(rf"(?:^|\b(?:and|but|so|now|lately|nowadays)\s+)(?P<v>[\w' -]{{2,40}}?)\s+(?:is|are|has become|"
                         rf"became)\s+(?:now\s+|definitely\s+|easily\s+)?my\s+(?:new\s+|all-time\s+)?{fav}\s+"
                         rf"(?P<what>[a-z]+(?:\s+[a-z]+)?)", c, re.I):
        v = _np_value(re.sub(r"^(?:lately|these days|nowadays|now|honestly|i think|i guess)\s*,?\s*", "",
                             m.group("v"), flags=re.I), 5)
        what = _clean(m.group("what")).lower()
        if v and what and v.lower() not in ("it", "that", "this", "which", "what"):
            out.append(Fact(f"My favorite {what} is {v}.", f"user.favorite.{what.replace(' ', '_')}", v, "user",
                            change))

    # plays, speaks, drives, allergies, studies
    for m in re.finditer(rf"{_SUBJ}{_ADV}(?:\s+(?:have|has)|'ve|'s)?{_ADV}(?:\s+(?:love|loves|like|likes|enjoy|enjoys)\s+playing|\s+(?:play|plays|"
                         rf"started playing|took up|learned|learnt|learning|am learning|'m learning|is learning|practise|practice|"
                         rf"picked up|pick up|picking up|taking up|take up|"
                         rf"practises|practices|practising|practicing|been practising|been practicing|"
                         rf"'ve been practising|'ve been practicing))"
                         rf"\s+(?P<the>the\s+)?(?P<v>[a-z][\w -]*)", c, re.I):
        v = _np_value(re.split(r"\s+(?:in|at|with|for|on|every|since|from|after|before)\b", m.group("v"))[0], 3)
        if not v:
            continue
        if m.group("the"):
            fact(m.group("subj"), "instrument", "I play the {v}.", "{S} plays the {v}.", v, multi=True)
        elif not re.search(r"\b(?:with|games?|video|cards|it|that|this|music|outside|around)\b", v, re.I):
            fact(m.group("subj"), f"plays.{v.lower().replace(' ', '_')}", "I play {v}.", "{S} plays {v}.", v,
                 multi=True)
    for m in re.finditer(rf"{_SUBJ}{_ADV}(?:\s+(?:can|could))?{_ADV}(?:{_BE})?{_ADV}\s+(?:speak|speaks|spoke|get by in|gets by in|"
                         rf"fluent in|learning|learnt|learned)\s+(?P<v>(?-i:[A-Z][a-z]+(?:\s+and\s+[A-Z][a-z]+)?))",
                         c, re.I):
        fact(m.group("subj"), "language", "I speak {v}.", "{S} speaks {v}.", m.group("v"), multi=True)
    for m in re.finditer(rf"{_SUBJ}{_ADV}(?:{_BE}){_ADV}\s+(?:severely\s+|very\s+|mildly\s+)?allergic\s+to\s+"
                         rf"(?P<v>[^,.;!?]+)", c, re.I):
        v = _np_value(m.group("v"), 4)
        if v:
            fact(m.group("subj"), "allergy", "I am allergic to {v}.", "{S} is allergic to {v}.", v, multi=True)
    for m in re.finditer(rf"{_SUBJ}{_ADV}\s+(?:drive|drives|now drive|bought|got)\s+an?\s+(?:new\s+|used\s+|old\s+)?"
                         rf"(?P<v>[A-Z][\w-]*(?:\s+[A-Z0-9][\w-]*)?)", c):
        fact(m.group("subj"), "car", "I drive {a} {v}.", "{S} drives {a} {v}.", m.group("v"))
    for m in re.finditer(rf"{_SUBJ}{_ADV}(?:{_BE})?{_ADV}\s+(?:study|studies|studying|majoring in|major in)\s+"
                         rf"(?P<v>[a-zA-Z][\w -]*)", c, re.I):
        v = _np_value(m.group("v"), 3)
        if v:
            fact(m.group("subj"), "studies", "I study {v}.", "{S} studies {v}.", v)
    m = re.search(r"\bmy\s+birthday\s+is\s+(?:on\s+)?(?P<v>[^,.;!?]+)", c, re.I)
    if m and _np_value(m.group("v"), 4):
        out.append(Fact(f"My birthday is on {_np_value(m.group('v'), 4)}.", "user.birthday",
                        _np_value(m.group("v"), 4), "user", change))
    m = re.search(r"\b(?:my\s+name\s+is|call\s+me|i'm\s+called|i\s+am\s+called)\s+(?P<v>" + _NAME + ")", c)
    if m:
        out.append(Fact(f"My name is {m.group('v')}.", "user.name", m.group("v"), "user", change))
    return out


# ---------------------------------------------------------------------------- whole messages

_FILLER = re.compile(r"^(?:(?:lol|haha+|hah|ugh|oh|ooh|well|so|hey|wow|omg|ok|okay|hmm+|yay|phew|argh|man|honestly|"
                     r"anyway|anyways)\b[\s,!.]*)+", re.I)

_RELATIVE = (
    (re.compile(r"\b(?:earlier\s+)?today\b", re.I), 0),
    (re.compile(r"\bthis (?:morning|afternoon|evening)\b|\btonight\b", re.I), 0),
    (re.compile(r"\byesterday\b", re.I), -1),
)


def _absolute(text: str, ts: Optional[float]) -> str:
    """"today" / "yesterday" in ``text`` as the date they meant ("Today was my first day at the
    new job." -> "My first day at the new job was on 4 March 2024.")."""
    if ts is None:
        return text
    m = re.match(r"^(today|tonight|yesterday|this (?:morning|afternoon|evening))\s+(?:is|was)\s+(.+?)([.!]*)$", text, re.I)
    if m:
        rest = m.group(2)
        d = day(ts - 86400 if m.group(1).lower() == "yesterday" else ts)
        return f"{rest[0].upper()}{rest[1:]} was on {d}{m.group(3) or '.'}"
    for pat, delta in _RELATIVE:
        text = pat.sub(lambda m, d=delta: f"on {day(ts + 86400 * d)}", text)
    return text


def _correction(text: str) -> Tuple[Optional[str], str]:
    """("X", rest) for "actually, it's X" / "sorry, I meant X"; (None, rest-or-text)."""
    m = _CORRECTION_START.match(text)
    if not m:
        return None, text
    rest = m.group(1).strip()
    v = _CORRECTION_VALUE.match(rest)
    if v:
        value = _clean(v.group(1))
        if value and not set(w.strip(".,!").lower() for w in value.split()) <= _NOT_VALUES and len(value.split()) <= 5 \
                and not re.search(r"\b(?:i|my|we)\b", value, re.I):
            return value, rest
    if rest and len(rest.split()) <= 4 and rest[:1].isupper() and not re.search(r"\b(?:i|my|we)\b", rest, re.I):
        return _clean(rest) or None, rest  # "Sorry, Porto." / "No wait, Lisbon!"
    return None, rest or text


def join_values(values: List[str]) -> str:
    """"a", "b", "c" -> "a, b and c"."""
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + " and " + values[-1]


def extract(message: str, ts: Optional[float] = None) -> Extraction:
    """The facts ``message`` states (see the module docstring); ``ts``, the message's
    time, turns "today"/"yesterday" into dates in the facts' texts."""
    text = " ".join(message.split()) if "\n" not in message else message.strip()
    out = Extraction()
    if not text:
        return out
    if not looks_english(text):
        out.english = False
        return out
    if text.rstrip().endswith("?") and len(split_sentences(text)) == 1 or _QUESTION_START.match(text) and \
            len(split_sentences(text)) == 1:
        out.question = True
        return out
    value, rest = _correction(text)
    if value is not None:
        out.correction = value
        return out
    if rest != text and rest:
        text = rest  # "No, my sister lives in Lyon.": a statement like any other
    seen = set()
    for sent in split_sentences(text):
        if sent.endswith("?") or _QUESTION_START.match(sent) and not re.match(r"^(?:is|was)\b", sent, re.I) \
                and sent.endswith("?"):
            continue
        prev_subj: Optional[str] = None
        for clause in split_clauses(sent):
            if _correction(clause)[0] is not None:  # "..., sorry, Porto" inside a longer message: not a fact
                continue
            if prev_subj and _PRONOUN_START.match(clause):
                clause = re.sub(r"^(he|she|they)('s|'re)?", lambda m: prev_subj + (" is" if m.group(2) else ""),
                                clause, count=1, flags=re.I)
            facts = _rules(clause)
            for f in facts:
                if f.text.lower() not in seen:
                    seen.add(f.text.lower())
                    out.facts.append(Fact(_absolute(f.text, ts), f.slot, f.value, f.subject, f.change, f.topic, f.form))
            ms = re.match(rf"^\s*(?:(?:so|and|but|well|oh|also|anyway),?\s+)?({_SUBJ})", clause)
            if ms and not re.match(r"^(?:I|we)$", ms.group(1), re.I) and _ok_subject(ms.group(1)):
                prev_subj = ms.group(1)
            if facts:
                continue
            # no rule matched: a first-person clause, or one about a named person, is a fact as said
            clause = _FILLER.sub("", clause) or clause
            words = clause.split()
            if len(words) < 3 or len(words) > 40:
                continue
            about_me = re.search(r"\b(?:i|i'm|i've|i'd|i'll|my|we|we're|we've|our)\b", clause, re.I)
            named = ms is not None and not re.match(r"^(?:I|we)$", ms.group(1), re.I) and _ok_subject(ms.group(1)) \
                and re.match(r"\s*(?:is|was|has|had|and|just|also|still|now|\w+s|\w+ed)\b", clause[ms.end():])
            if not (about_me or named):
                continue
            if not re.search(r"\b(?:i|we|i'm|i've|i'd|i'll|we're|we've|is|are|was|were|am|be|been|has|have|had|do|"
                             r"does|did|can|could|will|would|\w+ed)\b", clause, re.I):
                continue  # "My poor neighbours!": no verb, nothing stated
            if re.match(r"^(?:i\s+(?:think|guess|hope|wonder|feel|mean|know|suppose|love|hate)\s+(?:it|that|so|this)\b|"
                        r"thanks|thank you|lol|haha|ok|okay)", clause, re.I):
                continue
            s = clause.rstrip(" ,;:-")
            s = s[0].upper() + s[1:]
            if not s.endswith((".", "!")):
                s += "."
            s = _absolute(s, ts)
            if s.lower() not in seen:
                seen.add(s.lower())
                out.facts.append(Fact(s, None, None, "user" if about_me else _subject(ms.group(1))[0],
                                      bool(_CHANGE.search(clause))))
    return out


_ASKS = (
    ("job", re.compile(r"\b(?:job|jobs|work|works|working|do for a living|does for a living|profession|occupation|"
                       r"career)\b", re.I)),
    ("city", re.compile(r"\b(?:live|lives|(?<!for a )living|city|town|based)\b", re.I)),
    ("name", re.compile(r"\b(?:name|called|named)\b", re.I)),
)


# Words that may follow "my" in a question about the user's own slots.
_USER_NOUNS = {"favorite", "favourite", "fave", "job", "jobs", "work", "profession", "occupation", "career",
               "name", "city", "town", "home", "hometown"}


def question_slot(question: str) -> Optional[str]:
    """The slot a question asks about, when it is one the rules write ("What is my niece's
    job?" -> ``niece.job``, "Where do I live?" -> ``user.city``, "What's my favourite
    dish?" -> ``user.favorite.dish``); None when unsure."""
    q = " ".join(question.split())
    m = re.search(rf"\bmy\s+((?:(?:{_MOD})\s+)?(?:{_REL})(?:\s+(?-i:{_NAME}))?)(?:'s)?\b", q, re.I)
    subj = _subject("my " + re.sub(r"'s$", "", m.group(1)))[0] if m else None
    rest = q[m.end():] if m else q
    if subj is None and re.search(r"\b(?:i|my|me)\b", q, re.I):
        # "my sibling", "my boss": someone the rules do not know, not the user; unsure.
        if any(w.lower() not in _USER_NOUNS for w in re.findall(r"\bmy\s+([a-z]+)", q, re.I)):
            return None
        subj = "user"
    if subj is None:
        return None
    fav = re.search(r"\bfav(?:ou?rite|e)\s+([a-z]+)", rest if m else q, re.I)
    if fav:
        return f"{subj}.favorite.{fav.group(1).lower()}"
    asks = [a for a, pat in _ASKS if pat.search(rest if m else q)]
    return f"{subj}.{asks[0]}" if len(asks) == 1 else None
