"""Value vocabularies of the conversation-memory suite, split into dev and held-out.

Every value word here is absent from what the system was tuned on (the personalization
benchmark's generator, the retrieval set and the assistant's worked examples: the test
suite checks this token by token), and the held-out values are absent from dev, so a
held-out figure is on values no part of the system has seen.

Each pool is split by alternation (dev takes the even positions, held-out the odd),
so both splits draw from the same kind of word.
"""

from __future__ import annotations

from typing import Dict, Tuple

__all__ = ["KINDS", "ROLES", "RELATIONS", "vocab"]

_POOLS: Dict[str, str] = {
    "city": "Tampere Gdansk Ljubljana Arequipa Cuenca Tartu Plovdiv Kaunas Mombasa Nagoya Daejeon Hobart "
            "Winnipeg Halifax Tromso Aarhus Graz Brno Cluj Zadar Sapporo Cordoba Rosario Valparaiso Aberdeen "
            "Bilbao Salzburg Bratislava Trieste Oulu Wroclaw Maribor Stavanger Trujillo Loja Parnu Varna "
            "Klaipeda Kisumu Fukuoka Gwangju Launceston Regina Moncton Bodo Odense Linz Ostrava Sibiu Kobe "
            "Mendoza Antofagasta Dundee Girona Innsbruck Kosice Udine Poznan Turku Lausanne",
    "job": "beekeeper cartographer welder sommelier locksmith radiographer stonemason upholsterer paramedic "
           "surveyor taxidermist glazier hydrologist luthier archivist farrier bookbinder geologist ecologist "
           "actuary optometrist podiatrist cobbler blacksmith lifeguard auctioneer chiropractor stenographer "
           "meteorologist zookeeper thatcher roofer plasterer bricklayer",
    "pet": "hedgehog tarantula salamander budgie gerbil chameleon terrapin lovebird alpaca canary newt mynah "
           "cockatoo macaw degu jerboa llama donkey",
    "food": "laksa khachapuri feijoada tagine empanadas borscht ceviche gnocchi poutine pelmeni kimchi gumbo "
            "jambalaya biryani tamales pretzels",
    "instrument": "bassoon theremin marimba xylophone dulcimer didgeridoo balalaika bouzouki harpsichord "
                  "glockenspiel euphonium vibraphone kalimba ocarina zither bandoneon",
    "sport": "fencing curling rowing lacrosse handball archery orienteering hurling rugby judo karate taekwondo "
             "biathlon bobsleigh canoeing gymnastics wrestling",
    "language": "Estonian Amharic Basque Latvian Lithuanian Maltese Albanian Slovak Croatian Zulu Khmer "
                "Mongolian Armenian Uzbek Galician Romanian Bulgarian Serbian Slovenian Ukrainian",
    "name": "Anselm Bettina Delphine Eamon Fenella Gwendolyn Horatio Isolde Jasper Kasimir Ludmila Magnus "
            "Niamh Oswin Petronella Quentin Rosalind Sylvester Theodora Ulric Valentina Wilhelmina Xavier "
            "Yolanda Zebulon Ambrose Bronwen Cornelius Dorothea Florian Griselda Hamish Ingeborg Jolyon "
            "Katarina Leopold Mirabel Norbert Ottilie Peregrine Quincy Rupert Seraphina Tobias Vivian Wendell "
            "Ximena Zinnia Alaric Benedikt Calliope Desmond Eloise Fergus Gunnar Hortense Kester Lucasta "
            "Montague Nerys Orla Percival Romilly Sebastian Tamsin Umberto Verity Wolfgang Aurelio Berenice "
            "Casimir Drusilla Evadne Fabian Gideon Hesper Jethro Kerensa Lysander Marisol Nikolai Odalys "
            "Piers Rhiannon Silas Thaddeus Una Vesna",
}
KINDS: Tuple[str, ...] = tuple(_POOLS)

# Whom a third-person fact is about (not values: questions name them).
ROLES: Tuple[str, ...] = ("sister", "brother", "cousin", "aunt", "uncle", "neighbour", "boss", "flatmate",
                          "grandmother", "grandfather", "nephew", "niece", "godmother", "stepfather",
                          "landlord", "best friend", "mentor", "sister-in-law", "brother-in-law", "stepmother")
# "my <relation> <name>": the subjects that let one user hold 1,000 distinct facts.
RELATIONS: Tuple[str, ...] = ("friend", "colleague", "classmate", "teammate", "pen pal", "old roommate", "coach")


def vocab(split: str) -> Dict[str, Tuple[str, ...]]:
    """The value pools of ``split`` ('dev' or 'heldout'): kind -> values."""
    if split not in ("dev", "heldout"):
        raise ValueError(f"[conversation] split must be 'dev' or 'heldout' but got {split!r}.")
    start = 0 if split == "dev" else 1
    return {k: tuple(v.split()[start::2]) for k, v in _POOLS.items()}
