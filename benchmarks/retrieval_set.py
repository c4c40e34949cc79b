"""A personal-memory retrieval set: first-person facts and paraphrased questions about them.

How it is made: every fact comes from one *item* (something a user can be asked
about: "my sister's home city", "my blood type", "when my yoga class is") of a
hand-written *family* of items. An item has several fact phrasings with a slot
``{v}``, several questions that ask for ``{v}`` in other words (synonyms,
question form, indirect phrasing; a question never contains its value), and a
pool of values. ``build(seed)`` draws, with ``random.Random(seed)``, a value and
a fact phrasing per item and one question (sometimes two) per fact; then
distractor facts that reuse an item's subject, template or values with another
predicate ("My sister Ana went to Lyon for a conference last year.", "The café
near my office does a decent tiramisu.") so that matching on entities alone is
not enough. People (sister, boss, neighbour, ...) get one name each per seed and
appear in many facts, as in a real user's memory. Each item is stated once in
the bank and distractor predicates were written (and checked by hand) not to
answer any question, so each question has one right fact.

Limits: the paraphrases are templated (a model tuned on them would learn the
templates); English only, with British spellings and places; word overlap
between a question and its fact is low but not zero (people's names stay, as a
user would use them); facts about people (18 predicates x 20 of 24 people) are 58%
of the asked-about facts; values are drawn at random, so some facts are implausible
("My son Leon is 82 years old."); per-category counts are small outside "people".

Seed 0: 824 facts (619 asked about, 205 distractors), 715 queries, 40 families in
17 categories, mean word Jaccard between a query and its fact 0.084.

    from mlx_synapse.benchmarks.retrieval_set import build
    data = build(seed=0)
    data.queries[0], data.facts[data.target[0]]

``python -m mlx_synapse.benchmarks.retrieval_set --examples 10`` prints a summary.
"""

from __future__ import annotations

import argparse
import random
import re
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple


@dataclass(frozen=True)
class RetrievalSet:
    """Facts to store and questions to retrieve them with.

    ``queries[i]`` asks for ``facts[target[i]]``; ``answer[i]`` is the value it asks
    for (never in the question); ``category[i]`` and ``family[i]`` group the queries.
    ``distractor[j]`` marks the facts that no query asks for.
    """

    facts: List[str]
    queries: List[str]
    target: List[int]
    category: List[str]
    family: List[str]
    answer: List[str]
    distractor: List[bool]
    seed: int

    def subset(self, n: int, seed: int = 0) -> "RetrievalSet":
        """All the facts with ``n`` of the queries, drawn at random (all of them if fewer)."""
        if n < 1:
            raise ValueError(f"[RetrievalSet.subset] n must be >= 1 but got {n}.")
        keep = sorted(random.Random(seed).sample(range(len(self.queries)), min(n, len(self.queries))))

        def pick(xs):
            return [xs[i] for i in keep]

        return RetrievalSet(self.facts, pick(self.queries), pick(self.target), pick(self.category),
                            pick(self.family), pick(self.answer), self.distractor, self.seed)

    @property
    def categories(self) -> List[str]:
        return sorted(set(self.category))


_WORD = re.compile(r"[a-z0-9']+")


def words(text: str) -> set:
    """Lower-case word set (apostrophes kept, punctuation dropped)."""
    return set(_WORD.findall(text.lower()))


def jaccard(a: str, b: str) -> float:
    """|words(a) & words(b)| / |words(a) | words(b)|."""
    wa, wb = words(a), words(b)
    return len(wa & wb) / max(1, len(wa | wb))


def mean_jaccard(data: RetrievalSet) -> float:
    """Mean word Jaccard between each query and its fact."""
    return sum(jaccard(q, data.facts[t]) for q, t in zip(data.queries, data.target)) / len(data.queries)


# --------------------------------------------------------------------------- families


@dataclass(frozen=True)
class Item:
    """One thing a user can be asked about. ``facts`` and ``distract`` hold ``{v}``
    (``distract`` may also hold ``{p}``, another person); ``queries`` never do."""

    facts: Tuple[str, ...]
    queries: Tuple[str, ...]
    values: Tuple[str, ...]
    distract: Tuple[str, ...] = ()


Person = Tuple[str, Tuple[str, ...]]  # ("my sister Ana", ("my sibling Ana", "Ana", "my sis"))


@dataclass(frozen=True)
class Family:
    """Named items of one ``category``; ``sample`` > 0 keeps that many, drawn per seed."""

    name: str
    category: str
    items: Callable[[List[Person], Dict[str, Tuple[str, ...]]], List[Item]]
    sample: int = 0


def _split(s: str, sep: str = "|") -> Tuple[str, ...]:
    return tuple(p.strip() for p in s.split(sep) if p.strip())


def _values(spec: str, pools: Dict[str, Tuple[str, ...]]) -> Tuple[str, ...]:
    """'a; b; c', or '@NAME' for a pool (shared lists below, or drawn per seed)."""
    spec = spec.strip()
    if spec.startswith("@"):
        return pools[spec[1:]] if spec[1:] in pools else _POOLS[spec[1:]]
    return _split(spec, ";")


# People per person-predicate (of the 24 in PEOPLE): keeps people-facts from swamping the set.
PEOPLE_PER_PREDICATE = 20


def people_family(name: str, facts: str, queries: str, distract: str, values: str) -> Family:
    """One predicate about ``PEOPLE_PER_PREDICATE`` people: ``{s}`` is the person as stated in
    facts ("my sister Ana"), ``{q}`` one of the ways a question names them ("my sis")."""

    def items(people, pools):
        vals = _values(values, pools)
        return [Item(tuple(f.replace("{s}", s) for f in _split(facts)),
                     tuple(q.replace("{q}", form) for q in _split(queries) for form in forms),
                     vals, tuple(d.replace("{s}", s) for d in _split(distract)))
                for s, forms in people]

    return Family(name, "people", items, PEOPLE_PER_PREDICATE)


def subject_family(name: str, category: str, facts: str, distract: str,
                   rows: Sequence[Tuple[str, str, str]]) -> Family:
    """Shared fact templates over subjects: rows of (subject ``{s}``, questions, values)."""

    def items(people, pools):
        return [Item(tuple(f.replace("{s}", s) for f in _split(facts)), _split(qs), _values(vs, pools),
                     tuple(d.replace("{s}", s) for d in _split(distract)))
                for s, qs, vs in rows]

    return Family(name, category, items)


def item_family(name: str, category: str, rows: Sequence[Tuple[str, ...]], values: str = "",
                distract: str = "") -> Family:
    """Items with their own phrasings: rows of (facts, questions[, values[, distractors]]);
    a missing or empty field takes the family's ``values`` / ``distract``; "-" = no distractors."""

    def items(people, pools):
        out = []
        for row in rows:
            facts, qs, vs, ds = (tuple(row) + ("", ""))[:4]
            ds = "" if ds == "-" else ds or distract
            out.append(Item(_split(facts), _split(qs), _values(vs or values, pools), _split(ds)))
        return out

    return Family(name, category, items)


# --------------------------------------------------------------------------- building


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _people(rng: random.Random) -> List[Person]:
    female, male = rng.sample(FEMALE_NAMES, len(FEMALE_NAMES)), rng.sample(MALE_NAMES, len(MALE_NAMES))
    out = []
    for relation, gender, forms in PEOPLE:
        name = (female if gender == "f" else male).pop()
        out.append((f"my {relation} {name}", tuple(f.replace("{n}", name) for f in _split(forms))))
    return out


def _seeded_pools(rng: random.Random) -> Dict[str, Tuple[str, ...]]:
    months = ("January February March April May June July August September October "
              "November December").split()
    days = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
    times = "7am 8:30am 10am noon 2pm 4:30pm 6pm 7pm 8:15pm".split()
    return {
        "DATES": tuple(f"{d} {m}" for d, m in rng.sample([(d, m) for d in range(1, 29) for m in months], 40)),
        "DAYTIMES": tuple(f"{d} at {t}" for d, t in rng.sample([(d, t) for d in days for t in times], 40)),
    }


def _family_facts(fam: Family, rng: random.Random, people: List[Person], pools, second_query: float,
                  distractor_rate: float):
    """([(fact, [queries], value)], [distractor facts]) of one family."""
    used: set = set()  # values are drawn without replacement within a family while they last
    targets, distractors = [], []
    items = fam.items(people, pools)
    if 0 < fam.sample < len(items):
        items = [items[i] for i in sorted(rng.sample(range(len(items)), fam.sample))]
    for item in items:
        fresh = [v for v in item.values if v not in used]
        value = rng.choice(fresh or list(item.values))
        used.add(value)
        fact = _sentence(rng.choice(item.facts).replace("{v}", value))
        k = 2 if len(item.queries) > 1 and rng.random() < second_query else 1
        queries = [_sentence(q) for q in rng.sample(item.queries, k)]
        for q in queries:
            assert not re.search(rf"\b{re.escape(value.lower())}\b", q.lower()), (fam.name, q, value)
        targets.append((fact, queries, value))
        if item.distract and rng.random() < distractor_rate:
            other = [v for v in item.values if v != value] or list(item.values)
            person = rng.choice([p for p, _ in people if p.lower() not in fact.lower()])
            text = rng.choice(item.distract).replace("{v}", rng.choice(other)).replace("{p}", person)
            distractors.append(_sentence(text))
    return targets, distractors


