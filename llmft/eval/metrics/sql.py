"""SQL metrics (sql-create-context): normalised exact match and execution match.

- `exact_match`: both queries parsed by sqlglot (SQLite dialect) and regenerated after
  canonicalisation: identifiers lower-cased, columns qualified against the CREATE TABLE schema,
  table aliases replaced by table names, output-column aliases dropped, double-quoted strings
  (`name = "Bob"`, common in the dataset, which SQLite reads as strings) turned into string
  literals, keywords, spacing and a trailing `;` normalised. String literals keep their case.
- `execution_match`: an in-memory SQLite database is built from the context's CREATE TABLE
  statements and filled with generated rows, seeded with the literals of the gold query's
  conditions (`age > 56` seeds 57, `name LIKE '%ab%'` seeds `ab`, ...) mixed with values from a
  small pool (so that joins find partners). Up to `MAX_FILLS` seeded fills are tried until
  `WANTED_INFORMATIVE` of them give the gold query an informative result (non-empty and not only
  NULL/0, so `COUNT(*)` = 0 does not count). The prediction must return the same rows as the gold
  query on every fill tried: compared as multisets, or as lists when the gold query has a
  top-level ORDER BY. Rows compare column by column; floats are rounded to 6 places.
  When the gold query cannot be run (no CREATE TABLE in the context, or SQLite rejects it), the
  example falls back to `exact_match` and is counted in `execution_unchecked`.
- `invalid_sql` (count): SQLite rejects the prediction (or, without a schema, sqlglot cannot
  parse it). Errors and time-outs make an example wrong; they never raise.
- `gold_nonempty_rate`: share of examples where some fill gave the gold query an informative
  result; a low value means execution match says little for this data.

Each query runs under a time limit (`QUERY_SECONDS`, enforced with SQLite's progress handler)
and at most `MAX_ROWS` result rows are compared.
"""

from __future__ import annotations

import random
import re
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field

import sqlglot
from sqlglot import exp

MAX_FILLS = 6
WANTED_INFORMATIVE = 2
ROWS_PER_TABLE = 6
QUERY_SECONDS = 2.0
MAX_ROWS = 10_000
# Probability that a column takes a value from the gold query's conditions, per fill. Mixed
# fills (0.5) come first: rows that do and do not match tell a missing WHERE from a right one.
CANDIDATE_PROBABILITY = (0.5, 0.5, 0.7, 0.7, 0.9, 1.0)
TEXT_POOL = ("a", "b", "c", "1", "2", "3")
NUMERIC_AFFINITY = ("INT", "REAL", "FLOA", "DOUB", "NUM", "DEC")

Schema = dict[str, list[tuple[str, str]]]  # table -> [(column, declared type)]


# --- schema -----------------------------------------------------------------------------------

def parse_schema(context: str | None) -> Schema:
    """Tables and columns of the CREATE TABLE statements in `context` ({} when there are none)."""
    if not context:
        return {}
    schema: Schema = {}
    # Statements may be separated by `;` or `,`; parse them one by one so one bad one is skipped.
    for piece in re.split(r"[;,]?\s*(?=\bCREATE\s+TABLE\b)", context, flags=re.IGNORECASE):
        if not re.match(r"\s*CREATE\s+TABLE", piece, flags=re.IGNORECASE):
            continue
        try:
            statement = sqlglot.parse_one(piece.strip().rstrip(";"), read="sqlite")
        except Exception:
            continue
        if not isinstance(statement, exp.Create) or not isinstance(statement.this, exp.Schema):
            continue
        columns = [(col.name, col.args["kind"].sql("sqlite") if col.args.get("kind") else "")
                   for col in statement.this.expressions if isinstance(col, exp.ColumnDef)]
        if columns:
            schema[statement.this.this.name] = columns
    return schema


def _column_names(schema: Schema) -> set[str]:
    return {col.lower() for columns in schema.values() for col, _ in columns}


# --- canonical form (exact match) --------------------------------------------------------------

