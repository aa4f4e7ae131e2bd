"""Metrics for free-form tasks (prompt_completion, chat): exact match, token F1, and
classification metrics when the references are labels.

- `exact_match`: prediction and reference equal after stripping surrounding whitespace.
- `token_f1`: SQuAD-style F1 over bag-of-words tokens (lower-cased, punctuation and English
  articles removed), so partial answers get partial credit.
- Classification: when the references come from a small label set (at most `MAX_LABELS`
  distinct values and on average at least two examples per label, as in the OpenAI guide's
  classification fine-tunes), also `accuracy`, `macro_f1`, per-class
  `precision/<label>`, `recall/<label>`, `f1/<label>`, `support/<label>` and a
  `confusion_matrix` nested dict {reference label: {predicted label: count}}. A prediction outside
  the label set is counted under the column `OTHER_LABEL`.
"""

from __future__ import annotations

import re
import string
from collections import Counter

MAX_LABELS = 20
OTHER_LABEL = "<other>"
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def squad_tokens(text: str) -> list[str]:
    text = text.lower().translate(_PUNCTUATION)
    return _ARTICLES.sub(" ", text).split()


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = squad_tokens(prediction), squad_tokens(reference)
    if not pred or not ref:
        return float(pred == ref)
    overlap = sum((Counter(pred) & Counter(ref)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(pred), overlap / len(ref)
    return 2 * precision * recall / (precision + recall)


def is_label_set(references: list[str]) -> bool:
    """True when the references look like class labels rather than free text."""
    labels = {r.strip() for r in references}
    return 1 < len(labels) <= MAX_LABELS and 2 * len(labels) <= len(references)


def score_example(prediction: str, reference: str, context: str | None = None) -> dict:
    """`exact_match` and `token_f1` for one example."""
    exact = prediction.strip() == reference.strip()
    return {"exact_match": exact, "token_f1": token_f1(prediction, reference)}


def classification_metrics(predictions: list[str], references: list[str]) -> dict:
    """Accuracy, macro F1, per-class precision/recall/F1/support and the confusion matrix."""
    refs = [r.strip() for r in references]
    labels = sorted(set(refs))
    preds = [p.strip() if p.strip() in labels else OTHER_LABEL for p in predictions]
    confusion = {ref: {col: 0 for col in labels + [OTHER_LABEL]} for ref in labels}
    for ref, pred in zip(refs, preds):
        confusion[ref][pred] += 1
    metrics: dict = {"accuracy": sum(r == p for r, p in zip(refs, preds)) / len(refs)}
    f1_scores = []
    for label in labels:
        true_positive = confusion[label][label]
        predicted = sum(row[label] for row in confusion.values())
        support = sum(confusion[label].values())
        precision = true_positive / predicted if predicted else 0.0
        recall = true_positive / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        metrics[f"precision/{label}"] = precision
        metrics[f"recall/{label}"] = recall
        metrics[f"f1/{label}"] = f1
        metrics[f"support/{label}"] = support
        f1_scores.append(f1)
    metrics["macro_f1"] = sum(f1_scores) / len(f1_scores)
    metrics["confusion_matrix"] = confusion
    return metrics


def score_examples(predictions: list[str], references: list[str],
                   contexts: list[str | None] | None = None) -> tuple[dict, list[dict]]:
    """Aggregate metrics (rates in [0, 1], counts as ints) and the per-example dicts."""
    examples = [score_example(p, r) for p, r in zip(predictions, references)]
    count = len(examples)
    metrics: dict = {
        "exact_match": sum(e["exact_match"] for e in examples) / count if count else 0.0,
        "token_f1": sum(e["token_f1"] for e in examples) / count if count else 0.0,
        "num_examples": count,
    }
    if count and is_label_set(references):
        metrics.update(classification_metrics(predictions, references))
    return metrics, examples