def build(seed: int = 0, second_query: float = 0.15, distractor_rate: float = 0.35) -> RetrievalSet:
    """The retrieval set for ``seed``: the same seed gives the same set.

    Args:
        seed: seeds every choice (names, values, phrasings, which facts get distractors, order).
        second_query: probability that a fact gets a second, differently worded question.
        distractor_rate: probability that an item also adds one distractor fact.

    Returns:
        A ``RetrievalSet``, facts and queries each in a seeded random order.
    """
    rng = random.Random(seed)
    people = _people(rng)
    pools = _seeded_pools(rng)
    stated: List[str] = []  # facts that queries ask for
    extra: List[str] = []  # distractors
    asked = []  # (query, fact, category, family, answer)
    for fam in FAMILIES:
        targets, distractors = _family_facts(fam, rng, people, pools, second_query, distractor_rate)
        for fact, queries, value in targets:
            stated.append(fact)
            asked.extend((q, fact, fam.category, fam.name, value) for q in queries)
        extra.extend(distractors)
    # Stated facts and queries are unique by construction (one item, one fact; each
    # question names its item); a distractor that repeats any fact is dropped.
    assert len(set(stated)) == len(stated) and len({a[0] for a in asked}) == len(asked)
    extra = [f for f in dict.fromkeys(extra) if f not in set(stated)]
    facts = stated + extra
    order = rng.sample(range(len(facts)), len(facts))
    index = {facts[j]: i for i, j in enumerate(order)}
    rng.shuffle(asked)
    return RetrievalSet(
        facts=[facts[j] for j in order],
        queries=[a[0] for a in asked],
        target=[index[a[1]] for a in asked],
        category=[a[2] for a in asked],
        family=[a[3] for a in asked],
        answer=[a[4] for a in asked],
        distractor=[j >= len(stated) for j in order],
        seed=seed,
    )


def summary(data: RetrievalSet, examples: int = 0) -> str:
    """Counts per category, the mean query-fact word Jaccard, and a few example pairs."""
    lines = [(f"{len(data.facts)} facts ({sum(data.distractor)} distractors), {len(data.queries)} queries, "
              f"{len(set(data.family))} families; mean word Jaccard query-fact {mean_jaccard(data):.3f}")]
    lines += [f"  {c:12s} {data.category.count(c):4d} queries" for c in data.categories]
    for i in random.Random(data.seed).sample(range(len(data.queries)), min(examples, len(data.queries))):
        lines.append(f"  Q: {data.queries[i]}\n  F: {data.facts[data.target[i]]}")
    return "\n".join(lines)


def setup_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Summarise the personal-memory retrieval set.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--examples", type=int, default=10, help="query-fact pairs to print")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = setup_arg_parser().parse_args(argv)
    print(summary(build(args.seed), args.examples))
    return 0


# --------------------------------------------------------------------------- data
# Names of people, pets and values are disjoint lists, so a name in a question points
# at one person.

FEMALE_NAMES = ("Ana Beatriz Chloe Dana Elif Fatima Greta Hana Ines Jada Keiko Leila Maya Nadia "
                "Olga Priya Rosa Sofia Tessa Uma Vera Wendy Yara Zoe Freya Imogen Lucia Marta").split()
MALE_NAMES = ("Ben Carlos Dev Emeka Felix Gareth Hugo Ivan Jonas Kofi Luca Marcus Nikhil Omar "
              "Pavel Rafael Sam Tomas Viktor Will Yusuf Theo Arjun Diego Ewan Hamid Kenji").split()

# (relation, gender, how a question may name them; {n} = their name)
PEOPLE = (
    ("sister", "f", "my sibling {n} | {n} | my sis"),
    ("brother", "m", "my sibling {n} | {n} | my bro"),
    ("mother", "f", "my mum | my mom | {n}"),
    ("father", "m", "my dad | my old man | {n}"),
    ("grandmother", "f", "my gran | my nana | {n}"),
    ("grandfather", "m", "my grandpa | my granddad | {n}"),
    ("aunt", "f", "my auntie {n} | {n}"),
    ("uncle", "m", "my mum's brother {n} | {n}"),
    ("cousin", "m", "my uncle's son {n} | {n}"),
    ("son", "m", "my boy | my lad | {n}"),
    ("daughter", "f", "my girl | my little girl | {n}"),
    ("wife", "f", "my spouse | my better half | {n}"),
    ("niece", "f", "{n} | my brother's girl {n}"),
    ("nephew", "m", "{n} | my sister's lad {n}"),
    ("best friend", "m", "my closest mate | my oldest pal | {n}"),
    ("boss", "f", "my manager | the person I report to | {n}"),
    ("neighbour", "m", "the guy next door | {n}"),
    ("colleague", "f", "my workmate {n} | {n}"),
    ("old flatmate", "m", "my former roommate {n} | {n}"),
    ("father-in-law", "m", "my wife's dad | {n}"),
    ("mother-in-law", "f", "my wife's mum | {n}"),
    ("godmother", "f", "my godmum | {n}"),
    ("piano teacher", "m", "the man who gives me keyboard lessons | {n}"),
    ("personal trainer", "f", "my fitness coach | {n}"),
)

_POOLS = {
    "CITIES": _split("Porto; Lyon; Krakow; Edinburgh; Seattle; Osaka; Melbourne; Vancouver; Bristol; "
                     "Munich; Valencia; Dublin; Toronto; Austin; Bologna; Gothenburg; Leeds; Marseille; "
                     "Denver; Auckland; Cork; Ghent; Bergen; Seville; Nairobi; Montreal; Glasgow; "
                     "Hamburg; Kyoto; Lisbon", ";"),
    "PLACES": _split("Iceland; Japan; Peru; Morocco; Vietnam; New Zealand; Greece; Norway; Mexico; "
                     "Croatia; Kenya; Thailand; Chile; Sicily; Bali; Egypt; Sri Lanka; Tuscany; Cuba; "
                     "Jordan; Namibia; Argentina; Lapland; Madagascar; Montenegro; Laos", ";"),
    "JOBS": _split("a nurse; an architect; a plumber; a software engineer; a primary school teacher; "
                   "a dentist; an electrician; an accountant; a chef; a firefighter; a pharmacist; "
                   "a journalist; a vet; a graphic designer; a police officer; a lawyer; "
                   "a physiotherapist; a pilot; a librarian; a carpenter; a bus driver; a midwife; "
                   "a data analyst; a florist; a tattoo artist", ";"),
    "HOBBIES": _split("rock climbing; baking sourdough bread; birdwatching; playing chess; salsa dancing; "
                      "restoring old motorbikes; growing tomatoes; painting watercolours; fly fishing; "
                      "trail running; knitting scarves; surfing; woodworking; geocaching; playing golf; "
                      "brewing beer; sailing; stamp collecting; bouldering; kayaking; doing crosswords; "
                      "beekeeping; pottery; cold-water swimming", ";"),
    "DISHES": _split("lasagne; sushi; ramen; paella; falafel wraps; cheesecake; chicken tikka masala; "
                     "pancakes; dumplings; tacos; mac and cheese; pho; moussaka; fish and chips; "
                     "pad thai; risotto; goulash; burritos; apple pie; beef stew; jollof rice; "
                     "pierogi; bibimbap; shepherd's pie", ";"),
    "ALLERGENS": _split("peanuts; shellfish; sesame; eggs; strawberries; kiwi fruit; walnuts; milk; soy; "
                        "celery; mustard; almonds; prawns; hazelnuts; mango; tomatoes; oats; lupin; "
                        "pine nuts; buckwheat; cashews; sulphites; chickpeas; wheat", ";"),
    "PETS": _split("a golden retriever; a tabby cat; two guinea pigs; a cockatiel; a bearded dragon; "
                   "a pet rabbit; a tank of tropical fish; a border collie; a Siamese cat; a ferret; "
                   "a pony; a hamster; a corn snake; an African grey parrot; a pair of budgies; "
                   "a tortoise; a dachshund; a Maine Coon; a pug; a chinchilla; a greyhound; "
                   "a pair of chickens; an axolotl; a spaniel", ";"),
    "CARS": _split("a red Mini Cooper; a Tesla Model 3; an old Volvo estate; a Ford Fiesta; "
                   "a VW camper van; a Toyota Prius; a silver BMW 3 Series; a Honda Civic; "
                   "a Land Rover Defender; a Fiat 500; a Nissan Leaf; a Subaru Outback; a Skoda Octavia; "
                   "a Vespa scooter; a Jeep Wrangler; a Kia Sportage; a Mazda MX-5; a Renault Clio; "
                   "a Porsche 911; a Citroen Berlingo; a Volvo XC90; a Hyundai Ioniq; a Peugeot 208; "
                   "a Triumph motorbike", ";"),
    "LANGUAGES": _split("Portuguese; Japanese; Mandarin; Arabic; Russian; Swahili; Dutch; Korean; Hindi; "
                        "Greek; Polish; Turkish; Italian; Welsh; Hebrew; Vietnamese; Finnish; Tagalog; "
                        "Icelandic; Czech; Yoruba; Catalan; Bengali; Hungarian", ";"),
    "AGES": _split("7; 12; 16; 19; 23; 27; 29; 34; 38; 41; 45; 48; 52; 57; 61; 63; 66; 68; 71; 74; "
                   "76; 82; 88; 91", ";"),
    "GIFTS": _split("a new pair of hiking boots; a cookbook; concert tickets; a fountain pen; "
                    "a pottery class; a silk scarf; a bottle of single malt whisky; a jigsaw puzzle; "
                    "noise-cancelling headphones; a houseplant; a spa voucher; a record player; "
                    "a telescope; a cashmere jumper; a personalised mug; a bread maker; "
                    "a hammock; a drone; a watercolour set; a leather wallet; a smart speaker; "
                    "a yoga mat; a star map print; a wine rack", ";"),
    "DRINKS": _split("a pint of stout; gin and tonic; green tea; an oat milk flat white; red wine; "
                     "sparkling water with lime; a negroni; hot chocolate; espresso; cider; mint tea; "
                     "a whisky sour; lemonade; a chai latte; lager; rooibos; a mojito; prosecco; "
                     "ginger beer; an Aperol spritz; kombucha; a Bloody Mary; cola; port", ";"),
    "TEAMS": _split("Liverpool; Arsenal; Celtic; Boca Juniors; the Chicago Cubs; the LA Lakers; "
                    "Bayern Munich; Benfica; the New York Yankees; the All Blacks; Real Madrid; Ajax; "
                    "the Green Bay Packers; Juventus; the Boston Celtics; Leinster; Napoli; "
                    "the Toronto Maple Leafs; Galatasaray; Borussia Dortmund; Leeds United; "
                    "the Dallas Cowboys; Feyenoord; Rangers", ";"),
    "SUBJECTS": _split("marine biology; law; mechanical engineering; art history; medicine; economics; "
                       "philosophy; computer science; nursing; architecture; French literature; chemistry; "
                       "geography; music; psychology; astrophysics; classics; veterinary science; "
                       "sociology; linguistics; civil engineering; theology; agriculture; film studies", ";"),
    "DISLIKES": _split("loud restaurants; horror films; cold weather; early mornings; olives; jazz; "
                       "crowds; reality TV; camping; rain; coriander; karaoke; traffic jams; "
                       "small talk; opera; heavy metal; theme parks; musicals; golf; long phone calls; "
                       "shopping centres; board games; cruises; sushi", ";"),
    "INSTRUMENTS": _split("the cello; the violin; bass guitar; the trumpet; the saxophone; the harp; "
                          "the accordion; the flute; the banjo; the clarinet; the double bass; "
                          "the trombone; the ukulele; the bagpipes; the oboe; the mandolin; the tuba; "
                          "the sitar; the harmonica; the bongos; the French horn; the organ; "
                          "the viola; the steel drums", ";"),
    "FEARS": _split("spiders; heights; flying; snakes; needles; deep water; clowns; thunderstorms; "
                    "lifts; the dark; dogs; moths; hospitals; bridges; wasps; crowds of people; "
                    "public speaking; birds; tunnels; horses; open fields; mice; fireworks; ghosts", ";"),
    "PET_NAMES": _split("Biscuit; Pepper; Mochi; Ziggy; Noodle; Bramble; Pickles; Waffles; Sir Fluff; "
                        "Rocket; Marble; Pumpkin; Dotty; Clementine; Buttons; Socks; Gizmo; Nugget; "
                        "Shadow; Hercules; Pip; Oreo; Fudge; Juniper; Bandit; Cosmo", ";"),
    "PET_AGES": _split("two; three; four; five; six; seven; eight; nine; ten; eleven; twelve; fourteen", ";"),
    "PET_FEARS": _split("thunderstorms; the vacuum cleaner; fireworks; the postman; balloons; cucumbers; "
                        "the hairdryer; the washing machine; umbrellas; the doorbell; plastic bags; "
                        "the lawnmower", ";"),
    "PET_TREATS": _split("cheese; roast chicken; carrot tops; dried mealworms; banana; peanut butter; "
                         "tuna flakes; apple slices; sunflower seeds; liver treats; blueberries; "
                         "cooked salmon", ";"),
}