def parse_query(sql: str) -> exp.Expression | None:
    """The one statement in `sql`, or None when sqlglot cannot parse exactly one."""
    try:
        statements = [s for s in sqlglot.parse(sql.strip(), read="sqlite") if s is not None]
    except Exception:
        return None
    return statements[0] if len(statements) == 1 else None


def _strings_for_quoted_identifiers(tree: exp.Expression, columns: set[str]) -> None:
    """`name = "Bob"`: SQLite reads an unknown double-quoted identifier as a string; so do we."""
    for column in list(tree.find_all(exp.Column)):
        ident = column.this
        if (isinstance(ident, exp.Identifier) and ident.quoted and not column.table
                and ident.name.lower() not in columns):
            column.replace(exp.Literal.string(ident.name))


def _lowercase_identifiers(tree: exp.Expression) -> None:
    # SQLite identifiers are case-insensitive, quoted or not.
    for ident in tree.find_all(exp.Identifier):
        ident.set("this", ident.name.lower())
        ident.set("quoted", False)


def _unalias_tables(tree: exp.Expression) -> None:
    """`FROM head AS t1 ... t1.age` -> `FROM head ... head.age` for tables used once."""
    tables = list(tree.find_all(exp.Table))
    uses = Counter(table.name for table in tables)
    mapping = {}
    for table in tables:
        if table.alias and uses[table.name] == 1:
            mapping[table.alias] = table.name
            table.set("alias", None)
    for column in tree.find_all(exp.Column):
        if column.table in mapping:
            column.set("table", exp.to_identifier(mapping[column.table]))


def _drop_output_aliases(tree: exp.Expression) -> None:
    """Output-column names do not change the rows: drop them, inlining ORDER BY references."""
    if not isinstance(tree, exp.Select):
        return
    aliases = {}
    for projection in list(tree.expressions):
        if isinstance(projection, exp.Alias):
            aliases[projection.alias] = projection.this
            projection.replace(projection.this)
    order = tree.args.get("order")
    if order is not None:
        for column in list(order.find_all(exp.Column)):
            if not column.table and column.name in aliases:
                column.replace(aliases[column.name].copy())


def canonical_sql(sql: str, schema: Schema | None = None) -> str | None:
    """A canonical text for `sql`, equal for queries that differ only in form; None if invalid."""
    tree = parse_query(sql)
    if tree is None:
        return None
    schema = schema or {}
    _strings_for_quoted_identifiers(tree, _column_names(schema))
    _lowercase_identifiers(tree)
    if schema:
        from sqlglot.optimizer.qualify import qualify

        lowered = {t.lower(): {c.lower(): (ty or "TEXT") for c, ty in cols} for t, cols in schema.items()}
        try:
            tree = qualify(tree.copy(), schema=lowered, dialect="sqlite", quote_identifiers=False)
        except Exception:
            pass  # e.g. a column missing from the schema: compare the unqualified form
    _unalias_tables(tree)
    _drop_output_aliases(tree)
    try:
        return tree.sql(dialect="sqlite")
    except Exception:
        return None


def _loose_text(sql: str) -> str:
    return " ".join(sql.strip().rstrip(";").lower().split())


def exact_match(prediction: str, reference: str, schema: Schema | None = None) -> bool:
    gold = canonical_sql(reference, schema)
    if gold is None:  # a gold query sqlglot cannot read: compare case- and spacing-insensitively
        return _loose_text(prediction) == _loose_text(reference)
    return canonical_sql(prediction, schema) == gold


# --- generated databases (execution match) -----------------------------------------------------

NOT_LITERAL = object()


def _literal_value(node: exp.Expression | None, columns: set[str]):
    """The Python value of a literal operand, or NOT_LITERAL."""
    if isinstance(node, exp.Paren):
        return _literal_value(node.this, columns)
    if isinstance(node, exp.Neg):
        inner = _literal_value(node.this, columns)
        return -inner if isinstance(inner, (int, float)) else NOT_LITERAL
    if isinstance(node, exp.Null):
        return None
    if isinstance(node, exp.Literal):
        if node.is_string:
            return node.this
        for convert in (int, float):
            try:
                return convert(node.this)
            except ValueError:
                pass
        return NOT_LITERAL
    if (isinstance(node, exp.Column) and not node.table and isinstance(node.this, exp.Identifier)
            and node.this.quoted and node.name.lower() not in columns):
        return node.name
    return NOT_LITERAL


