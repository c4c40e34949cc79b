"""The reader's own value pools, names and sentence templates.

Nothing here is taken from the conversation suite (``benchmarks/conversation``): the
values, names and phrasings are this module's, and ``tests/test_reader_data.py`` checks
that no value of either of the suite's splits and no held-out template appears in the
generated data.

Templates: ``{S}`` subject of a statement ("I", "My sister", "Hedda"), ``{Q}`` the same
subject in a question ("I", "my sister"), ``{A}`` in the answer ("You", "Your sister");
``{P}`` / ``{q}`` / ``{a}`` their possessives ("My" / "my" / "Your"); ``{o}`` the object
form ("me", "my sister"); ``{v}`` the value, ``{av}`` it with its article ("an owl").
``{x|y}`` picks ``x`` for the first person (and "You" in answers) and ``y`` for anyone else.
"""

from __future__ import annotations

from typing import Dict, Tuple

POOLS: Dict[str, Tuple[str, ...]] = {
    "city": ("Coimbra", "Braga", "Leuven", "Ghent", "Utrecht", "Groningen", "Bergen", "Uppsala", "Lund",
             "Tallinn", "Riga", "Gdynia", "Debrecen", "Szeged", "Timisoara", "Rijeka", "Ohrid", "Patras",
             "Heraklion", "Izmir", "Tabriz", "Shiraz", "Pune", "Mysore", "Kochi", "Madurai", "Penang",
             "Cebu", "Davao", "Danang", "Cape Town", "Durban", "Accra", "Kumasi", "Dakar", "Quito",
             "Medellin", "Cali", "Montevideo", "Asuncion", "Oaxaca", "Puebla", "Halmstad", "Esbjerg",
             "Aalborg", "Tampico", "Perth", "Adelaide", "Wellington", "Dunedin", "Galway", "Cork",
             "Swansea", "Exeter", "Nantes", "Grenoble", "Freiburg", "Leipzig", "Bologna", "Verona"),
    "job": ("pharmacist", "architect", "dentist", "baker", "florist", "tailor", "translator", "librarian",
            "veterinarian", "midwife", "accountant", "electrician", "plumber", "mechanic", "potter",
            "jeweller", "photographer", "journalist", "chemist", "engineer", "firefighter", "pilot",
            "sculptor", "gardener", "butcher", "barista", "cartoonist", "economist", "illustrator",
            "nurse", "carpenter", "surgeon", "lawyer", "teacher", "chef", "optician", "pianist",
            "programmer", "data analyst", "social worker", "flight attendant", "bus driver"),
    "pet": ("cat", "dog", "rabbit", "hamster", "parrot", "goldfish", "tortoise", "ferret", "guinea pig",
            "iguana", "pony", "goat", "chinchilla", "axolotl", "gecko", "cockatiel", "duck", "owl",
            "hermit crab", "corn snake", "rat", "mouse", "bearded dragon", "koi"),
    "food": ("lasagne", "paella", "risotto", "sushi", "ramen", "curry", "dumplings", "pancakes", "falafel",
             "moussaka", "goulash", "pho", "burritos", "couscous", "pierogi", "shakshuka", "waffles",
             "fish and chips", "pad thai", "spaghetti", "tacos", "hummus", "dim sum", "lentil soup"),
    "instrument": ("violin", "cello", "piano", "guitar", "flute", "trumpet", "saxophone", "clarinet",
                   "drums", "harp", "banjo", "ukulele", "accordion", "trombone", "oboe", "mandolin",
                   "sitar", "tuba", "viola", "double bass", "bagpipes", "harmonica"),
    "sport": ("tennis", "football", "basketball", "volleyball", "swimming", "cycling", "climbing", "skiing",
              "surfing", "badminton", "squash", "hockey", "boxing", "baseball", "cricket", "golf",
              "sailing", "snowboarding", "table tennis", "netball", "water polo", "kickboxing"),
    "language": ("Spanish", "French", "German", "Italian", "Portuguese", "Dutch", "Swedish", "Norwegian",
                 "Danish", "Finnish", "Polish", "Czech", "Hungarian", "Greek", "Turkish", "Japanese",
                 "Korean", "Mandarin", "Hindi", "Arabic", "Swahili", "Welsh", "Icelandic", "Tagalog"),
    "colour": ("teal", "crimson", "mustard yellow", "navy blue", "lilac", "olive green", "coral", "burgundy",
               "turquoise", "lavender", "charcoal", "peach", "emerald", "scarlet", "indigo", "amber"),
    "hobby": ("knitting", "chess", "birdwatching", "pottery", "baking", "hiking", "painting", "gardening",
              "fishing", "photography", "woodworking", "calligraphy", "stargazing", "origami", "sewing",
              "rock collecting", "crosswords", "jigsaw puzzles", "kayaking", "bouldering"),
}