_PEOPLE_FAMILIES = [
    people_family(
        "person_city",
        "{s} lives in {v}. | {s} has lived in {v} for years. | {s} is based in {v} now.",
        "Which city does {q} call home? | Where is {q} living these days? | "
        "What town would I have to visit to see {q}?",
        "{s} went to {v} for a conference last year. | {s} has never been to {v}.",
        "@CITIES"),
    people_family(
        "person_job",
        "{s} works as {v}. | {s} is {v} by trade. | {s} has been {v} for over a decade.",
        "What does {q} do for a living? | What is {q}'s occupation? | How does {q} earn money?",
        "{s} once thought about becoming {v}. | {s} met {v} at a party on Saturday.",
        "@JOBS"),
    people_family(
        "person_birthday",
        "{s}'s birthday is on {v}. | {s} was born on {v}. | {s} turns a year older on {v}.",
        "When do we celebrate {q} getting older? | On what date did {q} come into the world? | "
        "When is {q}'s special day each year?",
        "{s} is flying back home on {v}. | {s} has a job interview on {v}.",
        "@DATES"),
    people_family(
        "person_hobby",
        "{s} loves {v}. | {s} spends most weekends {v}. | {s}'s great passion is {v}.",
        "What does {q} do for fun? | What pastime is {q} obsessed with? | "
        "How does {q} like to spend free time?",
        "{s} bought me a book about {v}. | {s} is thinking of taking up {v}.",
        "@HOBBIES"),
    people_family(
        "person_dish",
        "{s}'s favourite dish is {v}. | {s} could eat {v} every single day. | "
        "{s} always orders {v} when we eat out.",
        "What meal does {q} enjoy most? | What should I cook to make {q} happy? | "
        "Which food is {q} crazy about?",
        "{s} cooked {v} for the first time last week. | {s} is learning to make {v}.",
        "@DISHES"),
    people_family(
        "person_allergy",
        "{s} is allergic to {v}. | {s} can't eat {v} because of an allergy. | "
        "{s} has a severe allergy to {v}.",
        "What must I keep out of anything I serve {q}? | Which ingredient makes {q} ill? | "
        "What would give {q} a reaction at dinner?",
        "{s} picked up some {v} at the market yesterday. | {s} brought {v} to the picnic.",
        "@ALLERGENS"),
    people_family(
        "person_pet",
        "{s} has {v}. | {s} keeps {v} at home. | {s} just adopted {v}.",
        "What kind of animal lives with {q}? | What creature does {q} look after? | "
        "Which furry or scaly companion belongs to {q}?",
        "{s} wants {v} one day. | {s} took a photo of {v} at the park.",
        "@PETS"),
    people_family(
        "person_car",
        "{s} drives {v}. | {s} just bought {v}. | {s} gets around in {v}.",
        "What vehicle does {q} own? | What sort of motor is {q} using? | "
        "What would I see parked on {q}'s driveway?",
        "{s} rented {v} on holiday. | {s} crashed {v} years ago.",
        "@CARS"),
    people_family(
        "person_age",
        "{s} is {v} years old. | {s} turned {v} this year. | {s} just celebrated turning {v}.",
        "How old is {q}? | What age is {q} now? | How many candles were on {q}'s last cake?",
        "{s} has worked at the same place for {v} years. | {s} has lived on our street for {v} years.",
        "@AGES"),
    people_family(
        "person_language",
        "{s} speaks fluent {v}. | {s} is fluent in {v}. | {s} is a native {v} speaker.",
        "Which foreign tongue can {q} hold a conversation in? | What language does {q} know really well? | "
        "If I needed a translator, which language could {q} help with?",
        "{s} is taking beginner {v} lessons. | {s} watched a {v} film last night.",
        "@LANGUAGES"),
    people_family(
        "person_gift",
        "{s} would love {v} as a present. | {s} has been hinting about wanting {v}. | "
        "{s} keeps saying they'd love {v}.",
        "What should I get {q} as a gift? | What could I buy {q} for the holidays? | "
        "What would make {q} happy to unwrap?",
        "{s} gave me {v} last Christmas. | {s} returned {v} to the shop.",
        "@GIFTS"),
    people_family(
        "person_drink",
        "{s}'s usual drink is {v}. | {s} always orders {v} at the pub. | {s} only drinks {v}.",
        "What should I pour for {q}? | What beverage does {q} prefer? | "
        "What does {q} like to sip when we go out?",
        "{s} spilled {v} all over my laptop. | {s} gave up {v} for Lent.",
        "@DRINKS"),
    people_family(
        "person_team",
        "{s} supports {v}. | {s} is a huge {v} fan. | {s} never misses a {v} game.",
        "Which club does {q} cheer for? | Who does {q} root for in sport? | Which side does {q} follow?",
        "{s} thinks {v} will win the league this year. | {s} bought me a {v} shirt as a joke.",
        "@TEAMS"),
    people_family(
        "person_degree",
        "{s} studied {v} at university. | {s} has a degree in {v}. | {s} majored in {v}.",
        "What was {q}'s subject at college? | What did {q} read at uni? | "
        "What field is {q}'s qualification in?",
        "{s} helped me with my {v} homework years ago. | {s} went to a talk on {v} yesterday.",
        "@SUBJECTS"),
    people_family(
        "person_dislike",
        "{s} hates {v}. | {s} can't stand {v}. | {s} really dislikes {v}.",
        "What does {q} loathe? | What gets on {q}'s nerves? | What should I never suggest to {q}?",
        "{s} and I talked about {v} over dinner. | {s} wrote an essay about {v}.",
        "@DISLIKES"),
    people_family(
        "person_instrument",
        "{s} plays {v}. | {s} has played {v} since childhood. | {s} is brilliant at {v}.",
        "Which musical instrument can {q} perform on? | What does {q} make music with? | "
        "What would {q} bring to a jam session?",
        "{s} sold {v} last month. | {s} wants to learn {v}.",
        "@INSTRUMENTS"),
    people_family(
        "person_fear",
        "{s} is terrified of {v}. | {s} has a phobia of {v}. | {s} panics around {v}.",
        "What frightens {q} most? | What is {q} scared of? | What gives {q} the creeps?",
        "{s} made a documentary about {v}. | {s} drew a picture of {v}.",
        "@FEARS"),
    people_family(
        "person_trip",
        "{s} is going to {v} on holiday next month. | {s} has booked a trip to {v} for the summer. | "
        "{s} is off to {v} soon.",
        "Where is {q} travelling on vacation shortly? | Which country will {q} visit on the next getaway? | "
        "Where is {q}'s upcoming break?",
        "{s} cooked a {v}-themed dinner for us. | {s} read a novel set in {v}.",
        "@PLACES"),
]

