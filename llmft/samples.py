"""Seeded synthetic datasets for the three tasks, in the hub datasets' schemas.

Written from templates by llmft (no row comes from the real datasets), so the tiny-cpu configs
and the tests run offline. Each task has train (3000 rows), valid (200) and test (200) splits,
all drawn from one seeded stream and de-duplicated across splits, so no valid or test input
also appears in train. The sentences are templated but varied (several phrasings per slot,
shuffled clause order, invented names), so a small model can learn the mapping within minutes
on a CPU and visibly improve.

- viggo: `gem_id, meaning_representation, target, references` over ViGGO's 9 dialogue-act
  functions and 14 attributes (in canonical order inside each meaning representation).
- sql: `question, context, answer` with generated CREATE TABLE schemas; every answer is valid
  SQLite over its schema (WHERE, COUNT, MAX/MIN/AVG/SUM, ORDER BY ... LIMIT, comparisons).
- gsm8k: `question, answer`, multi-step arithmetic with `<<a*b=c>>` calculator annotations and a
  final `#### N` line.

Bump `SAMPLES_VERSION` whenever the generated rows change (it is part of the cache key).
"""

from __future__ import annotations

import functools
import random
from typing import Callable

SAMPLES_VERSION = 1
SPLIT_SIZES = {"train": 3000, "valid": 200, "test": 200}
SAMPLE_TASKS = ("viggo", "sql", "gsm8k")


def generate_rows(task: str, split: str, seed: int = 0) -> list[dict]:
    """The `split` (train | valid | test) of llmft's synthetic `task` dataset; deterministic."""
    if task not in SAMPLE_TASKS:
        raise ValueError(f"no sample data for task {task!r}; there is sample data for {', '.join(SAMPLE_TASKS)}")
    if split not in SPLIT_SIZES:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLIT_SIZES)}")
    rows = _all_splits(task, seed)[split]
    # Fresh copies: callers may mutate rows.
    return [{k: (list(v) if isinstance(v, list) else v) for k, v in row.items()} for row in rows]


@functools.lru_cache(maxsize=8)
def _all_splits(task: str, seed: int) -> dict[str, list[dict]]:
    make_row, key_fields = _GENERATORS[task]
    rng = random.Random(f"llmft-samples/{task}/{seed}")
    seen: set[str] = set()
    out: dict[str, list[dict]] = {}
    for split, size in SPLIT_SIZES.items():
        rows: list[dict] = []
        attempts = 0
        while len(rows) < size:
            attempts += 1
            if attempts > 50 * size:
                raise RuntimeError(f"sample generator for {task} keeps repeating itself")
            row = make_row(rng)
            key = "\n".join(row[f] for f in key_fields)  # the model's input
            if key in seen:
                continue
            seen.add(key)
            rows.append(row)
        out[split] = rows
    if task == "viggo":
        for split, rows in out.items():
            for i, row in enumerate(rows):
                row["gem_id"] = f"viggo-{split}-{i}"
    return out


def _pick(rng: random.Random, options: list[str] | tuple[str, ...]) -> str:
    return options[rng.randrange(len(options))]


def _a(phrase: str) -> str:
    return ("an " if phrase[0].lower() in "aeiou" else "a ") + phrase