def _shift(value, step: int):
    """A value just above (step 1) or below (step -1) `value`."""
    if isinstance(value, (int, float)):
        return value + step
    return value + "z" if step > 0 else value[:-1]


_FLIPPED = {exp.GT: exp.LT, exp.LT: exp.GT, exp.GTE: exp.LTE, exp.LTE: exp.GTE}


def condition_values(tree: exp.Expression, schema: Schema) -> dict[str, list]:
    """For each column name in the gold query's conditions, values that satisfy them."""
    columns = _column_names(schema)
    values: dict[str, list] = {}

    def add(column: exp.Expression, *candidates) -> None:
        if isinstance(column, exp.Column) and column.name.lower() in columns:
            values.setdefault(column.name.lower(), []).extend(c for c in candidates if c is not NOT_LITERAL)

    comparisons = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.Like, exp.ILike)
    for node in tree.find_all(*comparisons, exp.In, exp.Between, exp.Is):
        if isinstance(node, exp.In):
            add(node.this, *(_literal_value(e, columns) for e in node.expressions))
        elif isinstance(node, exp.Between):
            add(node.this, _literal_value(node.args.get("low"), columns))
        elif isinstance(node, exp.Is):
            add(node.this, _literal_value(node.expression, columns))  # IS NULL seeds NULLs
        else:
            kind, left, right = type(node), node.this, node.expression
            if isinstance(right, exp.Column) and not isinstance(left, exp.Column):
                left, right = right, left
                kind = _FLIPPED.get(kind, kind)
            value = _literal_value(right, columns)
            if value is NOT_LITERAL or value is None:
                continue
            if kind in (exp.Like, exp.ILike) and isinstance(value, str):
                value = value.replace("%", "").replace("_", "a")
            elif kind is exp.GT:
                value = _shift(value, 1)
            elif kind is exp.LT:
                value = _shift(value, -1)
            elif kind is exp.NEQ:
                continue  # random values already differ from it
            add(left, value)
    return values


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _random_value(declared_type: str, rng: random.Random):
    if any(mark in declared_type.upper() for mark in NUMERIC_AFFINITY):
        return rng.randint(0, 9)
    return rng.choice(TEXT_POOL)


def build_database(schema: Schema, candidates: dict[str, list], seed: int,
                   candidate_probability: float) -> sqlite3.Connection:
    """An in-memory database with the schema's tables and `ROWS_PER_TABLE` generated rows each."""
    rng = random.Random(seed)
    conn = sqlite3.connect(":memory:")
    for table, columns in schema.items():
        column_sql = ", ".join(f"{_quote(col)} {ty}".strip() for col, ty in columns)
        conn.execute(f"CREATE TABLE {_quote(table)} ({column_sql})")
        rows = []
        for _ in range(ROWS_PER_TABLE):
            row = []
            for col, ty in columns:
                options = candidates.get(col.lower())
                use_candidate = options and rng.random() < candidate_probability
                row.append(rng.choice(options) if use_candidate else _random_value(ty, rng))
            rows.append(row)
        placeholders = ", ".join("?" for _ in columns)
        conn.executemany(f"INSERT INTO {_quote(table)} VALUES ({placeholders})", rows)
    conn.commit()
    conn.execute("PRAGMA query_only = ON")  # a predicted DELETE/DROP must not change the data
    return conn


@dataclass
class QueryResult:
    rows: list | None = None
    error: str | None = None
    timed_out: bool = False


def run_query(conn: sqlite3.Connection, sql: str, seconds: float | None = None) -> QueryResult:
    """Run one statement with a time limit (default `QUERY_SECONDS`); errors are returned."""
    deadline = time.monotonic() + (QUERY_SECONDS if seconds is None else seconds)
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
    try:
        cursor = conn.execute(sql.strip().rstrip(";"))
        if cursor.description is None:  # empty text, a comment, or a statement with no result
            return QueryResult(error="not a query that returns rows")
        rows = cursor.fetchmany(MAX_ROWS)
        return QueryResult(rows=[tuple(_comparable(v) for v in row) for row in rows])
    except Exception as exc:  # sqlite3.Error, Warning (two statements), OverflowError, ...
        return QueryResult(error=str(exc), timed_out="interrupted" in str(exc))
    finally:
        conn.set_progress_handler(None, 0)