_SPECIES = (
    ("dog", "pooch | puppy | canine"),
    ("cat", "kitty | feline | moggy"),
    ("parrot", "talking bird | feathered friend"),
    ("hamster", "little rodent | tiny furball in the cage"),
    ("rabbit", "bunny | long-eared pet"),
    ("goldfish", "fish in the bowl | orange swimmer"),
    ("tortoise", "shelled reptile | slow pet with a shell"),
    ("horse", "mare | animal I ride"),
    ("snake", "serpent | slithery pet"),
    ("guinea pig", "cavy | squeaky rodent"),
    ("ferret", "polecat | weasel-like pet"),
    ("lizard", "gecko | scaly pet with legs"),
)


def _pet_family(name: str, facts: str, queries: str, distract: str, values: str) -> Family:
    rows = [(s, " | ".join(q.replace("{q}", f) for q in _split(queries) for f in _split(forms)), values)
            for s, forms in _SPECIES]
    return subject_family(name, "pets", facts, distract, rows)


_PET_FAMILIES = [
    _pet_family("pet_name", "My {s} is called {v}. | We named our {s} {v}. | {v} is the name of my {s}.",
                "What's my {q}'s name? | What do I call my {q}? | What name did we give the {q}?",
                "The {s} in the pet food advert is also called {v}. | {p} wants to name a {s} {v}.", "@PET_NAMES"),
    _pet_family("pet_age", "My {s} is {v} years old. | My {s} turned {v} this spring.",
                "How old is my {q}? | What age is my {q} now?",
                "My {s} sleeps for {v} hours a day. | The rescue {s} I saw online is {v} years old.", "@PET_AGES"),
    _pet_family("pet_fear", "My {s} is terrified of {v}. | My {s} hides whenever it sees {v}.",
                "What scares my {q}? | What makes my {q} panic?",
                "My {s} loves {v}. | The rescue {s} I saw online is scared of {v}.", "@PET_FEARS"),
    _pet_family("pet_treat", "My {s}'s favourite treat is {v}. | My {s} goes crazy for {v}.",
                "What snack does my {q} like best? | What can I reward my {q} with?",
                "My {s} is not allowed {v}. | The shelter feeds every {s} {v}.", "@PET_TREATS"),
]

_DISLIKE = "I can't stand {v}. | I really dislike {v}. | I've always hated {v}."

_FOOD_FAMILIES = [
    subject_family(
        "favourite_food", "food",
        "My favourite {s} is {v}. | Nothing beats {v} when it comes to {s}. | {v} is my all-time favourite {s}.",
        "I used to love {v} as a kid, but not any more. | The café near my office does a decent {v}.",
        [
            ("dessert", "Which sweet treat do I enjoy most after dinner? | What pudding would I pick above all others?",
             "sticky toffee pudding; tiramisu; crème brûlée; lemon tart; chocolate mousse; baklava; pavlova"),
            ("fruit", "What do I most like to grab from the fruit bowl? | What produce from a tree or bush do I adore?",
             "mango; pomegranate; blueberries; watermelon; figs; cherries; lychees; pineapple"),
            ("cuisine", "What country's cooking do I enjoy most? | If we eat out, which national food style would I pick?",
             "Thai; Lebanese; Ethiopian; Japanese; Mexican; Georgian; Peruvian; Korean"),
            ("breakfast", "What do I most enjoy eating first thing in the morning? | What is my ideal morning meal?",
             "porridge with honey; avocado toast; a full English; shakshuka; banana pancakes; granola with yoghurt"),
            ("pizza topping", "What do I like on top of my pizza? | When we order from the pizzeria, what goes on mine?",
             "pepperoni; mushrooms and olives; pineapple and ham; anchovies; four cheeses; spicy nduja"),
            ("snack", "What do I nibble on between meals? | What's my go-to munchie?",
             "salted popcorn; rice crackers; dark chocolate; cashews; crisps; dried apricots"),
            ("cheese", "Which item on a cheeseboard do I love? | What fromage do I like best?",
             "aged cheddar; brie; gorgonzola; manchego; halloumi; gruyère"),
            ("soup", "What do I like to eat from a bowl on a cold day? | Which hot broth do I prefer?",
             "French onion; tomato and basil; miso; lentil; minestrone; chicken noodle"),
            ("ice cream flavour", "Which scoop do I choose at the gelateria? | What frozen dessert flavour should I get at the parlour?",
             "pistachio; salted caramel; mint choc chip; stracciatella; cookie dough; raspberry ripple"),
            ("sandwich", "What do I like between two slices of bread? | What's my lunchtime roll of choice?",
             "BLT; tuna melt; Reuben; cheese and pickle; egg mayo; chicken club"),
            ("comfort food", "What do I eat when I'm feeling down? | What meal cheers me up after a rough day?",
             "mac and cheese; cottage pie; chicken soup; cheese toastie; instant noodles; beans on toast"),
            ("vegetable", "Which greens do I enjoy the most? | What veg do I always pile on my plate?",
             "roasted broccoli; sweet potato; asparagus; aubergine; butternut squash; brussels sprouts"),
            ("sweet", "What candy do I reach for? | Which confectionery do I like best?",
             "wine gums; liquorice; fudge; jelly beans; sherbet lemons; marshmallows"),
            ("bread", "Which loaf do I like to buy from the bakery? | What kind of baked dough do I prefer?",
             "sourdough; rye; focaccia; baguette; brioche; soda bread"),
            ("pasta dish", "Which Italian noodle dish do I order most? | What do I pick from the trattoria menu?",
             "carbonara; pesto linguine; arrabbiata; cacio e pepe; spaghetti vongole; tagliatelle ragù"),
            ("spice", "Which seasoning do I put in everything? | What flavouring from the rack do I love?",
             "smoked paprika; cumin; cardamom; chilli flakes; za'atar; turmeric"),
            ("curry", "What do I order from the Indian takeaway? | Which spicy dish from the curry house is my go-to?",
             "chicken korma; lamb rogan josh; chana masala; prawn jalfrezi; saag paneer; vindaloo"),
            ("cake", "What should I have as my birthday bake? | Which sponge or gateau do I enjoy most?",
             "carrot cake; red velvet; lemon drizzle; Victoria sponge; black forest gâteau; coffee and walnut"),
        ]),
    item_family("food_dislike", "food", [
        (_DISLIKE, "Which veg do I refuse to eat? | What greens make me pull a face?",
         "celery; okra; beetroot; cauliflower; mushrooms; radishes"),
        (_DISLIKE, "Which thing from the sea do I find revolting? | What fish or shellfish do I avoid?",
         "oysters; anchovies; sardines; squid; mussels; smoked mackerel"),
        (_DISLIKE, "Which herb ruins a dish for me? | What leafy garnish do I pick out of my food?",
         "coriander; dill; parsley; tarragon; fennel; basil"),
        (_DISLIKE, "What beverage do I find disgusting? | What should nobody ever pour me?",
         "tomato juice; gin; root beer; buttermilk; energy drinks; coconut water"),
        (_DISLIKE, "Which dairy item makes me gag? | What can't I bear the smell of on a cheeseboard?",
         "blue cheese; goat's cheese; camembert; feta; stilton"),
        (_DISLIKE, "Which organ meat do I refuse? | What butcher's cut do I never eat?",
         "liver; kidneys; black pudding; tripe; haggis"),
        (_DISLIKE, "Which sauce do I keep off my food? | What dressing or spread do I detest?",
         "mayonnaise; ketchup; marmite; horseradish; salad cream"),
        (_DISLIKE, "Which sugary thing do I dislike? | What dessert ingredient do I always turn down?",
         "marzipan; raisins; desiccated coconut; white chocolate; candied peel"),
    ], distract="The menu at the new bistro is full of {v}. | I bought {v} for a recipe by mistake."),
    subject_family(
        "food_order", "food",
        "I like my {s} {v}. | I always have my {s} {v}. | My {s} should always be {v}.",
        "The café downstairs serves {s} {v} by default. | I once tried my {s} {v} and regretted it.",
        [
            ("coffee", "How do I take my morning brew? | How should my cup of joe be made?",
             "black with no sugar; with oat milk; as a double shot; with two sugars; iced with vanilla syrup"),
            ("tea", "How do I drink my cuppa? | How should a builder's brew be made for me?",
             "strong with a splash of milk; with lemon and honey; without milk; weak with three sugars"),
            ("steak", "How should my beef be cooked? | How well done do I want my sirloin?",
             "medium rare; rare; well done; medium; blue"),
            ("eggs", "How do I want my breakfast from the hen prepared? | What's my order at brunch when it comes to the yolk?",
             "poached; scrambled; sunny side up; soft-boiled; over easy"),
            ("curry", "How spicy do I want my Indian food? | How much heat can I handle in a dish?",
             "extra hot; mild; medium; fiery"),
            ("burger", "How should my patty in a bun come? | What's my order at the burger joint?",
             "with no onions; with extra pickles; with blue cheese; plain; with a fried egg on top"),
            ("porridge", "How do I want my oats in the morning? | How should my morning oatmeal be made?",
             "with cinnamon and banana; made with water and salt; with peanut butter; with golden syrup"),
        ]),
]

