"""Synthetic sql-create-context rows: `question, context, answer` with generated CREATE TABLE
schemas; every answer is valid SQLite over its schema (WHERE, COUNT, MAX/MIN/AVG/SUM, ORDER BY ...
LIMIT, comparisons)."""

from __future__ import annotations

import random

from llmft.data.samples import pick

# The model's input: no two rows of any split share it.
KEY_FIELDS = ("question", "context")


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


def make_row(rng: random.Random) -> dict:
    stem, entity, plural, texts, numbers = _SQL_DOMAINS[rng.randrange(len(_SQL_DOMAINS))]
    table = rng.choice((f"{stem}_{rng.randint(1, 99)}", f"table_name_{rng.randint(1, 999)}", stem))
    text_cols = rng.sample(list(texts), rng.randint(2, len(texts)))
    num_cols = rng.sample(list(numbers), rng.randint(1, len(numbers)))
    columns = text_cols + num_cols
    rng.shuffle(columns)
    context = "CREATE TABLE {} ({})".format(
        table, ", ".join(f"{c} {'INTEGER' if c in numbers else 'VARCHAR'}" for c in columns))
    target, key = rng.sample(text_cols, 2)
    key_value = pick(rng, texts[key])
    number = num_cols[0]
    low, high = numbers[number]
    threshold = rng.randint(low, high)
    w = _COLUMN_WORDS
    kind = rng.randrange(9)
    if kind == 0:
        question = pick(rng, (f"What is the {w[target]} of the {entity} whose {w[key]} is {key_value}?",
                               f"Which {w[target]} has the {entity} with {w[key]} {key_value}?",
                               f"Name the {w[target]} for {w[key]} {key_value}."))
        answer = f"SELECT {target} FROM {table} WHERE {key} = '{key_value}'"
    elif kind == 1:
        question = pick(rng, (f"How many {plural} have a {w[key]} of {key_value}?",
                               f"Count the {plural} whose {w[key]} is {key_value}.",
                               f"What is the number of {plural} with {w[key]} {key_value}?"))
        answer = f"SELECT COUNT(*) FROM {table} WHERE {key} = '{key_value}'"
    elif kind in (2, 3):
        fn, words = rng.choice((("MAX", ("highest", "largest", "maximum")), ("MIN", ("lowest", "smallest", "minimum")),
                                ("AVG", ("average",)), ("SUM", ("total",))))
        word = pick(rng, words)
        question = pick(rng, (f"What is the {word} {w[number]} of {plural} whose {w[key]} is {key_value}?",
                               f"Give the {word} {w[number]} for {w[key]} {key_value}."))
        answer = f"SELECT {fn}({number}) FROM {table} WHERE {key} = '{key_value}'"
    elif kind == 4:
        order, word = rng.choice((("DESC", "highest"), ("ASC", "lowest")))
        question = pick(rng, (f"Which {entity} has the {word} {w[number]}? Give its {w[target]}.",
                               f"What is the {w[target]} of the {entity} with the {word} {w[number]}?"))
        answer = f"SELECT {target} FROM {table} ORDER BY {number} {order} LIMIT 1"
    elif kind == 5:
        op, word = rng.choice(((">", "greater than"), ("<", "less than"), (">=", "at least"), ("<=", "at most")))
        question = pick(rng, (f"List the {w[target]} of {plural} with a {w[number]} {word} {threshold}.",
                               f"Which {w[target]} belongs to {plural} whose {w[number]} is {word} {threshold}?"))
        answer = f"SELECT {target} FROM {table} WHERE {number} {op} {threshold}"
    elif kind == 6:
        op, word = rng.choice(((">", "more than"), ("<", "fewer than")))
        question = f"How many {plural} with {w[key]} {key_value} have {word} {threshold} {w[number]}?"
        answer = f"SELECT COUNT(*) FROM {table} WHERE {key} = '{key_value}' AND {number} {op} {threshold}"
    elif kind == 7:
        question = pick(rng, (f"What is the {w[number]} of the {entity} whose {w[key]} is {key_value}?",
                               f"Tell me the {w[number]} when the {w[key]} is {key_value}."))
        answer = f"SELECT {number} FROM {table} WHERE {key} = '{key_value}'"
    else:
        third = next((c for c in text_cols if c not in (target, key)), None)
        if third is None:
            question = f"List the distinct {w[target]} values of {plural} with {w[key]} {key_value}."
            answer = f"SELECT DISTINCT {target} FROM {table} WHERE {key} = '{key_value}'"
        else:
            third_value = pick(rng, texts[third])
            question = (f"What is the {w[target]} of the {entity} with {w[key]} {key_value} "
                        f"and {w[third]} {third_value}?")
            answer = f"SELECT {target} FROM {table} WHERE {key} = '{key_value}' AND {third} = '{third_value}'"
    return {"question": question, "context": context, "answer": answer}
