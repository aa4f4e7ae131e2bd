"""Synthetic GSM8k rows: `question, answer`, multi-step arithmetic with `<<a*b=c>>` calculator
annotations and a final `#### N` line."""

from __future__ import annotations

import random

from llmft.data.samples import pick

# The model's input: no two rows of any split share it.
KEY_FIELDS = ("question",)


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
    person = pick(rng, _PEOPLE)
    items, item = pick(rng, _ITEMS)
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
    items, _ = pick(rng, _ITEMS)
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
    person = pick(rng, _PEOPLE)
    per_day, days, weeks, extra = rng.randint(2, 20), rng.randint(2, 7), rng.randint(2, 6), rng.randint(1, 30)
    s1, per_week = _calc(per_day, "*", days)
    s2, total = _calc(per_week, "*", weeks)
    s3, final = _calc(total, "+", extra)
    activity = pick(rng, (("reads", "pages"), ("runs", "laps"), ("writes", "lines"), ("practises", "minutes")))
    question = (f"{person} {activity[0]} {per_day} {activity[1]} a day, {days} days a week. After {weeks} weeks, "
                f"{person} does {extra} more {activity[1]} in one extra session. How many {activity[1]} is that in all?")
    answer = (f"In one week {person} does {s1} {activity[1]}.\nIn {weeks} weeks that is {s2} {activity[1]}.\n"
              f"With the extra session it is {s3} {activity[1]}.\n#### {final}")
    return question, answer


def _gsm_compare(rng):
    a, b = rng.sample(_PEOPLE, 2)
    items, _ = pick(rng, _ITEMS)
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
    person = pick(rng, _PEOPLE)
    goal_item = pick(rng, ("bike", "tablet", "guitar", "tent", "skateboard", "camera"))
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
    person = pick(rng, _PEOPLE)
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


def make_row(rng: random.Random) -> dict:
    question, answer = _GSM_TEMPLATES[rng.randrange(len(_GSM_TEMPLATES))](rng)
    return {"question": question, "answer": answer}