_HEALTH = item_family("health", "health", [
    ("I'm allergic to {v}. | {v} gives me a bad allergic reaction.",
     "Which medication must doctors never give me? | Is there a drug I react badly to?",
     "penicillin; amoxicillin; codeine; aspirin; ibuprofen; sulfa drugs",
     "The pharmacist asked whether I had ever taken {v}."),
    ("I have a {v} allergy. | I carry an EpiPen because of my {v} allergy.",
     "Which nut could put me in hospital? | What kind of nut must I never eat?",
     "peanut; cashew; hazelnut; almond; pistachio; walnut", "The bakery labels everything with {v} in it."),
    ("I react really badly to {v}. | I swell up alarmingly from {v}.",
     "Which insect could send me to A&E? | What bug is dangerous for me?",
     "bee stings; wasp stings; mosquito bites; horsefly bites", "{p} got {v} at the picnic."),
    ("I get terrible hay fever from {v}. | {v} sets off my hay fever every spring.",
     "What gives me a runny nose and itchy eyes each year? | What plant makes me sneeze all season?",
     "birch pollen; grass pollen; ragweed; oak pollen; dust mites"),
    ("I have {v}. | I was diagnosed with {v} a few years ago.",
     "What chronic illness do I live with? | What ongoing health problem do I manage?",
     "asthma; type 2 diabetes; coeliac disease; high blood pressure; psoriasis; an underactive thyroid",
     "{p} has {v}. | I ran a charity 5k for {v} research."),
    ("I take {v} every morning. | I'm on {v} daily.",
     "What pill do I swallow with breakfast each day? | Which prescription do I need every day?",
     "metformin; levothyroxine; a statin; vitamin D; omeprazole; an antihistamine", "{p} takes {v}."),
    ("My blood type is {v}. | I'm blood group {v}.",
     "What would a hospital need to know before a transfusion? | Which group does my blood belong to?",
     "O negative; A positive; B positive; AB negative; O positive; A negative"),
    ("My doctor is {v}. | I see {v} at the local surgery.",
     "Who is my family physician? | Which GP do I usually book with?",
     "Dr Patel; Dr Okafor; Dr Lindqvist; Dr Moreau; Dr Nakamura; Dr Hughes", "{p} went to school with {v}."),
    ("My dentist is {v}. | {v} looks after my teeth.",
     "Who do I see for fillings and check-ups? | Who's my tooth doctor?",
     "Dr Fischer; Dr Adeyemi; Dr Costa; Dr Walsh; Dr Romano"),
    ("I'm {v} and wear glasses. | I've been {v} since I was a teenager.",
     "What's wrong with my vision? | Why do I need specs?",
     "short-sighted; long-sighted; astigmatic"),
    ("I broke my {v} skiing a few years ago. | I fractured my {v} on the slopes.",
     "Which bone did I snap in a winter sports accident? | What did I injure on a ski holiday?",
     "left wrist; right ankle; collarbone; left leg; right arm; thumb", "{p} sprained their {v} playing football."),
    ("I had my {v} removed in 2018. | Surgeons took out my {v} a few years back.",
     "Which body part was taken out in an operation? | What did I lose under the knife?",
     "appendix; gallbladder; tonsils; wisdom teeth"),
    ("I'm terrified of {v}. | I have a real phobia of {v}.",
     "What am I most afraid of? | What scares me more than anything?",
     "@FEARS", "{p} finds {v} fascinating."),
    ("I'm {v}. | I've been {v} since 2015.",
     "What eating regime do I follow? | Do I avoid any foods by choice?",
     "vegetarian; vegan; pescatarian; on a low-carb diet"),
    ("I need {v} of sleep to function. | I usually sleep about {v} a night.",
     "How much rest do I need each night? | How long do I stay in bed each night?",
     "seven hours; nine hours; six hours; eight hours"),
    ("I have a bad {v}, so no heavy lifting. | My {v} flares up if I sit too long.",
     "Which body part gives me chronic pain? | Where do I have a recurring ache?",
     "lower back; left knee; right shoulder; neck; hip", "{p} hurt their {v} at the gym."),
    ("I had my last tetanus jab in {v}. | My tetanus booster was in {v}.",
     "When was I last immunised against lockjaw? | What year did I get my last vaccine for rusty-nail cuts?",
     "2016; 2019; 2021; 2014"),
])

_TRAVEL = item_family("travel", "travel", [
    ("We went to {v} on our honeymoon. | My wife and I honeymooned in {v}.",
     "Where did we go right after the wedding? | Which destination did I choose for the trip after getting married?"),
    ("Last summer I spent two weeks in {v}. | I went to {v} for my summer holiday last year.",
     "Where was my most recent July getaway? | Which place did I visit on my previous warm-weather break?"),
    ("I'm flying to {v} next month. | Next month I'm off to {v}.",
     "Where am I travelling soon? | What's my upcoming destination?"),
    ("I've always dreamed of visiting {v}. | My dream is to see {v} one day.",
     "Which place is top of my bucket list? | Where would I most love to go someday?"),
    ("My first trip abroad was to {v}. | The first foreign country I ever visited was {v}.",
     "Where did I go the very first time I left my home country? | Which overseas place did I see before any other?"),
    ("I spent a semester studying in {v}. | I did an exchange year in {v}.",
     "Where did I do my university exchange? | Which place did I live in as a foreign student?"),
    ("My worst holiday ever was in {v}. | Everything went wrong on my trip to {v}.",
     "Which vacation was a total disaster? | Where did I have the most awful getaway?"),
    ("I go to {v} for work every quarter. | My company sends me to {v} several times a year.",
     "Where do I travel on business regularly? | Which place does my employer send me to often?"),
    ("We're spending Christmas in {v} this year. | This December we'll be in {v} for the holidays.",
     "Where will we celebrate the festive season? | Where are we going for Xmas?"),
    ("I go skiing in {v} every winter. | Every winter I hit the slopes in {v}.",
     "Where do I go for my annual snow holiday? | Which mountains do I visit in the cold months?",
     "the Alps; Colorado; Hokkaido; the Dolomites; Whistler; the Pyrenees", "I watched a documentary about {v}."),
    ("As a kid I spent every summer in {v}. | My family holidayed in {v} every year when I was young.",
     "Where did my parents take me each July when I was little? | Which place holds my childhood vacation memories?"),
    ("I proposed to my wife in {v}. | I popped the question in {v}.",
     "Where did I ask my partner to marry me? | Where did I get down on one knee?"),
    ("I met my wife in {v}. | My wife and I first met in {v}.",
     "Where did my spouse and I first cross paths? | In which place did I first encounter my partner?"),
    ("I always fly with {v}. | {v} is my airline of choice.",
     "Which carrier do I book flights with? | What company do I prefer to take to the skies with?",
     "KLM; Emirates; Ryanair; Lufthansa; Qantas; TAP", "{p} had a terrible flight with {v}."),
    ("I always book {v}. | I prefer {v} on planes.",
     "Where do I like to sit when flying? | What's my preferred spot on an aircraft?",
     "an aisle seat; a window seat; the exit row; a seat near the front", "-"),
    ("I hold a {v} passport. | My passport is {v}.",
     "What nationality is on my travel document? | Which country issued my travel ID?",
     "Irish; Canadian; Portuguese; New Zealand; Swiss; Brazilian", "-"),
], values="@PLACES", distract="{p} went to {v} last year. | I watched a documentary about {v}.")

_SCHEDULE = subject_family(
    "weekly_schedule", "schedule",
    "{s} is every {v}. | {s} happens each week on {v}. | {s} is booked for {v} every week.",
    "{s} was moved to {v} once because of a bank holiday. | {p} has a dentist appointment on {v}.",
    [
        ("my yoga class", "When do I do my weekly stretching session? | What time is the class where I practise downward dog?", "@DAYTIMES"),
        ("my piano lesson", "When do I practise the keys with my teacher? | When is my weekly music lesson?", "@DAYTIMES"),
        ("my team planning meeting", "When do I sync up with my colleagues on priorities? | What time do I meet my team to plan work?", "@DAYTIMES"),
        ("my therapy session", "When do I see my counsellor? | When is my appointment to talk through my feelings?", "@DAYTIMES"),
        ("the bin collection", "When are the rubbish bins emptied? | What day does the refuse lorry come?", "@DAYTIMES"),
        ("my grocery delivery", "When does my food shopping get dropped off? | When does the supermarket van come to my door?", "@DAYTIMES"),
        ("five-a-side football", "When is my kickabout with the lads? | When do I play soccer with friends?", "@DAYTIMES"),
        ("my book club", "When does my reading group meet? | When do I discuss novels with other readers?", "@DAYTIMES"),
        ("my swimming session", "When do I do lengths at the leisure centre? | When do I swim laps myself?", "@DAYTIMES"),
        ("my salsa class", "When do I go dancing? | When is my Latin dance lesson?", "@DAYTIMES"),
        ("choir practice", "When is my singing rehearsal? | When do I rehearse with the vocal group?", "@DAYTIMES"),
        ("date night with my wife", "When do my spouse and I go out together each week? | What evening is reserved for romance?", "@DAYTIMES"),
        ("my call with my parents", "When do I ring my mum and dad? | When do I phone my folks?", "@DAYTIMES"),
        ("the cleaner's visit", "When does the housekeeper come round? | When is my home tidied by someone I pay?", "@DAYTIMES"),
        ("my shift at the food bank", "When do I volunteer for the charity? | When do I give my time to help people in need?", "@DAYTIMES"),
        ("my pottery class", "When do I do ceramics? | When do I throw clay on the wheel?", "@DAYTIMES"),
        ("my son's swimming lesson", "When does my boy learn to swim? | When do I take my lad to the pool for his class?", "@DAYTIMES"),
        ("my session with my personal trainer", "When is my one-on-one workout? | When do I get coached at the gym?", "@DAYTIMES"),
    ])

