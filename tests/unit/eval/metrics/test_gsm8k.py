"""GSM8k answer extraction and accuracy (flexible and strict) on hand-made outputs."""

from __future__ import annotations

from decimal import Decimal

import pytest

from llmft.eval.metrics import score, score_example
from llmft.eval.metrics.gsm8k import extract_answer, extract_strict


@pytest.mark.parametrize("text, expected", [
    ("She sells 1000 + 234 = <<1000+234=1234>>1234.\n#### 1,234", "1234"),
    ("#### -5", "-5"),
    ("#### 3.75", "3.75"),
    ("#### $5.00", "5"),
    ("#### -$12", "-12"),
    ("#### $-12", "-12"),
    ("#### 40%", "40"),
    ("#### 7 apples, not 8", "7"),
    ("First 12, then #### 18\nso ... #### 20", "20"),
    ("The answer is 42.", "42"),
    ("She pays $1,250.50 in total", "1250.50"),
    ("8 - 5 = 3", "3"),
    ("item a1b costs 7", "7"),
    ("#### then the total is 9", "9"),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == Decimal(expected)


@pytest.mark.parametrize("text", ["", "I do not know.", "####", "#### none"])
def test_no_number(text):
    assert extract_answer(text) is None


def test_numeric_equality_across_formats():
    assert score_example("gsm8k", "#### 5.00", "... #### 5")["correct"]
    assert score_example("gsm8k", "#### $1,234", "#### 1234")["correct"]
    assert not score_example("gsm8k", "#### 1.234", "#### 1234")["correct"]
    assert not score_example("gsm8k", "#### 5", "#### -5")["correct"]


def test_fallback_to_last_number_for_models_not_fine_tuned():
    result = score_example("gsm8k", "Natalia sold 48 + 24 = 72 clips altogether.", "48/2 = 24\n#### 72")
    assert result["correct"] and not result["has_marker"]
    assert not result["strict_accuracy"]  # strict takes only the number after `####`


@pytest.mark.parametrize("text, expected", [
    ("so 3 + 4 = 7\n#### 7", "7"), ("#### -$1,234.50", "-1234.50"), ("#### 5 then 6", "5"),
    ("First 12, then #### 18\nso ... #### 20", "20"),
])
def test_strict_reads_only_the_number_after_the_marker(text, expected):
    assert extract_strict(text) == Decimal(expected)


@pytest.mark.parametrize("text", ["The answer is 42.", "#### none, it is 42", "#### then 9", "####", ""])
def test_strict_has_no_fallback(text):
    assert extract_strict(text) is None


def test_strict_and_flexible_differ_per_example():
    wrong_after_marker = score_example("gsm8k", "72 clips\n#### 70", "#### 72")
    assert not wrong_after_marker["accuracy"] and not wrong_after_marker["strict_accuracy"]
    marker_without_number = score_example("gsm8k", "It is 72.\n####", "#### 72")
    assert marker_without_number["accuracy"] and not marker_without_number["strict_accuracy"]
    both = score_example("gsm8k", "#### 72", "#### 72")
    assert both["accuracy"] and both["strict_accuracy"]


def test_aggregate():
    preds = ["#### 72", "The answer is 10", "no idea", "#### -3.5"]
    refs = ["#### 72", "#### 11", "#### 4", "#### -3.50"]
    metrics = score("gsm8k", preds, refs)
    assert metrics["accuracy"] == pytest.approx(0.5)
    assert metrics["strict_accuracy"] == pytest.approx(0.5)  # "The answer is 10" is wrong either way
    assert metrics["marker_rate"] == pytest.approx(0.5)
    assert metrics["no_number"] == 1 and metrics["num_examples"] == 4
    metrics = score("gsm8k", ["The answer is 72", "#### 72"], ["#### 72", "#### 72"])
    assert metrics["accuracy"] == pytest.approx(1.0) and metrics["strict_accuracy"] == pytest.approx(0.5)