NAMES: Tuple[str, ...] = (
    "Aiko", "Bram", "Carys", "Dario", "Elin", "Femi", "Greta", "Hugo", "Ines", "Joris", "Kaito", "Lena",
    "Mateo", "Nadia", "Otto", "Priya", "Rafael", "Sanne", "Tomas", "Ulla", "Vera", "Wim", "Yara", "Zofia",
    "Amir", "Bea", "Cyril", "Dina", "Emre", "Freya", "Goran", "Hana", "Ivo", "Jana", "Kofi", "Lior",
    "Maren", "Nils", "Oona", "Pavel", "Rosa", "Sven", "Tala", "Umar", "Vida", "Wanda", "Yusuf", "Zeno",
    "Ada", "Bruno", "Cleo", "Esme", "Farid", "Hedda", "Ilan", "Juno", "Karim", "Lotte", "Milo", "Noor",
    "Olek", "Pia", "Rui", "Saskia", "Timo", "Uma", "Viggo", "Astrid", "Bojan", "Celeste", "Dmitri",
)

# whom a third-person fact is about: "my <role>"
ROLES: Tuple[str, ...] = ("sister", "brother", "mother", "father", "cousin", "aunt", "uncle", "daughter", "son",
                          "wife", "husband", "partner", "grandmother", "neighbour", "boss", "roommate",
                          "friend", "colleague", "teacher", "godson", "stepsister", "dentist's receptionist")

# kind -> (statements, questions, answers); the answer templates name the value once
SLOTS: Dict[str, Tuple[Tuple[str, ...], Tuple[str, ...], Tuple[str, ...]]] = {
    "city": (("{S} {live|lives} in {v}.", "{S} {am|is} based in {v}.", "{P} home is in {v}.",
              "{S} {have|has} been living in {v} for a few years.", "{S} {rent|rents} a flat in {v}."),
             ("Where {do|does} {Q} live?", "Which city {do|does} {Q} live in?", "Where is {q} home?",
              "What city {am|is} {Q} based in?", "In which town {do|does} {Q} live?"),
             ("{A} {live|lives} in {v}.", "{a} home is in {v}.")),
    "job": (("{S} {work|works} as {av}.", "{S} {have|has} worked as {av} for years.", "{S} {have|has} a job as {av}."),
            ("What {do|does} {Q} do for a living?", "What is {q} job?", "What {do|does} {Q} do for work?",
             "What is {q} profession?", "What kind of work {do|does} {Q} do?"),
            ("{A} {work|works} as {av}.",)),
    "pet": (("{S} {have|has} {av}.", "{S} {own|owns} {av}.", "{S} {keep|keeps} {av} as a pet.",
             "{S} {look|looks} after {av} at home."),
            ("What pet {do|does} {Q} have?", "What kind of animal {do|does} {Q} keep?",
             "Which pet {do|does} {Q} own?", "What is {q} pet?"),
            ("{A} {have|has} {av}.",)),
    "food": (("{P} favourite food is {v}.", "{P} favorite dish is {v}.",
              "{S} {love|loves} {v} more than any other food.", "Nothing beats {v} for {o}."),
             ("What is {q} favourite food?", "What {do|does} {Q} like to eat most?",
              "Which dish {do|does} {Q} love most?", "What is {q} favorite meal?"),
             ("{a} favourite food is {v}.", "{A} {love|loves} {v} most.")),
    "instrument": (("{S} can play the {v}.", "{S} {am|is} learning the {v}.",
                    "{S} {practise|practises} the {v} every evening.", "{P} instrument is the {v}."),
                   ("What {do|does} {Q} play, musically?", "Which instrument can {Q} play?",
                    "What is {q} instrument?"),
                   ("{A} can play the {v}.", "{a} instrument is the {v}.")),
    "sport": (("{S} {play|plays} {v} at weekends.", "{S} {am|is} really into {v}.",
               "{S} {train|trains} for {v} twice a week.", "{P} sport is {v}."),
              ("Which sport {do|does} {Q} do?", "What sport {do|does} {Q} play?", "What is {q} sport?"),
              ("{a} sport is {v}.", "{A} {are|is} into {v}.")),
    "language": (("{S} {speak|speaks} {v}.", "{S} {am|is} fluent in {v}.", "{S} {grew|grew} up speaking {v}."),
                 ("Which language {do|does} {Q} speak?", "What language {am|is} {Q} fluent in?",
                  "What language {do|does} {Q} know?"),
                 ("{A} {speak|speaks} {v}.",)),
    "colour": (("{P} favourite colour is {v}.", "{S} {like|likes} {v} best of all colours."),
               ("What is {q} favourite colour?", "Which colour {do|does} {Q} like best?"),
               ("{a} favourite colour is {v}.",)),
    "hobby": (("{S} {enjoy|enjoys} {v} in {p} free time.", "{P} hobby is {v}.",
               "{S} {spend|spends} most weekends on {v}."),
              ("What is {q} hobby?", "What {do|does} {Q} do in {p} free time?", "What hobby {do|does} {Q} have?"),
              ("{a} hobby is {v}.", "{A} {enjoy|enjoys} {v}.")),
}