_ROUTINE = item_family("routine", "schedule", [
    ("I wake up at {v} on weekdays. | My alarm goes off at {v} every workday.",
     "When do I get out of bed on working days? | What time am I up Monday to Friday?",
     "5:45am; 6:15am; 6:30am; 7am; 7:20am"),
    ("I go to bed at {v}. | I'm usually asleep by {v}.",
     "When do I turn in for the night? | What time do I hit the sack?", "10pm; 10:30pm; 11pm; midnight; 9:45pm"),
    ("I eat lunch at {v}. | I take my lunch break at {v}.",
     "When do I have my midday meal? | What time do I stop work to eat?", "noon; 12:30pm; 1pm; 1:30pm; 11:45am"),
    ("I leave the house at {v} to get to work. | I head off for the office at {v}.",
     "What time do I set off in the morning for my job? | When do I start my commute?", "7:10am; 7:45am; 8am; 8:20am; 6:50am"),
    ("I walk the dog at {v} every evening. | Every evening at {v} I take the dog out.",
     "When does my pooch get its nightly stroll? | At what hour do I take the canine outside after dinner?",
     "6pm; 7pm; 8:30pm; 9pm; 7:30pm"),
    ("I drop the kids at school at {v}. | School drop-off is at {v}.",
     "When do I take my children to class in the morning? | What time must the little ones be at the gate?",
     "8:15am; 8:30am; 8:45am; 8:40am"),
    ("I meditate for twenty minutes at {v}. | I do my meditation at {v} each day.",
     "When do I sit quietly and clear my mind? | What time is my daily mindfulness practice?",
     "6am; 7am; 9pm; 1pm; 10pm"),
    ("I hit the gym at {v}. | I work out at {v} most days.",
     "At what hour do I usually lift weights? | What time do I train at the fitness centre?", "6:30am; noon; 5:30pm; 7pm; 8pm"),
    ("I don't drink coffee after {v}. | My last coffee of the day is at {v}.",
     "After what time do I avoid caffeine? | When is my cut-off for espresso?", "2pm; noon; 3pm; 4pm"),
], distract="{p} wakes up at {v}. | The post usually arrives at {v}.")

_WORK = item_family("work", "work", [
    ("I work for {v}. | I've been at {v} for three years.",
     "Which company pays my salary? | Who is my employer?",
     "Siemens; a small design agency; the city council; Deloitte; a start-up called Brightloop; Spotify",
     "{p} applied for a job at {v}."),
    ("I'm employed as {v}. | At work I'm {v}.",
     "What's my position at the company? | What role do I hold in my job?",
     "a senior data engineer; a product manager; a UX researcher; a marketing lead; a project coordinator",
     "{p} is training to be {v}."),
    ("Our office is in {v}. | My workplace is in {v}.",
     "Where do I go to work each day? | Where is the building I work in?",
     "central Manchester; the Docklands; an industrial park outside town; a converted warehouse in Shoreditch",
     "{p} had a meeting in {v} last week."),
    ("I get to work by {v}. | I commute by {v}.",
     "How do I travel to the office? | What transport do I take to my job?", "bike; train; tram; bus; car; ferry",
     "{p} hates travelling by {v}."),
    ("I work {v}. | My hours are {v}.",
     "When am I on the clock? | What does my working schedule look like?",
     "nine to five; early shifts from 6am; four days a week; night shifts; flexible hours"),
    ("I started my current job in {v}. | I joined my company in {v}.",
     "When did I begin at my present employer? | How long ago was my first day at this firm?",
     "March 2019; January 2021; September 2017; June 2022",
     "{p} retired in {v}."),
    ("I'm on the {v} team. | I work in the {v} department.",
     "Which group am I part of at the office? | What division do I belong to?",
     "payments; marketing; customer support; research; logistics; security",
     "{p} got transferred to the {v} team."),
    ("At work I mostly write {v}. | Most of my code at the office is in {v}.",
     "Which programming language do I use on the job? | What do I code in day to day?",
     "Python; Rust; Java; TypeScript; Go; C++",
     "{p} is learning {v} in the evenings."),
    ("I'm currently leading the {v} project. | I'm in charge of the {v} rollout.",
     "What initiative am I heading up right now? | Which piece of work am I responsible for at the moment?",
     "mobile app redesign; data migration; new billing system; warehouse automation; customer portal",
     "{p} thinks the {v} project is doomed."),
    ("Before this job I worked at {v}. | My previous employer was {v}.",
     "Who did I work for before my current role? | Where was I employed in the past?",
     "a bakery; Amazon; a law firm; a secondary school; a call centre",
     "{p} used to work at {v}."),
    ("My desk is on the {v} floor. | I sit on the {v} floor at the office.",
     "Which storey is my workstation on? | What level of the building do I sit on at work?",
     "third; seventh; ground; fifth; twelfth"),
    ("I work from home on {v}. | I'm remote every week on {v}.",
     "Which days am I not in the office? | When do I do my job from my own house?",
     "Mondays and Fridays; Wednesdays; Thursdays; Tuesdays and Thursdays",
     "{p} works from home on {v}."),
    ("My annual review is in {v}. | I have my performance appraisal every {v}.",
     "When is my yearly evaluation with my manager? | When do I get assessed at work each year?",
     "November; April; January; July"),
])

_EDUCATION = item_family("education", "education", [
    ("I studied at {v}. | I went to university at {v}.",
     "Which college did I attend? | Where did I get my degree?",
     "the University of Leeds; Trinity College Dublin; McGill; the University of Bologna; Kyoto University",
     "{p} gave a lecture at {v}. | {p} visited {v} last spring."),
    ("I have a degree in {v}. | I did my bachelor's in {v}.",
     "What was my major? | What subject did I read at uni?", "@SUBJECTS", "{p} asked me a question about {v}."),
    ("I graduated in {v}. | I finished university in {v}.",
     "What year did I get my diploma? | When did I complete my studies?", "2009; 2012; 2015; 2018"),
    ("Besides English, I speak {v}. | I'm fluent in {v} as well as English.",
     "Which other tongue can I converse in? | What second language do I have?", "@LANGUAGES",
     "I heard {v} spoken on the bus today."),
    ("I'm learning {v} on Duolingo. | I've started taking {v} lessons.",
     "Which language am I currently studying? | What new tongue am I picking up?", "@LANGUAGES",
     "{p} gave up on learning {v}."),
    ("My dissertation was about {v}. | I wrote my thesis on {v}.",
     "What was my final research paper on? | What topic did my big university project cover?",
     "coral reef decline; medieval trade routes; machine translation; urban housing policy",
     "{p} sent me an article about {v}."),
    ("I'm doing an online course in {v}. | I'm taking an evening course in {v}.",
     "What am I studying on the internet after work? | What class am I enrolled in at night?",
     "data science; photography; bookkeeping; UX design; creative writing"),
])

_HOME = item_family("home", "home", [
    ("I live in {v}. | Home for me is {v}.",
     "Which city is my own home in? | Where do I reside?", "@CITIES", "{p} spent a weekend in {v}."),
    ("My flat is in {v}. | I live in the {v} area.",
     "Which part of town is my place in? | What district do I live in?",
     "Clifton; Shoreditch; the old town; Leith; Brooklyn Heights; Ancoats"),
    ("My home is {v}. | We rent {v}.",
     "What kind of dwelling do I have? | What sort of property do I live in?",
     "a third-floor flat; a terraced house; a converted barn; a houseboat; a studio apartment",
     "{p} grew up in {v}."),
    ("My place has {v} bedrooms. | We have {v} bedrooms at home.",
     "How many rooms for sleeping are in my house? | How many guests could sleep in separate rooms at mine?",
     "two; three; four; five"),
    ("The spare key is {v}. | I keep a spare key {v}.",
     "Where can I find another way in if I'm locked out? | Where is the extra door key hidden?",
     "under the flowerpot by the door; with my neighbour; in the garden shed; in a lockbox by the gate"),
    ("The wifi password is {v}. | Our wifi password is {v}.",
     "What do guests need to get online at my place? | What's the code for the internet at home?",
     "bluefalcon42; Tulip!2020; seaside-ovens; kettle77"),
    ("I live on {v}. | My address is on {v}.",
     "What road is my house on? | Which street do I reside on?",
     "Elm Road; Harbour Street; Maple Avenue; Station Lane", "{p} used to live on {v}."),
    ("My landlord is {v}. | I rent from {v}.",
     "Who owns the place I'm renting? | Who do I pay each month for my housing?",
     "Mr Okoro; Mrs Schmidt; a company called Keystone Lettings; Mr Haddad"),
    ("I moved into my current home in {v}. | We've lived here since {v}.",
     "How long have I been at this address? | When did I settle into where I live now?",
     "2016; 2019; 2021; 2013"),
    ("Our heating is {v}. | The house is heated by {v}.",
     "What keeps my home warm? | What kind of warming system do I have?",
     "a gas boiler; a heat pump; a wood stove; electric radiators", "{p} just installed {v}."),
    ("I grow {v} in my garden. | My garden is full of {v}.",
     "What plants do I cultivate outdoors? | What's growing in my backyard?",
     "tomatoes; roses; herbs; lavender; strawberries", "{p} gave me some {v} from the market."),
    ("I park my car {v}. | My parking spot is {v}.",
     "Where do I leave my vehicle overnight? | Where can my motor be found at home?",
     "in the underground garage; on the street; in bay 14; behind the building"),
])

