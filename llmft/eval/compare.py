"""`llmft compare`: eval results of several models side by side.

Reads results JSON files written by `llmft eval` (keys: task, model, label, split, few_shot,
num_examples, parameters, engine, metrics, data_hash, config, predictions_file) and produces:
- a table with one row per model, smallest model first (by parameter count), and one column per
  numeric metric (printed with rich, and as markdown to `--out`);
- a grouped bar chart PNG of the rate metrics (floats in [0, 1]; counts are left out) to `--plot`;
- a per-example view of every model's prediction (markdown, or HTML when the path ends in
  `.html`) to `--side-by-side`, for human review and ranking of outputs.
All results must be for one task. Results on different test sets (data, split or number of
examples) or with different few-shot settings are refused unless `--allow-mixed` says so. Every
file is written atomically (temp file, then rename).
"""

from __future__ import annotations

import html
import io
import json
from pathlib import Path
from typing import Any

from llmft import storage
from llmft.errors import LlmftError

REQUIRED_KEYS = ("task", "model", "metrics")
MISSING = "–"


# --- loading -----------------------------------------------------------------------------------

def load_results(path: str) -> dict[str, Any]:
    """One results file (a path or a storage URI), checked; its own path is kept under `_path`."""
    if not storage.exists(path):
        raise LlmftError(f"Results file {storage.shown(path)} does not exist. Pass the JSON files written by "
                         "`llmft eval ... --out results.json`.")
    try:
        results = json.loads(storage.read_text(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LlmftError(f"Results file {path} is not valid JSON ({exc}). Pass the results JSON "
                         "written by `llmft eval`, not its predictions JSONL.") from exc
    if not isinstance(results, dict):
        raise LlmftError(f"Results file {path} holds a JSON {type(results).__name__}, not an object "
                         "with task, model and metrics. Pass the results JSON written by `llmft eval`.")
    missing = [key for key in REQUIRED_KEYS if key not in results]
    if missing:
        raise LlmftError(f"Results file {path} lacks the key(s) {', '.join(missing)}. Pass the "
                         "results JSON written by `llmft eval` (re-run it if the file is from an "
                         "older version).")
    if not isinstance(results["metrics"], dict):
        raise LlmftError(f"Results file {path}: `metrics` must be an object of named numbers, "
                         f"not {type(results['metrics']).__name__}.")
    results["_path"] = str(path)
    return results


def check_same_task(all_results: list[dict[str, Any]]) -> str:
    """The one task of all results; mixing tasks is a user error."""
    first = all_results[0]
    for other in all_results[1:]:
        if other["task"] != first["task"]:
            raise LlmftError(f"results file {other['_path']} is for task {other['task']} but "
                             f"{first['_path']} is for {first['task']}. Compare results of one "
                             "task at a time.")
    return first["task"]


def check_comparable(all_results: list[dict[str, Any]], allow_mixed: bool) -> None:
    """Results on different test sets or few-shot settings do not compare, unless told otherwise."""
    if allow_mixed:
        return
    first = all_results[0]
    for other in all_results[1:]:
        for key, what in (("data_hash", "test data"), ("split", "split"), ("num_examples", "number of examples"),
                          ("few_shot", "few-shot setting")):
            if other.get(key) != first.get(key):
                raise LlmftError(
                    f"results file {other['_path']} has a different {what} ({key} {other.get(key)!r}) than "
                    f"{first['_path']} ({first.get(key)!r}), so their numbers do not compare. Evaluate every model "
                    "on the same split, --limit and --few-shot, or pass --allow-mixed to compare them anyway "
                    "(e.g. a few-shot baseline against a fine-tune).")


def by_size(all_results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Smallest model first; results without a parameter count keep their order, after the rest."""
    return sorted(all_results, key=lambda r: (not _is_number(r.get("parameters")), r.get("parameters") or 0))


def _parameters(value: Any) -> str:
    if not _is_number(value):
        return MISSING
    return f"{value / 1e9:.2f}B" if value >= 1e9 else f"{value / 1e6:.3g}M"


def model_names(all_results: list[dict[str, Any]]) -> list[str]:
    """Row names: each result's label (else its model), made unique with the file name."""
    names = [str(r.get("label") or r["model"]) for r in all_results]
    return [f"{name} ({storage.basename(r['_path'])})" if names.count(name) > 1 else name
            for name, r in zip(names, all_results)]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def metric_columns(all_results: list[dict[str, Any]]) -> list[str]:
    """Numeric metrics in order of first appearance (nested ones such as a confusion matrix skipped)."""
    columns: list[str] = []
    for results in all_results:
        for key, value in results["metrics"].items():
            if _is_number(value) and key not in columns:
                columns.append(key)
    return columns


def rate_columns(all_results: list[dict[str, Any]], columns: list[str]) -> list[str]:
    """Columns holding rates: values in [0, 1], at least one written as a float.

    Counts are ints, so a count column of 0s and 1s is not mistaken for a rate, while a rate that
    another writer stored as a bare `1` is still one.
    """
    rates = []
    for key in columns:
        values = [r["metrics"][key] for r in all_results if key in r["metrics"]]
        if all(0.0 <= v <= 1.0 for v in values) and any(isinstance(v, float) for v in values):
            rates.append(key)
    return rates


# --- table -------------------------------------------------------------------------------------

def _cell(value: Any, rate: bool = False) -> str:
    if value is None:
        return MISSING
    if isinstance(value, float) or (rate and _is_number(value)):
        return f"{value:.3f}"
    return str(value)


def table_rows(all_results: list[dict[str, Any]], names: list[str],
               columns: list[str]) -> tuple[list[str], list[list[str]]]:
    """Header and rows: model, parameters, split, few-shot, then one column per metric."""
    rates = set(rate_columns(all_results, columns))
    header = ["model", "params", "split", "few-shot", *columns]
    rows = [[name, _parameters(r.get("parameters")), _cell(r.get("split")), _cell(r.get("few_shot")),
             *(_cell(r["metrics"].get(key), key in rates) for key in columns)]
            for name, r in zip(names, all_results)]
    return header, rows


def _notes(all_results: list[dict[str, Any]]) -> list[str]:
    """What --allow-mixed let through."""
    notes = []
    if len({r.get("data_hash") for r in all_results}) > 1:
        notes.append("The results were computed on different data (their data_hash differ): "
                     "the numbers are not directly comparable.")
    if len({r.get("few_shot") for r in all_results}) > 1:
        notes.append("The results were computed with different few-shot settings.")
    return notes


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown_table(task: str, header: list[str], rows: list[list[str]], notes: list[str]) -> str:
    lines = [f"# llmft compare: {task}", "",
             "| " + " | ".join(_md_escape(h) for h in header) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in rows]
    lines += [""] + [f"> {note}" for note in notes]
    return "\n".join(lines).rstrip() + "\n"


def print_table(task: str, header: list[str], rows: list[list[str]], notes: list[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"llmft compare: {task}")
    for i, column in enumerate(header):
        # The model name stays on one line; long metric names fold when the terminal is narrow.
        table.add_column(column, justify="left" if i == 0 else "right", overflow="fold", no_wrap=i == 0)
    for row in rows:
        table.add_row(*row)
    console = Console()
    console.print(table)
    for note in notes:
        console.print(f"[yellow]note:[/] {note}")


# --- chart -------------------------------------------------------------------------------------

def render_chart(path: str, task: str, all_results: list[dict[str, Any]], names: list[str],
                 columns: list[str]) -> None:
    """A grouped bar chart: one group per rate metric, one bar per model."""
    from matplotlib.figure import Figure  # draws with Agg, no GUI backend or pyplot state

    if not columns:
        raise LlmftError(f"Nothing to plot in {path}: the results have no rate metrics (floats in "
                         "[0, 1]). Leave out --plot, or check the results' `metrics`.")
    width = 0.8 / len(names)
    figure = Figure(figsize=(max(6.0, 1.0 + len(columns) * (0.4 + 0.25 * len(names))), 4.5))
    axes = figure.add_subplot()
    for i, (name, results) in enumerate(zip(names, all_results)):
        positions = [c + (i - (len(names) - 1) / 2) * width for c in range(len(columns))]
        values = [results["metrics"].get(key, 0.0) for key in columns]
        bars = axes.bar(positions, values, width, label=name)
        axes.bar_label(bars, fmt="%.2f", fontsize=7, padding=1)
    axes.set_xticks(range(len(columns)), columns, rotation=20, ha="right")
    axes.set_ylim(0, 1.25)  # headroom so the legend does not hide bars near 1.0
    axes.set_yticks([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    axes.set_ylabel("rate")
    axes.set_title(f"llmft compare: {task}")
    axes.legend(fontsize=8, loc="upper center", ncol=min(len(names), 3), frameon=False)
    figure.tight_layout()
    image = io.BytesIO()
    figure.savefig(image, format="png", dpi=120)
    storage.write_bytes(path, image.getvalue())


# --- side by side ------------------------------------------------------------------------------

def load_predictions(results: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """The predictions JSONL beside a results file, by example index."""
    source = results["_path"]
    name = results.get("predictions_file")
    if not name:
        raise LlmftError(f"Results file {source} has no `predictions_file`, which the "
                         "side-by-side view needs. Re-run `llmft eval` to write one.")
    file = name
    if storage.is_uri(source) or not (Path(name).is_absolute() or Path(name).is_file()):
        file = storage.join(storage.parent(source), name)  # stored relative to the results file
    if not storage.exists(file):
        raise LlmftError(f"Predictions file {name} named in {storage.shown(source)} does not exist. Keep it "
                         "beside its results file, or re-run `llmft eval`.")
    predictions = {}
    for number, line in enumerate(storage.read_text(file).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LlmftError(f"{file} line {number} is not JSON ({exc.msg}). The predictions "
                             "file may be truncated: re-run `llmft eval`.") from exc
        if not isinstance(record, dict) or "prediction" not in record:
            raise LlmftError(f"{file} line {number} has no `prediction`. Pass predictions "
                             "written by `llmft eval`.")
        predictions[int(record.get("index", number - 1))] = record
    return predictions


def _mark(record: dict[str, Any] | None) -> str:
    if record is None or "correct" not in record:
        return "?"
    return "correct" if record["correct"] else "wrong"


def _shared_fields(records: list[dict[str, Any] | None]) -> tuple[str, str]:
    present = [r for r in records if r is not None]
    # Few-shot prompts repeat training examples: show the shortest (zero-shot) prompt.
    prompt = min((str(r.get("prompt", "")) for r in present), key=len, default="")
    reference = next((str(r["reference"]) for r in present if "reference" in r), "")
    return prompt, reference


def _fence(text: str) -> str:
    longest, run = 0, 0
    for char in text:
        run = run + 1 if char == "`" else 0
        longest = max(longest, run)
    fence = "`" * max(3, longest + 1)
    return f"{fence}\n{text}\n{fence}"


def render_side_by_side_markdown(task: str, names: list[str], tables: list[dict[int, dict]]) -> str:
    indices = sorted(set().union(*tables))
    lines = [f"# Side-by-side predictions: {task}", "",
             f"{len(indices)} examples; models: {', '.join(names)}.", ""]
    for index in indices:
        records = [table.get(index) for table in tables]
        prompt, reference = _shared_fields(records)
        lines += [f"## Example {index}", "", "**Prompt**", "", _fence(prompt), "",
                  "**Reference**", "", _fence(reference), ""]
        for name, record in zip(names, records):
            prediction = MISSING if record is None else str(record["prediction"])
            lines += [f"**{name}** ({_mark(record)})", "", _fence(prediction), ""]
    return "\n".join(lines)


def render_side_by_side_html(task: str, names: list[str], tables: list[dict[int, dict]]) -> str:
    indices = sorted(set().union(*tables))
    esc = html.escape
    head = "".join(f"<th>{esc(n)}</th>" for n in ["#", "prompt", "reference", *names])
    body = []
    for index in indices:
        records = [table.get(index) for table in tables]
        prompt, reference = _shared_fields(records)
        cells = [f"<td>{index}</td>", f"<td><pre>{esc(prompt)}</pre></td>",
                 f"<td><pre>{esc(reference)}</pre></td>"]
        for record in records:
            text = MISSING if record is None else str(record["prediction"])
            mark = _mark(record)
            cells.append(f'<td class="{mark}" title="{mark}"><pre>{esc(text)}</pre></td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    title = esc(f"Side-by-side predictions: {task}")
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: sans-serif; }} table {{ border-collapse: collapse; }}
td, th {{ border: 1px solid #ccc; padding: 4px; vertical-align: top; }}
pre {{ white-space: pre-wrap; margin: 0; max-width: 40em; }}
.correct {{ background: #e6f4e6; }} .wrong {{ background: #fbe6e6; }}
</style></head><body>
<h1>{title}</h1>
<table><thead><tr>{head}</tr></thead>
<tbody>
{chr(10).join(body)}
</tbody></table></body></html>
"""


# --- writing -----------------------------------------------------------------------------------

def _write_text(path: str, text: str) -> None:
    storage.write_text(path, text)


def run_compare(results_paths: list[str], out: str | None = None, plot: str | None = None,
                side_by_side: str | None = None, allow_mixed: bool = False) -> None:
    """Print the comparison table and write the requested markdown, chart and side-by-side files."""
    if not results_paths:
        raise LlmftError("No results files given. Pass one or more JSON files written by `llmft eval`.")
    all_results = [load_results(path) for path in results_paths]
    task = check_same_task(all_results)
    check_comparable(all_results, allow_mixed)
    all_results = by_size(all_results)
    names = model_names(all_results)
    columns = metric_columns(all_results)
    header, rows = table_rows(all_results, names, columns)
    notes = _notes(all_results)
    rates = rate_columns(all_results, columns)
    # Everything that can fail is read and checked before anything is written.
    if plot and not rates:
        raise LlmftError(f"Nothing to plot in {plot}: the results have no rate metrics (floats in "
                         "[0, 1]). Leave out --plot, or check the results' `metrics`.")
    tables = [load_predictions(r) for r in all_results] if side_by_side else []
    print_table(task, header, rows, notes)
    if out:
        _write_text(out, render_markdown_table(task, header, rows, notes))
    if plot:
        render_chart(plot, task, all_results, names, rates)
    if side_by_side:
        render = render_side_by_side_html if side_by_side.lower().endswith((".html", ".htm")) \
            else render_side_by_side_markdown
        _write_text(side_by_side, render(task, names, tables))
