"""Metrics for prompt_completion and chat: exact match, token F1, classification."""

from __future__ import annotations

import pytest

from llmft.eval.metrics import score, score_example
from llmft.eval.metrics.generic import OTHER_LABEL, is_label_set, token_f1


def test_exact_match_strips_whitespace_only():
    assert score_example("chat", "  Paris\n", "Paris")["correct"]
    assert not score_example("chat", "paris", "Paris")["correct"]


def test_token_f1_squad_style():
    assert token_f1("The Eiffel Tower!", "eiffel tower") == pytest.approx(1.0)
    # pred tokens: eiffel tower paris; ref: eiffel tower -> p=2/3, r=1
    assert token_f1("the Eiffel tower, Paris", "Eiffel Tower") == pytest.approx(0.8)
    assert token_f1("London", "Paris") == 0.0
    assert token_f1("", "") == 1.0


def test_free_text_gets_no_classification_metrics():
    metrics = score("prompt_completion", ["a b", "c d"], ["a b", "c e"])
    assert metrics["exact_match"] == pytest.approx(0.5)
    assert metrics["token_f1"] == pytest.approx(0.75)
    assert "accuracy" not in metrics and "confusion_matrix" not in metrics


def test_label_set_detection():
    assert is_label_set(["pos", "neg", "pos", "neg"])
    assert not is_label_set(["a", "b", "c", "d"])  # every reference different: free text
    assert not is_label_set(["pos", "pos", "pos"])  # one label: nothing to classify
    assert not is_label_set([str(i % 25) for i in range(100)])  # too many labels


def test_classification_metrics_and_confusion_matrix():
    refs = ["pos", "pos", "pos", "neg", "neg", "neu"]
    preds = ["pos", "neg", "pos", "neg", "maybe", "neu "]
    metrics = score("prompt_completion", preds, refs)
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    assert metrics["precision/pos"] == pytest.approx(1.0)
    assert metrics["recall/pos"] == pytest.approx(2 / 3)
    assert metrics["f1/pos"] == pytest.approx(0.8)
    assert metrics["precision/neg"] == pytest.approx(0.5)
    assert metrics["recall/neg"] == pytest.approx(0.5)
    assert metrics["support/neu"] == 1 and metrics["f1/neu"] == pytest.approx(1.0)
    assert metrics["macro_f1"] == pytest.approx((0.8 + 0.5 + 1.0) / 3)
    confusion = metrics["confusion_matrix"]
    assert confusion["pos"] == {"pos": 2, "neg": 1, "neu": 0, OTHER_LABEL: 0}
    assert confusion["neg"][OTHER_LABEL] == 1 and confusion["neg"]["neg"] == 1
    assert sum(sum(row.values()) for row in confusion.values()) == len(refs)