def _join(items: list[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


# ---------------------------------------------------------------------------------- viggo

ATTRIBUTES = ("name", "release_year", "exp_release_date", "developer", "genres",
              "player_perspective", "platforms", "esrb", "rating", "has_multiplayer",
              "available_on_steam", "has_linux_release", "has_mac_release", "specifier")
FUNCTIONS = ("inform", "request", "give_opinion", "confirm", "verify_attribute", "suggest",
             "request_explanation", "recommend", "request_attribute")

_NAME_FIRST = ("Crimson", "Iron", "Silent", "Hollow", "Neon", "Frozen", "Golden", "Shattered",
               "Distant", "Wild", "Broken", "Hidden", "Rusty", "Lunar", "Solar", "Emerald",
               "Burning", "Quiet", "Savage", "Velvet", "Copper", "Phantom", "Electric", "Ancient")
_NAME_SECOND = ("Harbor", "Tide", "Kingdom", "Frontier", "Circuit", "Dungeon", "Horizon", "Legends",
                "Empire", "Voyage", "Outpost", "Requiem", "Garden", "Citadel", "Drift", "Echoes",
                "Forge", "Odyssey", "Rally", "Signal", "Skies", "Tactics", "Valley", "Warden")
_NAME_SUFFIX = ("", "", "", "", " II", " III", " 2", " Remastered", ": Origins", ": Reborn")
_DEVELOPERS = ("Northwind Studios", "Bluefin Games", "Quarry Interactive", "Lanternworks",
               "Pixel Harbor", "Redcliff Software", "Oakleaf Entertainment", "Tinfoil Labs",
               "Moonpath Studios", "Granite Games", "Starling Interactive", "Crowbar Collective")
_GENRES = ("action", "adventure", "role-playing", "strategy", "puzzle", "platformer", "shooter",
           "simulation", "racing", "sport", "fighting", "tactical", "real-time strategy",
           "turn-based strategy", "hack-and-slash", "survival", "driving/racing", "MMORPG")
_PERSPECTIVES = ("first person", "third person", "side view", "bird view")
_PLATFORMS = ("PC", "PlayStation", "Xbox", "Nintendo Switch", "Nintendo")
_ESRB = ("E (for Everyone)", "E 10+ (for Everyone 10 and Older)", "T (for Teen)", "M (for Mature)")
_RATINGS = ("excellent", "good", "average", "poor")
_SPECIFIERS = ("exciting", "boring", "addictive", "relaxing", "challenging", "creative",
               "funny", "engaging", "frustrating", "immersive")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December")
_YESNO = ("yes", "no")
_LIST_ATTRS = ("genres", "platforms")


def _game_name(rng: random.Random) -> str:
    return f"{_pick(rng, _NAME_FIRST)} {_pick(rng, _NAME_SECOND)}{_pick(rng, _NAME_SUFFIX)}"


def _viggo_value(rng: random.Random, attr: str) -> str | list[str]:
    if attr == "name":
        return _game_name(rng)
    if attr == "release_year":
        return str(rng.randint(1989, 2021))
    if attr == "exp_release_date":
        return f"{_pick(rng, _MONTHS)} {rng.randint(1, 28)}, {rng.randint(2022, 2026)}"
    if attr == "developer":
        return _pick(rng, _DEVELOPERS)
    if attr == "genres":
        return rng.sample(_GENRES, rng.choice((1, 1, 2, 2, 3)))
    if attr == "player_perspective":
        return _pick(rng, _PERSPECTIVES)
    if attr == "platforms":
        return rng.sample(_PLATFORMS, rng.choice((1, 2, 2, 3)))
    if attr == "esrb":
        return _pick(rng, _ESRB)
    if attr == "rating":
        return _pick(rng, _RATINGS)
    if attr == "specifier":
        return _pick(rng, _SPECIFIERS)
    return _pick(rng, _YESNO)  # the has_*/available_* booleans


def _clause(rng: random.Random, attr: str, value) -> str:
    """A phrase about one attribute, for use after the game's name ("... that is ...")."""
    v = _join(value) if isinstance(value, list) else value
    options: dict[str, tuple[str, ...]] = {
        "release_year": (f"was released in {v}", f"came out in {v}", f"first appeared in {v}"),
        "exp_release_date": (f"is expected to release on {v}", f"is due out on {v}",
                             f"should launch on {v}"),
        "developer": (f"was developed by {v}", f"was made by {v}", f"comes from {v}"),
        "genres": (f"is {_a(v)} game", f"mixes {v} gameplay" if len(value) > 1 else f"is {_a(v)} title",
                   f"belongs to the {v} genre" if len(value) == 1 else f"combines the {v} genres"),
        "player_perspective": (f"is played from {_a(v)} perspective", f"uses {_a(v)} camera",
                               f"offers {_a(v)} view"),
        "platforms": (f"is available on {v}", f"can be played on {v}", f"runs on {v}"),
        "esrb": (f"is rated {v}", f"carries an ESRB rating of {v}", f"has the ESRB rating {v}"),
        "rating": (f"got {v} reviews", f"was rated {v} by players", f"has {_a(v)} reputation"),
        "has_multiplayer": ("supports multiplayer", "has a multiplayer mode", "can be played with friends")
        if v == "yes" else ("is single-player only", "has no multiplayer", "cannot be played with friends"),
        "available_on_steam": ("is on Steam", "can be bought on Steam", "is sold on Steam")
        if v == "yes" else ("is not on Steam", "cannot be found on Steam", "is missing from Steam"),
        "has_linux_release": ("has a Linux version", "runs on Linux", "was released for Linux")
        if v == "yes" else ("has no Linux version", "does not run on Linux", "was never released for Linux"),
        "has_mac_release": ("has a Mac version", "runs on Mac", "was released for Mac")
        if v == "yes" else ("has no Mac version", "does not run on Mac", "was never released for Mac"),
        "specifier": (f"is {v}", f"feels {v}", f"is really {v}"),
    }
    return _pick(rng, options[attr])


def _mr(function: str, values: dict[str, str | list[str]]) -> str:
    parts = []
    for attr in ATTRIBUTES:  # canonical order, whatever order the sentence used
        if attr in values:
            v = values[attr]
            parts.append(f"{attr}[{', '.join(v) if isinstance(v, list) else v}]")
    return f"{function}({', '.join(parts)})"


def _choose(rng: random.Random, pool: tuple[str, ...], low: int, high: int) -> list[str]:
    return rng.sample(pool, rng.randint(low, high))


_DESCRIBABLE = tuple(a for a in ATTRIBUTES if a not in ("name", "specifier"))


def _viggo_row(rng: random.Random) -> dict:
    function = rng.choices(FUNCTIONS, weights=(6, 2, 3, 2, 2, 2, 2, 2, 1))[0]
    sentence, values = _VIGGO_FUNCTIONS[function](rng)
    sentence = sentence[0].upper() + sentence[1:]
    return {"gem_id": "", "meaning_representation": _mr(function, values), "target": sentence,
            "references": [sentence]}


def _values(rng: random.Random, attrs) -> dict:
    return {a: _viggo_value(rng, a) for a in attrs}


def _described(rng: random.Random, values: dict, attrs: list[str]) -> str:
    clauses = [_clause(rng, a, values[a]) for a in attrs]
    rng.shuffle(clauses)
    return _join(clauses)


def _inform(rng):
    extra = _choose(rng, _DESCRIBABLE, 1, 4)
    values = _values(rng, ["name", *extra])
    opener = _pick(rng, ("{n} {c}.", "{n} is a game that {c}.", "Let me tell you about {n}: it {c}.",
                         "Here is what I know about {n}. It {c}."))
    return opener.format(n=values["name"], c=_described(rng, values, extra)), values


def _request(rng):
    extra = _choose(rng, ("release_year", "genres", "player_perspective", "platforms", "has_multiplayer",
                          "developer", "esrb"), 1, 2)
    values = _values(rng, ["specifier", *extra])
    opener = _pick(rng, ("Is there a {s} game that {c}?", "Do you know of any {s} game that {c}?",
                         "Can you name a {s} game that {c}?", "I am looking for a {s} game that {c}. Any ideas?"))
    return opener.format(s=values["specifier"], c=_described(rng, values, extra)), values


def _give_opinion(rng):
    extra = _choose(rng, ("genres", "player_perspective", "developer", "platforms", "has_multiplayer",
                          "release_year"), 0, 2)
    values = _values(rng, ["name", "rating", *extra])
    feeling = {"excellent": ("I loved", "I think the world of", "I really enjoyed"),
               "good": ("I liked", "I had a good time with", "I enjoyed"),
               "average": ("I thought it was just okay playing", "I felt lukewarm about",
                           "I did not mind"),
               "poor": ("I disliked", "I was disappointed by", "I did not enjoy")}
    start = f"{_pick(rng, feeling[values['rating']])} {values['name']}, which is {values['rating']} in my book"
    if extra:
        start += f"; it {_described(rng, values, extra)}"
    return start + ".", values


def _confirm(rng):
    extra = _choose(rng, ("release_year", "developer", "genres", "platforms", "player_perspective"), 1, 2)
    values = _values(rng, ["name", *extra])
    opener = _pick(rng, ("You mean {n}, the one that {c}?", "Are you talking about {n}, which {c}?",
                         "Just to be sure: {n} is the game that {c}, right?"))
    return opener.format(n=values["name"], c=_described(rng, values, extra)), values


def _verify_attribute(rng):
    attr = _pick(rng, ("genres", "player_perspective", "platforms", "has_multiplayer", "esrb"))
    values = _values(rng, ["name", "rating", attr])
    opener = _pick(rng, ("You said {n} was {r}. Do you usually like a game that {c}?",
                         "Since you found {n} {r}, do you enjoy any game that {c}?",
                         "You rated {n} as {r}. Are you generally into a game that {c}?"))
    return opener.format(n=values["name"], r=values["rating"], c=_described(rng, values, [attr])), values


def _suggest(rng):
    extra = _choose(rng, ("genres", "player_perspective", "platforms", "developer", "release_year"), 1, 2)
    values = _values(rng, ["name", *extra])
    opener = _pick(rng, ("Have you tried {n}? It {c}.", "What about {n}? It {c}.",
                         "Maybe you would like {n}, which {c}."))
    return opener.format(n=values["name"], c=_described(rng, values, extra)), values


def _request_explanation(rng):
    attr = _pick(rng, ("genres", "player_perspective", "has_multiplayer", "platforms", "developer"))
    values = _values(rng, ["rating", attr])
    opener = _pick(rng, ("What makes a game that {c} so {r} for you?",
                         "Why do you find a game that {c} {r}?",
                         "Could you explain why a game that {c} seems {r} to you?"))
    return opener.format(r=values["rating"], c=_described(rng, values, [attr])), values


def _recommend(rng):
    extra = _choose(rng, ("genres", "player_perspective", "platforms", "has_multiplayer", "developer",
                          "available_on_steam"), 1, 3)
    values = _values(rng, ["name", *extra])
    opener = _pick(rng, ("If you like a game that {c}, you should play {n}.",
                         "I recommend {n}, since it {c}.", "You might enjoy {n}: it {c}."))
    return opener.format(n=values["name"], c=_described(rng, values, extra)), values


_ASK = {
    "release_year": ("Which years of games do you like most?", "Do you prefer older or newer games, by release year?"),
    "developer": ("Which game developer do you like best?", "Is there a studio whose games you always buy?"),
    "genres": ("What kind of genres do you enjoy?", "Which genre of game do you play most?"),
    "player_perspective": ("What player perspective do you prefer in games?",
                           "Do you like a particular camera perspective when you play?"),
    "platforms": ("Which platform do you usually play on?", "What gaming platform do you own?"),
    "esrb": ("Which ESRB ratings do you look for in a game?", "Do you care about a game's ESRB rating?"),
    "has_multiplayer": ("Do you prefer games with multiplayer?", "Do you like to play with others online?"),
    "available_on_steam": ("Do you buy your games on Steam?", "Is it important that a game is on Steam?"),
    "has_linux_release": ("Do you play games on Linux?", "Does a game need a Linux version for you?"),
    "has_mac_release": ("Do you play games on a Mac?", "Does a game need a Mac version for you?"),
    "specifier": ("What kind of games do you find most fun?", "How would you describe your favourite games?"),
}


def _request_attribute(rng):
    attr = _pick(rng, tuple(_ASK))
    prefix = _pick(rng, ("", "", "Tell me, ", "I wonder: ", "Out of curiosity, "))
    question = _pick(rng, _ASK[attr])
    if prefix:
        question = prefix + question[0].lower() + question[1:]
    return question, {attr: ""}


_VIGGO_FUNCTIONS: dict[str, Callable] = {
    "inform": _inform, "request": _request, "give_opinion": _give_opinion, "confirm": _confirm,
    "verify_attribute": _verify_attribute, "suggest": _suggest,
    "request_explanation": _request_explanation, "recommend": _recommend,
    "request_attribute": _request_attribute,
}

# ------------------------------------------------------------------------------------ sql

# Domains: (table stem, entity, plural, text columns {column: values}, numeric columns {column: (low, high)})
_SQL_DOMAINS = (
    ("players", "player", "players",
     {"name": ("Ana Ruiz", "Tom Berg", "Lee Park", "Sam Cole", "Ivo Petrov", "Kai Moreno"),
      "team": ("Falcons", "Rovers", "Comets", "Giants", "Pilots"),
      "position": ("guard", "forward", "center", "keeper", "striker"),
      "nationality": ("Spain", "Norway", "Korea", "Canada", "Brazil", "Japan")},
     {"age": (18, 38), "goals": (0, 40), "games": (1, 90)}),
    ("ships", "ship", "ships",
     {"name": ("Aurora", "Meridian", "Sea Lark", "Pioneer", "Kestrel", "Orca"),
      "port": ("Lisbon", "Oslo", "Halifax", "Mombasa", "Busan"),
      "type": ("tanker", "ferry", "trawler", "cargo", "yacht"),
      "flag": ("Malta", "Panama", "Liberia", "Greece", "Chile")},
     {"tonnage": (300, 90000), "crew": (3, 120), "built": (1960, 2022)}),
    ("employees", "employee", "employees",
     {"name": ("Mia Chen", "Owen Hart", "Zoe Diaz", "Raj Patel", "Ella Stone", "Noah Kim"),
      "department": ("sales", "finance", "research", "support", "legal"),
      "city": ("Austin", "Leeds", "Lyon", "Pune", "Perth"),
      "title": ("manager", "analyst", "engineer", "clerk", "director")},
     {"salary": (30000, 150000), "years": (0, 35), "projects": (0, 25)}),
    ("albums", "album", "albums",
     {"title": ("Blue Hours", "Paper Moon", "Low Tide", "Night Bus", "Static", "Wildflower"),
      "artist": ("The Tarns", "Ola Lind", "Velvet Echo", "Juno Ray", "Dusty Roads"),
      "label": ("Northern", "Sunday", "Lantern", "Ironwood"),
      "genre": ("rock", "jazz", "folk", "pop", "electronic")},
     {"year": (1965, 2023), "tracks": (6, 22), "sales": (1000, 900000)}),
    ("races", "race", "races",
     {"circuit": ("Monza Park", "Red Hill", "Lakeside", "Sand Bay", "Eagle Rock"),
      "winner": ("Max Adler", "Rita Nunes", "Leo Sato", "Ida Falk", "Marco Bell"),
      "team": ("Arrow", "Bolt", "Vortex", "Summit", "Nova"),
      "country": ("Italy", "Sweden", "Portugal", "Japan", "Mexico")},
     {"laps": (40, 78), "round": (1, 22), "season": (1990, 2023)}),
    ("schools", "school", "schools",
     {"name": ("Hillcrest", "Riverside", "Oakwood", "Maple Grove", "Westfield"),
      "district": ("north", "south", "east", "west", "central"),
      "mascot": ("Owls", "Bears", "Hawks", "Wolves", "Lions"),
      "type": ("public", "private", "charter")},
     {"students": (120, 3500), "founded": (1850, 2015), "teachers": (10, 240)}),
    ("films", "film", "films",
     {"title": ("Glass River", "The Long Road", "Cold Light", "Small Hours", "Harbor Lights"),
      "director": ("Ada Moss", "Ben Okafor", "Cleo Varga", "Dan Reyes", "Eva Lund"),
      "studio": ("Paramount Hill", "Bright Star", "Crescent", "Stonegate"),
      "language": ("English", "French", "Korean", "Spanish", "Hindi")},
     {"year": (1950, 2023), "minutes": (70, 210), "budget": (1, 300)}),
    ("stations", "station", "stations",
     {"name": ("Elm Street", "Central", "Harbourside", "Airport", "Old Town"),
      "line": ("red", "blue", "green", "yellow", "orange"),
      "zone": ("A", "B", "C", "D"),
      "city": ("Dublin", "Porto", "Graz", "Tartu", "Bergen")},
     {"platforms": (1, 12), "opened": (1880, 2020), "passengers": (500, 90000)}),
)

_COLUMN_WORDS = {"name": "name", "team": "team", "position": "position", "nationality": "nationality",
                 "port": "home port", "type": "type", "flag": "flag", "department": "department",
                 "city": "city", "title": "title", "artist": "artist", "label": "label", "genre": "genre",
                 "circuit": "circuit", "winner": "winner", "country": "country", "district": "district",
                 "mascot": "mascot", "director": "director", "studio": "studio", "language": "language",
                 "line": "line", "zone": "zone", "age": "age", "goals": "number of goals", "games": "number of games",
                 "tonnage": "tonnage", "crew": "crew size", "built": "year built", "salary": "salary",
                 "years": "years of service", "projects": "number of projects", "year": "year",
                 "tracks": "number of tracks", "sales": "sales", "laps": "number of laps", "round": "round",
                 "season": "season", "students": "number of students", "founded": "founding year",
                 "teachers": "number of teachers", "minutes": "running time in minutes", "budget": "budget",
                 "platforms": "number of platforms", "opened": "opening year", "passengers": "daily passengers"}


def _sql_row(rng: random.Random) -> dict:
    stem, entity, plural, texts, numbers = _SQL_DOMAINS[rng.randrange(len(_SQL_DOMAINS))]
    table = rng.choice((f"{stem}_{rng.randint(1, 99)}", f"table_name_{rng.randint(1, 999)}", stem))
    text_cols = rng.sample(list(texts), rng.randint(2, len(texts)))
    num_cols = rng.sample(list(numbers), rng.randint(1, len(numbers)))
    columns = text_cols + num_cols
    rng.shuffle(columns)
    context = "CREATE TABLE {} ({})".format(
        table, ", ".join(f"{c} {'INTEGER' if c in numbers else 'VARCHAR'}" for c in columns))
    target, key = rng.sample(text_cols, 2)
    key_value = _pick(rng, texts[key])
    number = num_cols[0]
    low, high = numbers[number]
    threshold = rng.randint(low, high)
    w = _COLUMN_WORDS
    kind = rng.randrange(9)
    if kind == 0:
        question = _pick(rng, (f"What is the {w[target]} of the {entity} whose {w[key]} is {key_value}?",
                               f"Which {w[target]} has the {entity} with {w[key]} {key_value}?",
                               f"Name the {w[target]} for {w[key]} {key_value}."))
        answer = f"SELECT {target} FROM {table} WHERE {key} = '{key_value}'"
    elif kind == 1:
        question = _pick(rng, (f"How many {plural} have a {w[key]} of {key_value}?",
                               f"Count the {plural} whose {w[key]} is {key_value}.",
                               f"What is the number of {plural} with {w[key]} {key_value}?"))
        answer = f"SELECT COUNT(*) FROM {table} WHERE {key} = '{key_value}'"
    elif kind in (2, 3):
        fn, words = rng.choice((("MAX", ("highest", "largest", "maximum")), ("MIN", ("lowest", "smallest", "minimum")),
                                ("AVG", ("average",)), ("SUM", ("total",))))
        word = _pick(rng, words)
        question = _pick(rng, (f"What is the {word} {w[number]} of {plural} whose {w[key]} is {key_value}?",
                               f"Give the {word} {w[number]} for {w[key]} {key_value}."))
        answer = f"SELECT {fn}({number}) FROM {table} WHERE {key} = '{key_value}'"
    elif kind == 4:
        order, word = rng.choice((("DESC", "highest"), ("ASC", "lowest")))
        question = _pick(rng, (f"Which {entity} has the {word} {w[number]}? Give its {w[target]}.",
                               f"What is the {w[target]} of the {entity} with the {word} {w[number]}?"))
        answer = f"SELECT {target} FROM {table} ORDER BY {number} {order} LIMIT 1"
    elif kind == 5:
        op, word = rng.choice(((">", "greater than"), ("<", "less than"), (">=", "at least"), ("<=", "at most")))
        question = _pick(rng, (f"List the {w[target]} of {plural} with a {w[number]} {word} {threshold}.",
                               f"Which {w[target]} belongs to {plural} whose {w[number]} is {word} {threshold}?"))
        answer = f"SELECT {target} FROM {table} WHERE {number} {op} {threshold}"
    elif kind == 6:
        op, word = rng.choice(((">", "more than"), ("<", "fewer than")))
        question = f"How many {plural} with {w[key]} {key_value} have {word} {threshold} {w[number]}?"
        answer = f"SELECT COUNT(*) FROM {table} WHERE {key} = '{key_value}' AND {number} {op} {threshold}"
    elif kind == 7:
        question = _pick(rng, (f"What is the {w[number]} of the {entity} whose {w[key]} is {key_value}?",
                               f"Tell me the {w[number]} when the {w[key]} is {key_value}."))
        answer = f"SELECT {number} FROM {table} WHERE {key} = '{key_value}'"
    else:
        third = next((c for c in text_cols if c not in (target, key)), None)
        if third is None:
            question = f"List the distinct {w[target]} values of {plural} with {w[key]} {key_value}."
            answer = f"SELECT DISTINCT {target} FROM {table} WHERE {key} = '{key_value}'"
        else:
            third_value = _pick(rng, texts[third])
            question = (f"What is the {w[target]} of the {entity} with {w[key]} {key_value} "
                        f"and {w[third]} {third_value}?")
            answer = f"SELECT {target} FROM {table} WHERE {key} = '{key_value}' AND {third} = '{third_value}'"
    return {"question": question, "context": context, "answer": answer}


# ---------------------------------------------------------------------------------- gsm8k

_PEOPLE = ("Ava", "Ben", "Chloe", "Diego", "Emma", "Farid", "Grace", "Hugo", "Isla", "Jonas",
           "Kira", "Liam", "Maya", "Nina", "Omar", "Priya", "Quinn", "Rosa", "Sami", "Tara")
_ITEMS = (("apples", "apple"), ("stickers", "sticker"), ("marbles", "marble"), ("cookies", "cookie"),
          ("pencils", "pencil"), ("books", "book"), ("shells", "shell"), ("cards", "card"),
          ("stamps", "stamp"), ("eggs", "egg"))


def _calc(a: int, op: str, b: int) -> tuple[str, int]:
    if op == "/":
        assert a % b == 0, "the templates only divide evenly"
        result = a // b
    else:
        result = {"+": a + b, "-": a - b, "*": a * b}[op]
    return f"{a}{op}{b} = <<{a}{op}{b}={result}>>{result}", result


def _gsm_shop(rng):
    person = _pick(rng, _PEOPLE)
    items, item = _pick(rng, _ITEMS)
    count, price, other, other_price = rng.randint(2, 12), rng.randint(2, 15), rng.randint(2, 9), rng.randint(1, 9)
    paid = (count * price + other * other_price) // 10 * 10 + rng.choice((10, 20, 50))
    s1, cost1 = _calc(count, "*", price)
    s2, cost2 = _calc(other, "*", other_price)
    s3, total = _calc(cost1, "+", cost2)
    s4, change = _calc(paid, "-", total)
    question = (f"{person} buys {count} {items} for ${price} each and {other} bags for ${other_price} each. "
                f"{person} pays with ${paid}. How much change does {person} get?")
    answer = (f"The {items} cost {s1} dollars.\nThe bags cost {s2} dollars.\n"
              f"Altogether {person} spends {s3} dollars.\nThe change is {s4} dollars.\n#### {change}")
    return question, answer


def _gsm_share(rng):
    person, friend = rng.sample(_PEOPLE, 2)
    items, _ = _pick(rng, _ITEMS)
    groups, per_group = rng.randint(2, 9), rng.randint(3, 12)
    kept_share = rng.choice((2, 3, 4))
    given = groups * per_group
    start = given * kept_share
    s1, gave = _calc(start, "/", kept_share)
    s2, left = _calc(start, "-", gave)
    s3, per = _calc(gave, "/", groups)
    question = (f"{person} has {start} {items}. {person} gives 1/{kept_share} of them to {friend}, who shares "
                f"them equally among {groups} friends. How many {items} does each friend get?")
    answer = (f"{person} gives away {s1} {items}.\n{person} keeps {s2} {items}.\n"
              f"Each friend gets {s3} {items}.\n#### {per}")
    return question, answer


def _gsm_weeks(rng):
    person = _pick(rng, _PEOPLE)
    per_day, days, weeks, extra = rng.randint(2, 20), rng.randint(2, 7), rng.randint(2, 6), rng.randint(1, 30)
    s1, per_week = _calc(per_day, "*", days)
    s2, total = _calc(per_week, "*", weeks)
    s3, final = _calc(total, "+", extra)
    activity = _pick(rng, (("reads", "pages"), ("runs", "laps"), ("writes", "lines"), ("practises", "minutes")))
    question = (f"{person} {activity[0]} {per_day} {activity[1]} a day, {days} days a week. After {weeks} weeks, "
                f"{person} does {extra} more {activity[1]} in one extra session. How many {activity[1]} is that in all?")
    answer = (f"In one week {person} does {s1} {activity[1]}.\nIn {weeks} weeks that is {s2} {activity[1]}.\n"
              f"With the extra session it is {s3} {activity[1]}.\n#### {final}")
    return question, answer


def _gsm_compare(rng):
    a, b = rng.sample(_PEOPLE, 2)
    items, _ = _pick(rng, _ITEMS)
    base, times, fewer = rng.randint(3, 20), rng.randint(2, 5), rng.randint(1, 10)
    s1, b_count = _calc(base, "*", times)
    b_count_final = b_count - fewer
    s2, _ = _calc(b_count, "-", fewer)
    s3, total = _calc(base, "+", b_count_final)
    question = (f"{a} has {base} {items}. {b} has {fewer} fewer than {times} times as many {items} as {a}. "
                f"How many {items} do they have together?")
    answer = (f"{times} times as many as {a} is {s1} {items}.\n{b} has {s2} {items}.\n"
              f"Together they have {s3} {items}.\n#### {total}")
    return question, answer


def _gsm_savings(rng):
    person = _pick(rng, _PEOPLE)
    goal_item = _pick(rng, ("bike", "tablet", "guitar", "tent", "skateboard", "camera"))
    weekly, weeks, gift = rng.randint(5, 30), rng.randint(3, 12), rng.randint(10, 60)
    price = weekly * weeks + gift + rng.randint(5, 80)
    s1, saved = _calc(weekly, "*", weeks)
    s2, have = _calc(saved, "+", gift)
    s3, missing = _calc(price, "-", have)
    question = (f"{person} wants a {goal_item} that costs ${price}. {person} saves ${weekly} a week for {weeks} "
                f"weeks and gets ${gift} as a gift. How much more money does {person} need?")
    answer = (f"{person} saves {s1} dollars.\nWith the gift {person} has {s2} dollars.\n"
              f"{person} still needs {s3} dollars.\n#### {missing}")
    return question, answer


def _gsm_farm(rng):
    person = _pick(rng, _PEOPLE)
    hens, eggs_each, days, eaten, price = (rng.randint(3, 15), rng.randint(1, 3), rng.randint(2, 7),
                                           rng.randint(1, 5), rng.randint(1, 4))
    s1, per_day = _calc(hens, "*", eggs_each)
    eaten_total = eaten * days
    s2, laid = _calc(per_day, "*", days)
    s3, _ = _calc(eaten, "*", days)
    s4, sold = _calc(laid, "-", eaten_total)
    s5, money = _calc(sold, "*", price)
    question = (f"{person} has {hens} hens that each lay {eggs_each} eggs a day. Every day {person} eats {eaten} "
                f"eggs and sells the rest for ${price} each. How much money does {person} make in {days} days?")
    answer = (f"The hens lay {s1} eggs a day.\nIn {days} days they lay {s2} eggs.\n{person} eats {s3} eggs.\n"
              f"{person} sells {s4} eggs.\n{person} makes {s5} dollars.\n#### {money}")
    return question, answer


_GSM_TEMPLATES = (_gsm_shop, _gsm_share, _gsm_weeks, _gsm_compare, _gsm_savings, _gsm_farm)


def _gsm8k_row(rng: random.Random) -> dict:
    question, answer = _GSM_TEMPLATES[rng.randrange(len(_GSM_TEMPLATES))](rng)
    return {"question": question, "answer": answer}


_GENERATORS: dict[str, tuple[Callable[[random.Random], dict], tuple[str, ...]]] = {
    "viggo": (_viggo_row, ("target",)),
    "sql": (_sql_row, ("question", "context")),
    "gsm8k": (_gsm8k_row, ("question",)),
}
