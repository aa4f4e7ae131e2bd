"""SQL metrics: sqlglot-normalised exact match and execution match on generated databases."""

from __future__ import annotations

import pytest

from llmft.eval.metrics import score, score_example
from llmft.eval.metrics import sql as sql_metrics
from llmft.eval.metrics.sql import (
    build_database,
    canonical_sql,
    condition_values,
    parse_query,
    parse_schema,
    run_query,
)

HEAD = "CREATE TABLE head (age INTEGER, name VARCHAR, born_state VARCHAR, head_id VARCHAR)"
THREE_TABLES = ("CREATE TABLE department (creation VARCHAR, department_id VARCHAR); "
                "CREATE TABLE management (department_id VARCHAR, head_id VARCHAR, temporary_acting VARCHAR); "
                "CREATE TABLE head (head_id VARCHAR, born_state VARCHAR)")


def sql(prediction: str, reference: str, context: str | None = HEAD) -> dict:
    return score_example("sql", prediction, reference, context)


def test_schema_with_several_tables():
    schema = parse_schema(THREE_TABLES)
    assert list(schema) == ["department", "management", "head"]
    assert [c for c, _ in schema["management"]] == ["department_id", "head_id", "temporary_acting"]
    assert parse_schema("no tables here") == {} and parse_schema(None) == {}


@pytest.mark.parametrize("prediction", [
    "select count(*) from HEAD where AGE > 56;",
    "SELECT   COUNT(*)\nFROM head\nWHERE age>56",
    "SELECT COUNT(*) AS n FROM head AS h WHERE h.age > 56",
    "SELECT count(*) FROM head WHERE head.age > 56",
])
def test_exact_match_up_to_case_aliases_and_whitespace(prediction):
    result = sql(prediction, "SELECT COUNT(*) FROM head WHERE age > 56")
    assert result["exact_match"] and result["execution_match"] and result["correct"]


def test_double_quoted_strings_equal_single_quoted():
    gold = "SELECT name FROM head WHERE born_state = 'California'"
    assert sql('SELECT name FROM head WHERE born_state = "California"', gold)["exact_match"]
    assert not sql("SELECT name FROM head WHERE born_state = 'california'", gold)["exact_match"]


def test_join_with_table_aliases_equals_join_with_table_names():
    gold = ("SELECT DISTINCT T1.creation FROM department AS T1 JOIN management AS T2 ON "
            "T1.department_id = T2.department_id JOIN head AS T3 ON T2.head_id = T3.head_id "
            "WHERE T3.born_state = 'Alabama'")
    pred = ("select distinct department.creation from department join management on "
            "department.department_id = management.department_id join head on "
            "management.head_id = head.head_id where head.born_state = 'Alabama'")
    result = score_example("sql", pred, gold, THREE_TABLES)
    assert result["exact_match"] and result["execution_match"] and result["gold_nonempty"]


def test_different_text_same_rows_is_an_execution_match():
    gold = "SELECT name FROM head WHERE age > 56"
    pred = "SELECT name FROM head WHERE NOT age <= 56"
    result = sql(pred, gold)
    assert not result["exact_match"]
    assert result["execution_match"] and result["gold_nonempty"]


def test_missing_condition_is_caught_by_execution():
    result = sql("SELECT name FROM head", "SELECT name FROM head WHERE born_state = 'Alabama'")
    assert not result["execution_match"] and not result["invalid_sql"]


def test_wrong_literal_is_caught_by_execution():
    result = sql("SELECT name FROM head WHERE age > 60", "SELECT name FROM head WHERE age > 56")
    assert not result["execution_match"]


def test_order_matters_only_when_gold_orders():
    ordered_gold = "SELECT name FROM head ORDER BY age DESC"
    assert sql("SELECT name FROM head ORDER BY age DESC", ordered_gold)["execution_match"]
    assert not sql("SELECT name FROM head ORDER BY age ASC", ordered_gold)["execution_match"]
    unordered_gold = "SELECT name FROM head WHERE age > 3"
    assert sql("SELECT name FROM head WHERE age > 3 ORDER BY name DESC", unordered_gold)["execution_match"]


def test_column_order_matters():
    assert not sql("SELECT age, name FROM head", "SELECT name, age FROM head")["execution_match"]


@pytest.mark.parametrize("prediction", [
    "SELEC name FROM head",
    "SELECT name FROM nowhere",
    "SELECT missing_column FROM head",
    "",
    "SELECT name FROM head; DROP TABLE head",
])
def test_invalid_sql_is_wrong_never_a_crash(prediction):
    result = sql(prediction, "SELECT name FROM head")
    assert not result["correct"] and not result["exact_match"]
    assert result["invalid_sql"]


def test_predicted_writes_cannot_change_the_data():
    assert not sql("DELETE FROM head", "SELECT name FROM head")["correct"]
    # RETURNING yields the very rows the gold query selects: only a read-only database refuses it.
    result = sql("UPDATE head SET age = 99 RETURNING name", "SELECT name FROM head")
    assert not result["correct"] and result["invalid_sql"]


def test_runaway_query_times_out(monkeypatch):
    monkeypatch.setattr(sql_metrics, "QUERY_SECONDS", 0.2)
    runaway = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c) SELECT count(*) FROM c"
    result = sql(runaway, "SELECT COUNT(*) FROM head")
    assert result["timed_out"] and not result["correct"]


def test_condition_values_seed_the_generated_rows():
    schema = parse_schema(HEAD)
    gold = "SELECT name FROM head WHERE age >= 40 AND born_state LIKE '%bam%' AND name IN ('Ann', 'Bo')"
    values = condition_values(parse_query(gold), schema)
    assert values == {"age": [40], "born_state": ["bam"], "name": ["Ann", "Bo"]}
    conn = build_database(schema, values, seed=0, candidate_probability=1.0)
    assert run_query(conn, gold).rows  # every row satisfies every condition


def test_gold_needing_many_conditions_still_gets_rows():
    gold = ("SELECT name FROM head WHERE born_state = 'Texas' AND age < 30 AND head_id = 'h7' "
            "AND name = 'Zed'")
    assert sql(gold, gold)["gold_nonempty"]


def test_without_context_falls_back_to_exact_match():
    result = sql("select name from head", "SELECT name FROM head", context=None)
    assert result["execution_match"] and not result["execution_checked"]
    assert not sql("SELECT age FROM head", "SELECT name FROM head", context=None)["execution_match"]


def test_canonical_sql_is_none_for_unparseable():
    assert canonical_sql("SELECT FROM WHERE (", parse_schema(HEAD)) is None


def test_aggregate_metrics():
    gold = "SELECT name FROM head WHERE age > 56"
    preds = [gold, "SELECT name FROM head WHERE NOT age <= 56", "SELECT name FROM head", "nonsense"]
    metrics = score("sql", preds, [gold] * 4, [HEAD] * 4)
    assert metrics["exact_match"] == pytest.approx(0.25)
    assert metrics["execution_match"] == pytest.approx(0.5)
    assert metrics["invalid_sql"] == 1 and metrics["num_examples"] == 4
    assert metrics["gold_nonempty_rate"] == pytest.approx(1.0)
    assert metrics["execution_unchecked"] == 0