# the same facts said in passing inside a chatty first-person message
PASSING: Dict[str, Tuple[str, ...]] = {
    "city": ("the weather here in {v} has been grim", "life here in {v} is getting expensive",
             "my street here in {v} is so noisy", "{v} is home, but the winters are long"),
    "job": ("being {av} is tiring but I love it", "another long shift as {av} today",
            "my work as {av} kept me late", "people never believe how busy {av} gets"),
    "pet": ("my {v} woke me up at dawn", "I had to take my {v} to the vet",
            "my {v} chewed through a cable", "feeding my {v} is the first thing I do"),
    "food": ("I could eat {v} every single day", "I made {v} again, my absolute favourite food",
             "nothing cheers me up like a plate of {v}, my favourite"),
    "instrument": ("my {v} lesson ran over", "I practised the {v} for two hours",
                   "my neighbours complained about my {v} playing"),
    "sport": ("my {v} match got rained off", "I pulled a muscle at {v} practice",
              "our {v} team finally won"),
    "language": ("I spoke {v} with my grandparents all evening", "my {v} is getting rusty",
                 "I read a novel in {v}, my first language"),
    "hobby": ("I spent all afternoon on {v}", "{v} is the only thing that relaxes me",
              "I bought supplies for {v}"),
}
OPENERS: Tuple[str, ...] = ("Long day.", "Ugh, what a week.", "Quick update from me!", "Not much new here.",
                            "Hope you are well.", "So tired today.", "Funny story.", "Guess what.",
                            "Morning!", "Rainy Sunday here.", "Ha, ok.", "Right, so.")
CLOSERS: Tuple[str, ...] = ("", "", " Anyway.", " Such is life.", " Can't complain.", " Oh well.",
                            " Talk later.", " Ha.")
CONNECTORS: Tuple[str, ...] = ("Anyway, {x}.", "By the way, {x}.", "Also, {x}.", "{X}, which is nice.",
                               "{X}, believe it or not.", "Honestly, {x}.", "{X}.")