_POSSESSIONS = item_family("possessions", "possessions", [
    ("I drive {v}. | My car is {v}.", "What vehicle do I own? | What am I behind the wheel of?", "@CARS"),
    ("I ride {v}. | My bike is {v}.", "What kind of bicycle do I have? | What do I cycle around on?",
     "a green Brompton; a carbon road bike; a Dutch cargo bike; an old mountain bike"),
    ("My phone is {v}. | I use {v} as my phone.", "What mobile do I carry? | Which handset do I own?",
     "an iPhone 13; a Pixel 8; a Samsung Galaxy S22; a Nokia flip phone; a Fairphone"),
    ("My laptop is {v}. | I work on {v}.", "What computer do I use? | Which notebook machine do I have?",
     "a MacBook Air; a ThinkPad X1; a Dell XPS; a Surface Pro; a Framework"),
    ("I wear {v}. | My watch is {v}.", "What's on my wrist? | What timepiece do I own?",
     "a Casio digital watch; an Apple Watch; my grandfather's Omega; a Garmin fitness watch"),
    ("I carry my things in {v}. | My everyday bag is {v}.", "What do I take my stuff around in? | What holds my belongings when I'm out?",
     "a canvas tote; a leather satchel; a Fjällräven backpack; a messenger bag"),
    ("My camera is {v}. | I take photos with {v}.", "What do I shoot pictures with? | Which photographic gear do I own?",
     "a Fujifilm X-T4; a Canon EOS R6; an old Pentax film camera; a Sony A7"),
    ("I listen to music on {v}. | My headphones are {v}.", "What do I wear on my ears for audio? | Which earbuds or cans do I have?",
     "Sony WH-1000XM5; AirPods Pro; Bose QuietComfort; Sennheiser HD600"),
    ("I read books on {v}. | My e-reader is {v}.", "What device do I use for novels? | What gadget do I read stories on?",
     "a Kindle Paperwhite; a Kobo Libra; an iPad mini"),
    ("I play games on {v}. | My games console is {v}.", "What gaming system do I own? | What do I use for video games?",
     "a PlayStation 5; a Nintendo Switch; an Xbox Series X; a Steam Deck"),
    ("I make coffee with {v}. | My coffee machine is {v}.",
     "How do I brew my morning cup? | What do I use in the kitchen to prepare my caffeine fix?",
     "a Moka pot; a Breville espresso machine; a French press; an AeroPress"),
    ("My favourite coat is {v}. | I always wear {v} in winter.",
     "What outerwear do I reach for when it's cold? | What do I put on over my clothes in the chilly months?",
     "a green Barbour jacket; a yellow raincoat; a navy peacoat; a puffer jacket"),
], distract="I almost bought {v} instead. | {p} recommended {v} to me.")

_HOBBIES = item_family("hobbies", "hobbies", [
    ("I play {v}. | I've been learning {v} for years.",
     "What musical instrument do I know how to perform on? | What do I practise in the music room?",
     "@INSTRUMENTS", "I'd love to learn {v} one day."),
    ("I play {v} on weekends. | I'm in a local {v} league.",
     "Which sport do I compete in? | What game do I do for exercise with a club?",
     "tennis; netball; volleyball; hockey; badminton; cricket", "I watched some {v} on TV last night."),
    ("I support {v}. | I'm a lifelong {v} fan.",
     "Which side do I cheer for? | Who do I root for in sport?", "@TEAMS",
     "{p} says {v} are overrated."),
    ("My favourite book is {v}. | I've read {v} five times.",
     "Which novel do I love most? | What story do I keep rereading?",
     "Middlemarch; The Hobbit; One Hundred Years of Solitude; Dune; Pride and Prejudice; The Remains of the Day",
     "I couldn't finish {v}."),
    ("My favourite author is {v}. | I've read everything by {v}.",
     "Which writer do I admire most? | Whose novels do I devour?",
     "Haruki Murakami; Zadie Smith; Terry Pratchett; Toni Morrison; Ursula K. Le Guin"),
    ("My favourite film is {v}. | I could watch {v} again and again.",
     "What movie do I love most? | Which picture have I seen countless times?",
     "Spirited Away; The Godfather; Amélie; Jaws; Paddington 2; Casablanca", "I fell asleep during {v}."),
    ("My favourite band is {v}. | I've seen {v} live six times.",
     "Which group do I listen to most? | What musicians would I queue for tickets to see?",
     "Radiohead; Fleetwood Mac; ABBA; Arctic Monkeys; the Beatles; Daft Punk"),
    ("My favourite TV series is {v}. | I've binge-watched {v} three times.",
     "Which show do I love on the telly? | What programme do I rewatch?",
     "The Wire; Fleabag; Succession; The Office; Breaking Bad; Line of Duty", "I gave up on {v} after one episode."),
    ("My favourite board game is {v}. | I always suggest {v} at game night.",
     "What tabletop game do I like best? | What do I want to play when friends come round?",
     "Catan; Ticket to Ride; Scrabble; chess; Carcassonne; Pandemic"),
    ("My favourite video game is {v}. | I've sunk hundreds of hours into {v}.",
     "Which console title do I love? | What do I play most on my gaming system?",
     "Zelda; Stardew Valley; FIFA; Minecraft; Elden Ring"),
    ("I collect {v}. | I have a big collection of {v}.",
     "What do I hoard as a collector? | What items do I keep acquiring?",
     "vinyl records; vintage postcards; old coins; fountain pens; enamel pins", "I threw away a box of {v}."),
    ("I spend my evenings {v}. | My hobby is {v}.",
     "What do I do with my hands to unwind at night? | What's my crafty pastime?",
     "knitting; painting miniatures; doing embroidery; building model trains; making candles"),
    ("My favourite podcast is {v}. | I never miss an episode of {v}.",
     "Which audio show do I always listen to? | What's in my earbuds on the way to work?",
     "The Rest Is History; Radiolab; Serial; No Such Thing As A Fish"),
    ("My best 10k time is {v}. | I ran a 10k in {v}.",
     "How fast can I run ten kilometres? | What's my personal record for that race distance?",
     "48 minutes; 52 minutes; 44 minutes; 59 minutes"),
])

_PREFERENCES = item_family("preferences", "preferences", [
    ("My favourite colour is {v}. | I'd paint everything {v} if I could.",
     "Which shade do I like best? | What hue do I love?",
     "teal; mustard yellow; burgundy; forest green; lilac; navy blue", "My front door is painted {v}."),
    ("My favourite season is {v}. | I love {v} more than any other time of year.",
     "What time of year do I enjoy most? | Which part of the calendar makes me happiest?",
     "autumn; spring; winter; summer"),
    ("I mostly listen to {v}. | My favourite kind of music is {v}.",
     "What style of songs do I play most? | What sound do I put on at home?",
     "jazz; techno; folk; hip hop; classical; country", "{p} took me to a {v} concert."),
    ("I keep the thermostat at {v}. | I like the house at {v}.",
     "How warm do I set the heating? | What temperature do I like indoors?",
     "19 degrees; 21 degrees; 18 degrees; 22 degrees"),
    ("I prefer {v} to phone calls. | Please send me {v} rather than calling.",
     "How do I like people to reach me? | What's the best way to get in touch with me?",
     "text messages; emails; voice notes; WhatsApp messages"),
    ("I'm {v}. | I've always been {v}.",
     "Am I an early riser or do I stay up late? | When in the day am I at my best?",
     "a morning person; a night owl"),
    ("I get my news from {v}. | I read {v} every morning.",
     "Where do I learn about current events? | What's my source for headlines?",
     "the Guardian; the BBC; the Economist; the New York Times; Reuters"),
    ("I always choose {v} holidays. | For a break I like {v} holidays best.",
     "What kind of vacation suits me? | What style of getaway do I go for?",
     "beach; hiking; city; camping; cruise"),
    ("My favourite flower is {v}. | I love having {v} in the house.",
     "Which bloom do I like best? | What should I be given in a bouquet?",
     "peonies; sunflowers; tulips; lilies; orchids", "{p} sent me {v} when I was ill."),
    ("My favourite animal is {v}. | I adore {v}.",
     "Which creature do I find most lovable? | What beast do I like most at the zoo?",
     "the otter; the red panda; the octopus; the elephant; the puffin"),
    ("I love {v} films. | {v} movies are my favourite.",
     "What kind of cinema do I enjoy? | Which type of picture do I pick on a night in?",
     "horror; sci-fi; romantic comedy; documentary; western"),
    ("My favourite smell is {v}. | Nothing smells better than {v}.",
     "What aroma do I love? | Which fragrance makes me happiest?",
     "freshly cut grass; rain on hot pavement; coffee beans; pine needles; baking bread"),
])

