"""GSM8k metrics: the final numeric answer.

Scored both ways, as lm-evaluation-harness does:
- `strict_accuracy`: the number right after the last `####` marker (the format fine-tuned models
  learn from the dataset), with no fallback. The fair figure for a model that learned the format.
- `accuracy` (flexible): the first number after the last `####`; without a marker (or with no
  number after it) the last number in the text, as the case study did for its baselines, which
  rarely write the marker.
Numbers may carry a sign, thousands separators, decimals, a currency sign or a percent sign
(`#### -$1,234.50`), which are all dropped before comparing numerically.

Per example: `accuracy` and `strict_accuracy` (numeric equality, exact for decimals),
`has_marker` (the output contains `####`), `no_number` (no number could be found even with the
fallback; counted, not averaged).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

# A sign, an optional currency sign on either side of it (no spaces: `8 - 5` is not -5), then 1,234.5 or 1234.5 or .5.
NUMBER_RE = re.compile(
    r"(?<![\w.])([-+\u2212]?)\$?([-+\u2212]?)"
    r"(\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
)
MARKER = "####"


def _to_decimal(match: re.Match) -> Decimal | None:
    sign = "-" if "-" in (match.group(1) + match.group(2)).replace("\u2212", "-") else ""
    try:
        return Decimal(sign + match.group(3).replace(",", ""))
    except InvalidOperation:
        return None


def extract_strict(text: str) -> Decimal | None:
    """The number right after the last `####` (spaces allowed), else None."""
    if MARKER not in text:
        return None
    first = NUMBER_RE.match(text.rsplit(MARKER, 1)[1].lstrip())
    return None if first is None else _to_decimal(first)


def extract_answer(text: str) -> Decimal | None:
    """The first number after the last `####`, else the last number in the text, else None."""
    if MARKER in text:
        first = NUMBER_RE.search(text.rsplit(MARKER, 1)[1])
        if first is not None:
            return _to_decimal(first)
    matches = list(NUMBER_RE.finditer(text))
    return _to_decimal(matches[-1]) if matches else None


def score_example(prediction: str, reference: str, context: str | None = None) -> dict:
    """`accuracy`, `strict_accuracy` and the format flags for one example."""
    predicted, expected = extract_answer(prediction), extract_answer(reference)
    correct = predicted is not None and expected is not None and predicted == expected
    strict = extract_strict(prediction)
    return {
        "accuracy": correct,
        "strict_accuracy": strict is not None and expected is not None and strict == expected,
        "has_marker": MARKER in prediction,
        "no_number": predicted is None,
        "predicted_answer": None if predicted is None else _plain(predicted),
    }


def _plain(value: Decimal) -> str:
    return format(value.normalize(), "f")


def score_examples(predictions: list[str], references: list[str],
                   contexts: list[str | None] | None = None) -> tuple[dict, list[dict]]:
    """Aggregate metrics (rates in [0, 1], counts as ints) and the per-example dicts."""
    examples = [score_example(p, r) for p, r in zip(predictions, references)]
    count = len(examples)
    metrics = {
        "accuracy": sum(e["accuracy"] for e in examples) / count if count else 0.0,
        "strict_accuracy": sum(e["strict_accuracy"] for e in examples) / count if count else 0.0,
        "marker_rate": sum(e["has_marker"] for e in examples) / count if count else 0.0,
        "no_number": sum(e["no_number"] for e in examples),
        "num_examples": count,
    }
    return metrics, examples
