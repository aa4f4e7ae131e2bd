"""Synthetic ViGGO rows: `gem_id, meaning_representation, target, references` over ViGGO's 9
dialogue-act functions and 14 attributes (in canonical order inside each meaning representation)."""

from __future__ import annotations

import random
from typing import Callable

from llmft.data.samples import pick, with_article, english_list

# The model's input: no two rows of any split share it.
KEY_FIELDS = ("target",)

# Rows carry an id in this field, like the hub dataset's rows.
ROW_ID_FIELD = "gem_id"


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
    return f"{pick(rng, _NAME_FIRST)} {pick(rng, _NAME_SECOND)}{pick(rng, _NAME_SUFFIX)}"


def _viggo_value(rng: random.Random, attr: str) -> str | list[str]:
    if attr == "name":
        return _game_name(rng)
    if attr == "release_year":
        return str(rng.randint(1989, 2021))
    if attr == "exp_release_date":
        return f"{pick(rng, _MONTHS)} {rng.randint(1, 28)}, {rng.randint(2022, 2026)}"
    if attr == "developer":
        return pick(rng, _DEVELOPERS)
    if attr == "genres":
        return rng.sample(_GENRES, rng.choice((1, 1, 2, 2, 3)))
    if attr == "player_perspective":
        return pick(rng, _PERSPECTIVES)
    if attr == "platforms":
        return rng.sample(_PLATFORMS, rng.choice((1, 2, 2, 3)))
    if attr == "esrb":
        return pick(rng, _ESRB)
    if attr == "rating":
        return pick(rng, _RATINGS)
    if attr == "specifier":
        return pick(rng, _SPECIFIERS)
    return pick(rng, _YESNO)  # the has_*/available_* booleans


def _clause(rng: random.Random, attr: str, value) -> str:
    """A phrase about one attribute, for use after the game's name ("... that is ...")."""
    v = english_list(value) if isinstance(value, list) else value
    options: dict[str, tuple[str, ...]] = {
        "release_year": (f"was released in {v}", f"came out in {v}", f"first appeared in {v}"),
        "exp_release_date": (f"is expected to release on {v}", f"is due out on {v}",
                             f"should launch on {v}"),
        "developer": (f"was developed by {v}", f"was made by {v}", f"comes from {v}"),
        "genres": (f"is {with_article(v)} game", f"mixes {v} gameplay" if len(value) > 1 else f"is {with_article(v)} title",
                   f"belongs to the {v} genre" if len(value) == 1 else f"combines the {v} genres"),
        "player_perspective": (f"is played from {with_article(v)} perspective", f"uses {with_article(v)} camera",
                               f"offers {with_article(v)} view"),
        "platforms": (f"is available on {v}", f"can be played on {v}", f"runs on {v}"),
        "esrb": (f"is rated {v}", f"carries an ESRB rating of {v}", f"has the ESRB rating {v}"),
        "rating": (f"got {v} reviews", f"was rated {v} by players", f"has {with_article(v)} reputation"),
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
    return pick(rng, options[attr])


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


def make_row(rng: random.Random) -> dict:
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
    return english_list(clauses)


def _inform(rng):
    extra = _choose(rng, _DESCRIBABLE, 1, 4)
    values = _values(rng, ["name", *extra])
    opener = pick(rng, ("{n} {c}.", "{n} is a game that {c}.", "Let me tell you about {n}: it {c}.",
                         "Here is what I know about {n}. It {c}."))
    return opener.format(n=values["name"], c=_described(rng, values, extra)), values


def _request(rng):
    extra = _choose(rng, ("release_year", "genres", "player_perspective", "platforms", "has_multiplayer",
                          "developer", "esrb"), 1, 2)
    values = _values(rng, ["specifier", *extra])
    opener = pick(rng, ("Is there a {s} game that {c}?", "Do you know of any {s} game that {c}?",
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
    start = f"{pick(rng, feeling[values['rating']])} {values['name']}, which is {values['rating']} in my book"
    if extra:
        start += f"; it {_described(rng, values, extra)}"
    return start + ".", values


def _confirm(rng):
    extra = _choose(rng, ("release_year", "developer", "genres", "platforms", "player_perspective"), 1, 2)
    values = _values(rng, ["name", *extra])
    opener = pick(rng, ("You mean {n}, the one that {c}?", "Are you talking about {n}, which {c}?",
                         "Just to be sure: {n} is the game that {c}, right?"))
    return opener.format(n=values["name"], c=_described(rng, values, extra)), values


def _verify_attribute(rng):
    attr = pick(rng, ("genres", "player_perspective", "platforms", "has_multiplayer", "esrb"))
    values = _values(rng, ["name", "rating", attr])
    opener = pick(rng, ("You said {n} was {r}. Do you usually like a game that {c}?",
                         "Since you found {n} {r}, do you enjoy any game that {c}?",
                         "You rated {n} as {r}. Are you generally into a game that {c}?"))
    return opener.format(n=values["name"], r=values["rating"], c=_described(rng, values, [attr])), values


def _suggest(rng):
    extra = _choose(rng, ("genres", "player_perspective", "platforms", "developer", "release_year"), 1, 2)
    values = _values(rng, ["name", *extra])
    opener = pick(rng, ("Have you tried {n}? It {c}.", "What about {n}? It {c}.",
                         "Maybe you would like {n}, which {c}."))
    return opener.format(n=values["name"], c=_described(rng, values, extra)), values


def _request_explanation(rng):
    attr = pick(rng, ("genres", "player_perspective", "has_multiplayer", "platforms", "developer"))
    values = _values(rng, ["rating", attr])
    opener = pick(rng, ("What makes a game that {c} so {r} for you?",
                         "Why do you find a game that {c} {r}?",
                         "Could you explain why a game that {c} seems {r} to you?"))
    return opener.format(r=values["rating"], c=_described(rng, values, [attr])), values


def _recommend(rng):
    extra = _choose(rng, ("genres", "player_perspective", "platforms", "has_multiplayer", "developer",
                          "available_on_steam"), 1, 3)
    values = _values(rng, ["name", *extra])
    opener = pick(rng, ("If you like a game that {c}, you should play {n}.",
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
    attr = pick(rng, tuple(_ASK))
    prefix = pick(rng, ("", "", "Tell me, ", "I wonder: ", "Out of curiosity, "))
    question = pick(rng, _ASK[attr])
    if prefix:
        question = prefix + question[0].lower() + question[1:]
    return question, {attr: ""}


_VIGGO_FUNCTIONS: dict[str, Callable] = {
    "inform": _inform, "request": _request, "give_opinion": _give_opinion, "confirm": _confirm,
    "verify_attribute": _verify_attribute, "suggest": _suggest,
    "request_explanation": _request_explanation, "recommend": _recommend,
    "request_attribute": _request_attribute,
}
