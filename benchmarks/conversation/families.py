"""Template families of the conversation-memory suite, per category, split by family.

A family is one way of saying a kind of fact and one way of asking about it. The dev
split has its own families and the held-out split others, so a figure on held-out
measures phrasings no one tuned on (and :mod:`.vocab` keeps the values apart too).

Placeholders: ``{S}`` / ``{s}`` the subject ("My sister" / "my sister"; "My colleague
Anselm"), ``{v}`` the value, ``{old}`` / ``{new}`` the value before and after a change
or correction, ``{n}`` a person's name (the bridge of a two-hop fact), ``{role}`` a role.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Tuple

__all__ = ["CATEGORIES", "Family", "FAMILIES", "families", "CHATTER"]

CATEGORIES: Tuple[str, ...] = ("third_person", "first_person", "in_passing", "changes", "corrections", "two_hop",
                               "aggregation", "temporal", "abstention")


@dataclass(frozen=True)
class Family:
    """``says``: the message templates, in conversation order (one fact; or old then new;
    link then fact; first item then each further item). ``ask``: the question. ``kind``:
    the value pool (:mod:`.vocab`), '' when the answer is not a pool value (a date, or
    nothing: abstention)."""

    name: str
    category: str
    split: str
    kind: str
    says: Tuple[str, ...]
    ask: str


def _f(category: str, split: str, rows) -> List[Family]:
    return [Family(f"{category}.{split}.{i}", category, split, kind, tuple(says), ask)
            for i, (kind, says, ask) in enumerate(rows)]


FAMILIES: List[Family] = [
    # ---------------------------------------------------------------- third-person facts
    *_f("third_person", "dev", [
        ("city", ["{S} lives in {v}."], "Where does {s} live?"),
        ("job", ["{S} works as a {v}."], "What is {s}'s job?"),
        ("food", ["{S}'s favourite dish is {v}."], "What dish does {s} like best?"),
        ("instrument", ["{S} plays the {v}."], "Which instrument does {s} play?"),
    ]),
    *_f("third_person", "heldout", [
        ("sport", ["{S} has been doing {v} every weekend since school."], "What sport is {s} into?"),
        ("language", ["{S} grew up speaking {v} at home."], "What language did {s} grow up speaking?"),
        ("city", ["These days {s} is based in {v}."], "In which town is {s} based?"),
        ("job", ["{S} earns a living as a {v}."], "How does {s} make money?"),
    ]),
    # ---------------------------------------------------------------- first-person facts
    *_f("first_person", "dev", [
        ("city", ["I live in {v}."], "Where do I live?"),
        ("job", ["I work as a {v}."], "What do I do for work?"),
        ("food", ["My favourite dish is {v}."], "What's my favourite dish?"),
        ("instrument", ["I've been learning the {v} for two years."], "Which instrument am I learning?"),
    ]),
    *_f("first_person", "heldout", [
        ("sport", ["Every Saturday I go to {v} practice."], "What sport do I practise on Saturdays?"),
        ("language", ["I'm taking evening classes in {v}."], "Which language am I studying in the evenings?"),
        ("city", ["Home for me is a flat in {v}."], "Which city is my flat in?"),
        ("job", ["By trade I'm a {v}."], "What is my trade?"),
    ]),
    # ---------------------------------------------------------------- facts said in passing
    *_f("in_passing", "dev", [
        ("job", ["Ugh, what a day. Being a {v} means I'm on my feet from dawn. Anyway, did you catch the "
                 "match last night?"], "What's my job?"),
        ("city", ["The trams in {v} were late again this morning, which is just normal where I live, haha. "
                  "Any tips for sleeping better?"], "Which city do I live in?"),
        ("food", ["lol I made {v} for the third time this week, can't help it, it's my favourite thing to eat. "
                  "What's a good film for tonight?"], "What food do I love most?"),
        ("instrument", ["My poor neighbours, I practise the {v} every evening now. Anyway, how do I descale a "
                        "kettle?"], "What instrument do I practise?"),
    ]),
    *_f("in_passing", "heldout", [
        ("sport", ["Sorry for the slow reply, I was at {v} training until nine and then had to cook. What's new "
                   "in astronomy?"], "What sport do I train in?"),
        ("language", ["Still tired from my {v} lesson, so many verb endings. By the way, can you recommend a "
                      "podcast?"], "What language am I learning?"),
        ("pet", ["Had to cut our walk short because my {v} got scared of a bus, poor thing. Is it going to "
                 "rain tomorrow?"], "What kind of pet do I have?"),
        ("job", ["Long shift again, that's life as a {v} I suppose. Do you know any good stretches for back "
                 "pain?"], "How do I earn my living?"),
    ]),
    # ---------------------------------------------------------------- changes over time (newest wins)
    *_f("changes", "dev", [
        ("city", ["I live in {old}.", "We finally moved house! I live in {new} now."], "Where do I live these days?"),
        ("job", ["I work as a {old}.", "Big news: I quit and started working as a {new}."], "What's my job now?"),
        ("food", ["My favourite dish is {old}.", "These days my favourite dish is {new}."],
         "What is my favourite dish at the moment?"),
        ("city", ["{S} lives in {old}.", "{S} has relocated to {new}."], "Where does {s} live now?"),
    ]),
    *_f("changes", "heldout", [
        ("sport", ["On Sundays I play {old}.", "I've switched sports, these days I do {new}."],
         "Which sport do I do at present?"),
        ("language", ["I'm studying {old}.", "I dropped my old course and now I'm studying {new} instead."],
         "What language am I studying currently?"),
        ("job", ["{S} is a {old}.", "{S} retrained and now works as a {new}."], "What does {s} do nowadays?"),
        ("instrument", ["In our band I play the {old}.", "New line-up: in the band I now play the {new}."],
         "What do I play in the band now?"),
    ]),
    # ---------------------------------------------------------------- explicit corrections
    *_f("corrections", "dev", [
        ("city", ["{S} lives in {old}.", "Sorry, I got that wrong: {s} lives in {new}."], "Where does {s} live?"),
        ("job", ["I work as a {old}.", "Correction: I work as a {new}, not a {old}."], "What is my job?"),
        ("name", ["{S}'s name is {old}.", "Oops, typo there, {s}'s name is {new}."], "What is {s} called?"),
    ]),
    *_f("corrections", "heldout", [
        ("food", ["My favourite dish is {old}.", "No wait, my favourite dish is actually {new}."],
         "Which dish is my favourite?"),
        ("instrument", ["{S} plays the {old}.", "Let me correct myself: {s} plays the {new}, I mixed them up."],
         "What instrument does {s} play?"),
        ("language", ["At work I speak {old}.", "Scratch that, at work I speak {new}."],
         "What language do I speak at work?"),
    ]),
    # ---------------------------------------------------------------- two-hop (a name, then a fact about the name)
    *_f("two_hop", "dev", [
        ("city", ["{S} is called {n}.", "{n} lives in {v}."], "Which city does {s} live in?"),
        ("job", ["{S}'s name is {n}.", "{n} works as a {v}."], "What is {s}'s job?"),
        ("pet", ["{n} is {s}.", "{n} has a pet {v}."], "What pet does {s} have?"),
    ]),
    *_f("two_hop", "heldout", [
        ("sport", ["{S} goes by {n}.", "{n} is obsessed with {v}."], "What sport is {s} obsessed with?"),
        ("instrument", ["The name of {s} is {n}.", "{n} plays the {v} in a folk band."],
         "What does {s} play in a folk band?"),
        ("language", ["{S} answers to the name {n}.", "{n} speaks fluent {v}."], "Which language does {s} speak fluently?"),
    ]),
    # ---------------------------------------------------------------- aggregation (every item must be named)
    *_f("aggregation", "dev", [
        ("pet", ["I have a {v}.", "We also adopted a {v}."], "Which pets do I have?"),
        ("language", ["I speak {v}.", "I can also get by in {v}."], "Which languages do I speak?"),
        ("instrument", ["I play the {v}.", "I picked up the {v} too."], "What instruments do I play?"),
    ]),
    *_f("aggregation", "heldout", [
        ("sport", ["On Mondays I do {v}.", "Another evening a week I do {v}."], "Which sports do I do?"),
        ("city", ["Last spring I visited {v}.", "I have also been to {v}."], "Which cities have I visited?"),
        ("food", ["I know how to cook {v}.", "I can make {v} as well."], "Which dishes can I cook?"),
    ]),
    # ---------------------------------------------------------------- temporal (the answer is the message's date)
    *_f("temporal", "dev", [
        ("", ["Today was my first day at the new job."], "When did I start the new job?"),
        ("pet", ["We adopted a {v} this morning!"], "When did we adopt the {v}?"),
        ("", ["I finally passed my driving test today."], "When did I pass my driving test?"),
    ]),
    *_f("temporal", "heldout", [
        ("", ["Just signed the lease on a new flat today."], "On what day did I sign the lease on my flat?"),
        ("", ["Ran my first half marathon this morning, my legs are gone."],
         "What was the date of my first half marathon?"),
        ("", ["{S} got engaged today!"], "When did {s} get engaged?"),
    ]),
    # ---------------------------------------------------------------- abstention (never told)
    *_f("abstention", "dev", [
        ("city", [], "Where does {s} live?"),
        ("job", [], "What is {s}'s job?"),
        ("", [], "What's my blood type?"),
    ]),
    *_f("abstention", "heldout", [
        ("pet", [], "What is the name of {s}'s cat?"),
        ("instrument", [], "Which instrument does {s} play?"),
        ("", [], "What size shoes do I wear?"),
    ]),
]

# Chit-chat with no fact worth keeping (the distractors), split like the families.
CHATTER: Dict[str, Tuple[str, ...]] = {
    "dev": (
        "The weather has been grey all week.", "I watched a documentary about octopuses last night.",
        "Traffic was terrible on the ring road this morning.", "I can never decide what to have for lunch.",
        "My phone battery dies so fast lately.", "I tried a new coffee place and it was fine, nothing special.",
        "It's been ages since I read a proper novel.", "I really need to sort out my inbox.",
        "The supermarket was packed today.", "I keep forgetting to water the plants.",
        "Just finished a long meeting, glad that's over.", "I think I need a holiday soon.",
        "There was a funny video about penguins going around.", "My laptop made a strange noise earlier.",
        "I stayed up too late again.", "The new season of that quiz show started.",
        "I should probably go to bed earlier.", "It rained right when I left the house, typical.",
        "I spent the afternoon cleaning the kitchen.", "Some days go by so quickly.",
    ),
    "heldout": (
        "The wind was howling all night.", "I listened to a radio programme about volcanoes.",
        "My bus was twenty minutes late again.", "I haven't done laundry in a week, oops.",
        "The printer at work jammed three times today.", "I ordered a lamp online and it arrived broken.",
        "I finally cleared out the garage.", "It feels like winter came early this year.",
        "The queue at the post office was enormous.", "I've been meaning to call the bank all week.",
        "There's roadworks outside my window at seven every morning.", "I fell asleep on the sofa again.",
        "That crossword today was impossible.", "I think my watch is running slow.",
        "The sunset was lovely this evening.", "I keep losing my umbrella.",
        "I had far too much tea today.", "The lift in our building is broken again.",
        "I tidied my desk and already it's messy.", "I spent ages looking for my keys this morning.",
    ),
}


def families(split: str, category: str) -> List[Family]:
    """The families of ``category`` in ``split``."""
    if split not in ("dev", "heldout"):
        raise ValueError(f"[conversation] split must be 'dev' or 'heldout' but got {split!r}.")
    if category not in CATEGORIES:
        raise ValueError(f"[conversation] unknown category {category!r}; choose from {', '.join(CATEGORIES)}.")
    return [f for f in FAMILIES if f.split == split and f.category == category]