_DATES = item_family("dates", "dates", [
    ("My birthday is {v}. | I was born on {v}.",
     "When do I celebrate getting older? | What's my date of birth?"),
    ("Our wedding anniversary is {v}. | My wife and I got married on {v}.",
     "When did I tie the knot? | What date do we celebrate our marriage?"),
    ("My rent is due on {v} of each month. | I pay rent on {v} of the month.",
     "When does my monthly housing payment go out? | Which day must the landlord get his money?",
     "the 1st; the 15th; the 28th; the 5th", "The library is closed on {v} of every month."),
    ("My passport expires in {v}. | My passport runs out in {v}.",
     "When does my travel document become invalid? | By when must I renew my ID for going abroad?",
     "May 2027; October 2026; March 2029; July 2028", "{p}'s passport runs out in {v}."),
    ("My car insurance renews in {v}. | My car insurance is up for renewal in {v}.",
     "When is my vehicle policy due? | In which month does the cover on my motor end?",
     "January; August; November; June", "{p} is moving house in {v}."),
    ("I have a dentist appointment on {v}. | My next check-up at the dentist is on {v}.",
     "When am I next getting my teeth looked at? | When do I see the tooth doctor?"),
    ("My driving test is on {v}. | I sit my driving test on {v}.",
     "When is my road exam? | When do I try to get my licence?"),
    ("I'm going to a concert on {v}. | I have concert tickets for {v}.",
     "When is the gig I'm attending? | What date is the live music show I booked?"),
    ("My gym membership ends on {v}. | My gym membership runs out on {v}.",
     "When does my fitness club subscription finish? | When do I need to re-sign at the leisure centre?"),
    ("My tax return is due on {v}. | I have to file my taxes by {v}.",
     "What is my deadline for the revenue office? | When must my paperwork reach the tax authority?"),
], values="@DATES", distract="{p} is getting married on {v}. | The library is closed on {v}.")

_GOALS = item_family("goals", "goals", [
    ("I'm training for {v}. | I've signed up for {v}.",
     "What race am I preparing for? | What endurance event have I entered?",
     "the Berlin Marathon; a half marathon in May; a triathlon; an ultramarathon", "{p} ran {v} last year."),
    ("I'm saving up for {v}. | I put money aside every month for {v}.",
     "What am I putting cash away for? | What's the goal of my savings?",
     "a deposit on a house; a new car; a trip around the world; my wedding"),
    ("I want to learn {v}. | This year I'm going to learn {v}.",
     "What new skill am I hoping to pick up? | What do I intend to master soon?",
     "to sail; to code; to bake bread; sign language; to juggle"),
    ("I'm trying to quit {v}. | I'm cutting out {v}.",
     "What habit am I trying to kick? | What am I attempting to give up?",
     "smoking; sugar; caffeine; social media; alcohol"),
    ("I want to read {v} books this year. | My goal is to read {v} books this year.",
     "What's my annual target for finishing novels? | How many titles am I aiming to get through in twelve months?",
     "twenty; fifty; thirty; twelve"),
    ("I'm trying to lose {v}. | My aim is to drop {v}.",
     "How much weight am I trying to shed? | How many kilos or pounds do I want off?",
     "five kilos; ten pounds; a stone; eight kilos"),
    ("I want to become {v} within five years. | My career goal is to become {v}.",
     "What position am I aiming for professionally? | Where do I want to be in my job in a few years?",
     "a team lead; a partner at the firm; a head teacher; a published author"),
    ("I want to climb {v} someday. | One day I'll climb {v}.",
     "Which mountain is on my to-do list? | What peak do I dream of summiting?",
     "Kilimanjaro; Ben Nevis; Mount Fuji; Mont Blanc", "{p} climbed {v} last summer."),
])

_PERSONAL = item_family("personal", "personal", [
    ("My shoe size is {v}. | I wear size {v} shoes.",
     "What size footwear should I buy? | What do I need to know to get me trainers?", "7; 9; 10; 42; 38; 44"),
    ("I wear a size {v} shirt. | My shirt size is {v}.",
     "What size tops fit me? | Which T-shirt size should be bought for me?", "small; medium; large; extra large"),
    ("My ring size is {v}. | I wear a size {v} ring.",
     "What size for jewellery on my finger? | How big should a band for my finger be?", "K; M; P; N"),
    ("I'm {v} tall. | My height is {v}.", "What's my stature? | How far is it from my head to my feet?",
     "1.78 metres; 5 foot 6; 1.65 metres; 6 foot 2"),
    ("I'm {v}-handed. | I write with my {v} hand.", "Which hand do I use for a pen? | Am I a southpaw?",
     "left; right"),
    ("My star sign is {v}. | I'm a {v}.", "What's my zodiac sign? | What does my horoscope say I am?",
     "Scorpio; Leo; Pisces; Gemini; Aquarius"),
    ("My middle name is {v}. | {v} is my middle name.",
     "What name comes between my first and last? | What's my second given name?",
     "Elspeth; Bartholomew; Winifred; Ignatius; Philippa"),
    ("Friends call me {v}. | My nickname is {v}.", "What do my mates call me? | What's my pet name among pals?",
     "Bear; Sparky; Dot; Sunny; Moose"),
    ("I grew up in {v}. | I was raised in {v}.", "Where did I spend my childhood? | Which town am I originally from?",
     "@CITIES", "{p} studied in {v}."),
    ("My first language is {v}. | I grew up speaking {v}.", "What's my mother tongue? | What did I speak as a baby?",
     "@LANGUAGES"),
    ("My eyes are {v}. | I have {v} eyes.", "What colour should an artist paint my irises? | What shade is my gaze?",
     "green; hazel; grey; brown; blue"),
])

_ACCOUNTS = item_family("accounts", "accounts", [
    ("I bank with {v}. | My bank is {v}.",
     "Where do I keep my current account? | Which financial institution holds my money?",
     "Monzo; Barclays; ING; Santander; a local credit union"),
    ("My phone contract is with {v}. | I'm on {v} for my mobile.",
     "Which network provides my cellular service? | Who do I pay for my mobile plan?",
     "Vodafone; O2; EE; Three; giffgaff"),
    ("My energy supplier is {v}. | I get my gas and electricity from {v}.",
     "Who provides power to my home? | Which company sends my utility bills?", "Octopus; British Gas; EDF; E.ON"),
    ("I subscribe to {v}. | I pay for {v} every month.",
     "Which streaming service costs me a monthly fee? | What online entertainment subscription do I have?",
     "Netflix; Disney+; Spotify Premium; Apple TV+; Audible"),
    ("My broadband is with {v}. | {v} provides my home internet.",
     "Who is my web provider? | Which company supplies my home connection?", "Virgin Media; BT; Sky; Hyperoptic"),
    ("My home insurance is with {v}. | {v} insures my house.",
     "Who covers my property against damage? | Which insurer protects my flat?", "Aviva; Direct Line; Admiral; LV"),
    ("I'm a member at {v}. | I go to {v} to work out.",
     "Which fitness club do I belong to? | Where do I exercise?",
     "PureGym; the Castle Climbing Centre; a CrossFit box on Mill Lane; the YMCA"),
], distract="{p} just switched to {v}. | I saw an advert for {v} on the bus.")

_PLACES = item_family("places", "places", [
    ("My favourite restaurant is {v}. | We always eat at {v} for special occasions.",
     "Where do I like to dine out most? | Which eatery do I book for celebrations?",
     "Luigi's Trattoria; Saffron House; the Olive Tree; Dishoom"),
    ("I work from {v} on Saturdays. | My go-to café is {v}.",
     "Where do I get my coffee out? | Which coffee shop do I frequent?",
     "the Copper Kettle; Bean There; Kaffeehaus; the Daily Grind"),
    ("I get my hair cut at {v}. | My hairdresser is {v}.", "Where do I go for a trim? | Who styles my hair?",
     "Tony's Barbers; Snip & Style; Salon Margot; the Grooming Room"),
    ("I do my weekly shop at {v}. | I buy my groceries at {v}.",
     "Which supermarket do I use? | Where do I buy food each week?", "Tesco; Aldi; Waitrose; Lidl; Sainsbury's"),
    ("I go running in {v}. | My usual running route is around {v}.", "Where do I jog? | Where's my regular place for a run?",
     "Victoria Park; Hampstead Heath; the botanical gardens; the river path"),
    ("My local pub is {v}. | I meet friends at {v} on Fridays.", "Which bar do I drink at? | Where do I go for a pint?",
     "the Red Lion; the Crown and Anchor; the Fox and Hounds; the Ship Inn"),
    ("I buy my books at {v}. | My favourite bookshop is {v}.", "Where do I purchase novels? | Which bookstore do I love?",
     "Foyles; a second-hand shop called Paper Trail; Waterstones; Daunt Books"),
    ("I get my prescriptions from {v}. | My pharmacy is {v}.", "Where do I collect my medicines? | Which chemist do I use?",
     "Boots on the high street; the chemist next to the station; Lloyds Pharmacy"),
    ("My pets go to {v}. | Our vet is {v}.", "Where do I take the animals when they're ill? | Which animal doctor do we use?",
     "Riverside Vets; Dr Alvarez's clinic; Paws and Claws"),
    ("I take my car to {v} for repairs. | My mechanic is {v}.", "Who fixes my vehicle? | Where do I go when my motor breaks down?",
     "Dave's Garage; Kwik Fit; a garage on Mill Road"),
    ("I watch films at {v}. | My favourite cinema is {v}.", "Where do I go to see movies? | Which picture house do I prefer?",
     "the Electric; the Picturehouse; the Odeon"),
    ("I buy bread from {v}. | My favourite bakery is {v}.", "Where do I get my loaves? | Which baker do I visit?",
     "Gail's; the Flour Pot; a little place called Crumbs"),
], distract="{p} recommended {v} to me. | {v} was closed for refurbishment last week.")

FAMILIES = [*_PEOPLE_FAMILIES, *_PET_FAMILIES, *_FOOD_FAMILIES, _HEALTH, _TRAVEL, _SCHEDULE, _ROUTINE,
            _WORK, _EDUCATION, _HOME, _POSSESSIONS, _HOBBIES, _PREFERENCES, _DATES, _GOALS, _PERSONAL,
            _ACCOUNTS, _PLACES]


if __name__ == "__main__":
    raise SystemExit(main())
