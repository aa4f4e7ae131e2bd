"""ViGGO metrics on hand-made meaning representations."""

from __future__ import annotations

import pytest

from llmft.eval.metrics import score, score_example
from llmft.eval.metrics.viggo import parse_mr

REF = ("give_opinion(name[SpellForce 3], rating[poor], genres[real-time strategy, role-playing], "
       "player_perspective[bird view])")


def test_parser_reads_functions_lists_and_parentheses_in_values():
    mr = parse_mr("inform( name[X], esrb[M (for Mature)], genres[a, b] )")
    assert mr.function == "inform"
    assert mr.attributes == (("name", "X"), ("esrb", "M (for Mature)"), ("genres", "a, b"))


def test_parser_tolerates_missing_closing_parenthesis():
    assert parse_mr("inform(name[X], rating[good]").names == ["name", "rating"]


@pytest.mark.parametrize("text", ["", "The game is great.", "inform()", "inform(name[X] rating[good])",
                                  "inform(name[X]) and more", "inform(name[X], rating[good)"])
def test_parser_rejects_non_meaning_representations(text):
    assert parse_mr(text) is None


def test_identical_up_to_whitespace_is_fully_correct():
    pred = ("give_opinion( name[SpellForce 3],rating[poor],  genres[real-time strategy, role-playing], "
            "player_perspective[bird view] )")
    result = score_example("viggo", pred, REF)
    assert result["correct"] and result["exact_match"]
    assert all(result[k] for k in ("function_accuracy", "attribute_set_match",
                                   "attribute_order_match", "attribute_value_match"))


def test_attributes_out_of_order_fail_precedence_only():
    pred = ("give_opinion(rating[poor], name[SpellForce 3], genres[real-time strategy, role-playing], "
            "player_perspective[bird view])")
    result = score_example("viggo", pred, REF)
    assert not result["exact_match"] and not result["attribute_order_match"]
    assert result["function_accuracy"] and result["attribute_set_match"] and result["attribute_value_match"]


def test_list_values_compare_as_sets_but_scalar_values_must_agree():
    swapped = REF.replace("real-time strategy, role-playing", "role-playing, real-time strategy")
    result = score_example("viggo", swapped, REF)
    assert result["attribute_value_match"] and result["attribute_order_match"]
    assert not result["exact_match"]
    wrong = score_example("viggo", REF.replace("rating[poor]", "rating[good]"), REF)
    assert wrong["attribute_set_match"] and wrong["attribute_order_match"]
    assert not wrong["attribute_value_match"] and not wrong["exact_match"]


def test_missing_attribute_and_wrong_function():
    pred = "inform(name[SpellForce 3], rating[poor], genres[real-time strategy, role-playing])"
    result = score_example("viggo", pred, REF)
    assert not result["function_accuracy"]
    assert not result["attribute_set_match"] and not result["attribute_order_match"]
    assert not result["attribute_value_match"]
    assert not result["unparseable"]


def test_aggregate_rates_and_unparseable_count():
    preds = [REF, REF.replace("rating[poor]", "rating[good]"), "I think SpellForce 3 is poor.",
             REF.replace("give_opinion", "inform")]
    metrics = score("viggo", preds, [REF] * 4)
    assert metrics["num_examples"] == 4
    assert metrics["unparseable"] == 1 and isinstance(metrics["unparseable"], int)
    assert metrics["exact_match"] == pytest.approx(0.25)
    assert metrics["function_accuracy"] == pytest.approx(0.5)
    assert metrics["attribute_set_match"] == pytest.approx(0.75)
    assert metrics["attribute_value_match"] == pytest.approx(0.5)
    assert all(isinstance(v, float) for k, v in metrics.items() if k not in ("num_examples", "unparseable"))


def test_unknown_task_is_a_user_error():
    from llmft.errors import LlmftError

    with pytest.raises(LlmftError, match="(?i)known tasks"):
        score("summarize", ["a"], ["a"])


def test_length_mismatch_is_refused():
    with pytest.raises(ValueError):
        score("viggo", ["a", "b"], ["a"])
