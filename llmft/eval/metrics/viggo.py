"""ViGGO metrics: meaning representations such as
`give_opinion(name[SpellForce 3], rating[poor], genres[real-time strategy, role-playing])`.

Per example (all booleans; the aggregate is their mean):
- `exact_match`: the strings are equal after whitespace normalisation (runs of spaces collapsed,
  no spaces around brackets, parentheses and before commas). Case matters.
- `function_accuracy`: the function (dialogue act) names are equal.
- `attribute_set_match`: the same attribute names, in any order.
- `attribute_order_match`: the same attribute names in the same order as the reference (the case
  study's "precedence" criterion). It implies `attribute_set_match`.
- `attribute_value_match`: the same attribute names and each attribute has the same value.
  Values are compared case-insensitively after whitespace normalisation, and list values
  (`genres[a, b]`) as sets of items: the order of items inside a slot carries no meaning in
  ViGGO, and ordering is judged by `attribute_order_match` and `exact_match` already.
- `unparseable`: the prediction is not a meaning representation (counted, not averaged).

The parser is tolerant: it accepts a missing closing parenthesis, stray whitespace and
parentheses inside values (`esrb[M (for Mature)]`); anything else left over makes the output
unparseable rather than half-parsed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FUNCTION_RE = re.compile(r"^\s*([A-Za-z_][\w]*)\s*\((.*?)\)?\s*$", re.DOTALL)
ATTRIBUTE_RE = re.compile(r"\s*([A-Za-z_][\w]*)\s*\[([^\[\]]*)\]\s*(?:,|$)", re.DOTALL)
BOOLEAN_KEYS = ("exact_match", "function_accuracy", "attribute_set_match", "attribute_order_match",
                "attribute_value_match")


@dataclass(frozen=True)
class MeaningRepresentation:
    function: str
    attributes: tuple[tuple[str, str], ...]  # (name, raw value) in written order

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.attributes]


def normalise_whitespace(text: str) -> str:
    text = re.sub(r"\s+", " ", text.strip())
    text = re.sub(r"\s*([\[\]()])\s*", r"\1", text)
    return re.sub(r"\s*,\s*", ", ", text)


def parse_mr(text: str) -> MeaningRepresentation | None:
    """Parse a meaning representation, or None when the text is not one."""
    match = FUNCTION_RE.match(text)
    if match is None:
        return None
    function, body = match.group(1), match.group(2)
    attributes = []
    position = 0
    body = body.strip()
    while position < len(body):
        attr = ATTRIBUTE_RE.match(body, position)
        if attr is None:
            return None
        attributes.append((attr.group(1), attr.group(2)))
        position = attr.end()
    if not attributes:
        return None
    return MeaningRepresentation(function, tuple(attributes))


def _value_key(value: str) -> frozenset[str]:
    items = (re.sub(r"\s+", " ", item).strip().casefold() for item in value.split(","))
    return frozenset(item for item in items if item)


def _values(mr: MeaningRepresentation) -> dict[str, frozenset[str]]:
    return {name: _value_key(value) for name, value in mr.attributes}


def score_example(prediction: str, reference: str, context: str | None = None) -> dict:
    """Booleans for one example."""
    exact = normalise_whitespace(prediction) == normalise_whitespace(reference)
    pred, ref = parse_mr(prediction), parse_mr(reference)
    result = {key: False for key in BOOLEAN_KEYS}
    result["exact_match"] = exact
    result["unparseable"] = pred is None
    if pred is not None and ref is not None:
        same_set = set(pred.names) == set(ref.names) and len(pred.names) == len(ref.names)
        result["function_accuracy"] = pred.function == ref.function
        result["attribute_set_match"] = same_set
        result["attribute_order_match"] = pred.names == ref.names
        result["attribute_value_match"] = same_set and _values(pred) == _values(ref)
    return result


def score_examples(predictions: list[str], references: list[str],
                   contexts: list[str | None] | None = None) -> tuple[dict, list[dict]]:
    """Aggregate metrics (rates in [0, 1], counts as ints) and the per-example dicts."""
    examples = [score_example(p, r) for p, r in zip(predictions, references)]
    count = len(examples)
    metrics: dict = {key: _mean(examples, key) for key in BOOLEAN_KEYS}
    metrics["unparseable"] = sum(e["unparseable"] for e in examples)
    metrics["num_examples"] = count
    return metrics, examples


def _mean(examples: list[dict], key: str) -> float:
    return float(sum(bool(e[key]) for e in examples) / len(examples)) if examples else 0.0