def _comparable(value):
    return round(value, 6) if isinstance(value, float) else value


def _informative(rows: list) -> bool:
    return any(value not in (None, 0) for row in rows for value in row)


def _same_rows(gold: list, predicted: list, ordered: bool) -> bool:
    return gold == predicted if ordered else Counter(gold) == Counter(predicted)


@dataclass
class ExecutionOutcome:
    checked: bool = False  # the gold query ran on at least one generated database
    match: bool = False
    invalid: bool = False
    timed_out: bool = False
    gold_nonempty: bool = False
    gold_results: list = field(default_factory=list)


def execution_match(prediction: str, reference: str, schema: Schema) -> ExecutionOutcome:
    """Compare the rows of the predicted and the gold query on generated databases."""
    outcome = ExecutionOutcome()
    if not schema:
        return outcome
    gold_tree = parse_query(reference)
    candidates = condition_values(gold_tree, schema) if gold_tree is not None else {}
    ordered = gold_tree is not None and gold_tree.args.get("order") is not None
    databases = []
    try:
        informative = 0
        for seed, probability in enumerate(CANDIDATE_PROBABILITY[:MAX_FILLS]):
            conn = build_database(schema, candidates, seed, probability)
            databases.append(conn)
            gold = run_query(conn, reference)
            if gold.error is not None:
                return outcome  # the gold query does not run here: unchecked
            outcome.gold_results.append(gold.rows)
            informative += _informative(gold.rows)
            if informative >= WANTED_INFORMATIVE:
                break
        outcome.checked = True
        outcome.gold_nonempty = informative > 0
        for conn, gold_rows in zip(databases, outcome.gold_results):
            predicted = run_query(conn, prediction)
            if predicted.error is not None:
                outcome.timed_out = predicted.timed_out
                outcome.invalid = not predicted.timed_out
                return outcome
            if not _same_rows(gold_rows, predicted.rows, ordered):
                return outcome
        outcome.match = True
        return outcome
    except Exception:
        return outcome  # e.g. a schema SQLite refuses: unchecked, never a crash
    finally:
        for conn in databases:
            conn.close()


# --- scoring ---------------------------------------------------------------------------------

def score_example(prediction: str, reference: str, context: str | None = None) -> dict:
    """Booleans for one example."""
    schema = parse_schema(context)
    exact = exact_match(prediction, reference, schema)
    outcome = execution_match(prediction, reference, schema)
    invalid = outcome.invalid if outcome.checked else parse_query(prediction) is None
    executed = outcome.match if outcome.checked else exact
    return {
        "exact_match": exact,
        "execution_match": executed,
        "invalid_sql": invalid,
        "timed_out": outcome.timed_out,
        "execution_checked": outcome.checked,
        "gold_nonempty": outcome.gold_nonempty,
    }


def score_examples(predictions: list[str], references: list[str],
                   contexts: list[str | None] | None = None) -> tuple[dict, list[dict]]:
    """Aggregate metrics (rates in [0, 1], counts as ints) and the per-example dicts."""
    contexts = contexts if contexts is not None else [None] * len(predictions)
    examples = [score_example(p, r, c) for p, r, c in zip(predictions, references, contexts)]
    count = len(examples)

    def rate(key: str) -> float:
        return sum(bool(e[key]) for e in examples) / count if count else 0.0

    metrics = {
        "exact_match": rate("exact_match"),
        "execution_match": rate("execution_match"),
        "gold_nonempty_rate": rate("gold_nonempty"),
        "invalid_sql": sum(e["invalid_sql"] for e in examples),
        "timed_out": sum(e["timed_out"] for e in examples),
        "execution_unchecked": sum(not e["execution_checked"] for e in examples),
        "num_examples": count,
    }
    return metrics, examples