# a change of value: said after the old one, the wording shows it is newer
CHANGES: Dict[str, Tuple[str, ...]] = {
    "city": ("{S} moved to {v} last month.", "{S} {have|has} just moved to {v}.", "{S} {live|lives} in {v} now.",
             "These days {s} {live|lives} in {v}.", "{S} relocated to {v} recently."),
    "job": ("{S} {am|is} now working as {av}.", "{S} switched careers and now {work|works} as {av}.",
            "{S} started a new job as {av}.", "These days {s} {work|works} as {av}."),
    "pet": ("{S} just adopted {av}.", "{S} {have|has} {av} now.", "Recently {s} got {av}."),
    "food": ("Lately {p} favourite food is {v}.", "These days {p} favourite food is {v}.",
             "{P} new favourite food is {v}."),
    "instrument": ("{S} switched to the {v} this year.", "These days {s} {practise|practises} the {v}."),
    "sport": ("{S} took up {v} instead.", "{P} sport is {v} now.", "These days {s} {am|is} into {v}."),
    "language": ("{S} {am|is} now learning {v} instead.",),
    "colour": ("{P} favourite colour is {v} now.", "Lately {p} favourite colour is {v}."),
    "hobby": ("{S} gave that up and {am|is} into {v} now.", "These days {p} hobby is {v}."),
}
OLD: Tuple[str, ...] = ("{X}.", "{X}.", "{X}.", "Back then, {x}.")
CORRECTIONS: Tuple[str, ...] = ("Actually, {x}, not {old}.", "Sorry, I got that wrong: {x}.",
                                "Correction: {x}. I said {old} by mistake.", "Wait, no, {x}. Not {old}.")

# events with a date: (statement, question, answer) for the temporal questions
EVENTS: Dict[str, Tuple[Tuple[str, str, str], ...]] = {
    "job": (("{S} started a new job as {av} today.", "When did {Q} start working as {av}?",
             "{A} started working as {av} on {d}."),
            ("Today was {p} first day as {av}.", "When did {Q} start the job as {av}?",
             "{A} started as {av} on {d}.")),
    "pet": (("{S} adopted {av} this morning.", "When did {Q} adopt {p} {v}?", "{A} adopted {p} {v} on {d}."),
            ("{S} brought home {av} today.", "When did {Q} get {p} {v}?", "{A} got {p} {v} on {d}.")),
    "city": (("{S} moved to {v} today.", "When did {Q} move to {v}?", "{A} moved to {v} on {d}."),),
    "instrument": (("{S} had {p} first {v} lesson today.", "When did {Q} start learning the {v}?",
                    "{A} started learning the {v} on {d}."),),
    "sport": (("{S} joined a {v} club today.", "When did {Q} join the {v} club?",
               "{A} joined the {v} club on {d}."),),
    "hobby": (("{S} took up {v} today.", "When did {Q} take up {v}?", "{A} took up {v} on {d}."),),
}

# lists: (plural noun, item statement, question, answer)
LISTS: Dict[str, Tuple[str, Tuple[str, ...], Tuple[str, ...], str]] = {
    "pet": ("pets", ("{S} {have|has} {items}.", "{S} also {have|has} {items}.", "{S} got {items} too."),
            ("Which pets {do|does} {Q} have?", "What animals {do|does} {Q} own?", "List all of {q} pets."),
            "{A} {have|has} {items}."),
    "instrument": ("instruments", ("{S} can play {items}.", "{S} can also play {items}."),
                   ("Which instruments can {Q} play?", "What instruments {do|does} {Q} know how to play?"),
                   "{A} can play {items}."),
    "language": ("languages", ("{S} {speak|speaks} {items}.", "{S} also {speak|speaks} {items}."),
                 ("Which languages {do|does} {Q} speak?", "What languages {do|does} {Q} know?"),
                 "{A} {speak|speaks} {items}."),
    "sport": ("sports", ("{S} {play|plays} {items}.", "{S} also {do|does} {items}."),
              ("What sports {do|does} {Q} play?", "Which sports {am|is} {Q} into?"),
              "{A} {do|does} {items}."),
}
NAME_STATEMENTS: Tuple[str, ...] = ("My {r} is called {n}.", "My {r}'s name is {n}.", "{n} is my {r}.",
                                    "I have a {r} named {n}.")
NAME_QUESTIONS: Tuple[str, ...] = ("What is my {r}'s name?", "What is my {r} called?", "Who is my {r}?")
NAME_ANSWERS: Tuple[str, ...] = ("Your {r} is called {n}.", "Your {r}'s name is {n}.")

QUESTION_WRAPPERS: Tuple[str, ...] = ("{x}", "{x}", "{x}", "Quick question: {x}", "Remind me, {y}", "Hey, {y}",
                                      "Do you remember this? {x}", "{x} I forgot.", "Can you tell me: {y}")
ABSTAIN_QUESTIONS: Tuple[str, ...] = SLOTS["city"][1] + SLOTS["job"][1][:2] + SLOTS["pet"][1][:2]
