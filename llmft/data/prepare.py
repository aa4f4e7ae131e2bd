"""`llmft prepare CONFIG`: check, tokenize and cache the data, and report on it.

OpenAI's `prepare_data` checks and more, per configured split: row counts; malformed rows with
file and line (then nothing is tokenized or written and the command exits 2); duplicate rows and
valid/test prompts that also occur in train; rows over `data.max_length` counted with the real
tokenizer; p50/p90/p99/max token lengths of prompt and completion; for prompt_completion data,
whether prompts share a common ending separator and completions a common ending; trained tokens
per epoch; padding efficiency with and without packing; and a few examples rendered with trained
tokens told apart from masked ones (green vs dim in a terminal, `⟦...⟧` around trained text
otherwise). The tokenized splits are left in the cache for `llmft train`.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from llmft.data.batching import pack_examples, plan_epoch
from llmft.data.sources import SPLITS, SourceRows, read_rows, source_of
from llmft.data.tokenize import cache_path, formatter_for, special_token_boundary_ok, table_stats, tokenize_split
from llmft.errors import LlmftError
from llmft.tasks import Task, get_task

EXAMPLES_SHOWN = 2
PERCENTILES = (50, 90, 99)


def run_prepare(cfg, as_json: bool, tokenizer=None) -> None:
    """Print the data report for `cfg` (JSON with `as_json`); LlmftError (exit 2) on malformed rows."""
    report = build_report(cfg, tokenizer)
    if as_json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
    else:
        print_report(report)
    if report["malformed"]:
        count = sum(len(v) for v in report["malformed"].values())
        first = next(iter(report["malformed"].values()))[0]
        raise LlmftError(f"{count} malformed row(s) (first: {first}); nothing was tokenized or "
                         "written. Fix or remove them and run `llmft prepare` again.")


def build_report(cfg, tokenizer=None) -> dict[str, Any]:
    """Everything `prepare` shows, as plain data (tokenizing and caching the splits on the way)."""
    task = get_task(cfg.data.task)
    splits = [s for s in SPLITS if source_of(cfg, s) is not None]
    rows = {split: read_rows(cfg, split) for split in splits}
    report: dict[str, Any] = {
        "config": cfg.source, "task": task.name, "max_length": cfg.data.max_length,
        "over_length_policy": cfg.data.over_length, "splits": {}, "warnings": [],
        "malformed": {split: r.problems for split, r in rows.items() if r.problems},
    }
    if report["malformed"]:
        for split in splits:
            report["splits"][split] = {"source": rows[split].source, "rows": len(rows[split].rows),
                                       "malformed": len(rows[split].problems)}
        return report

    if tokenizer is None:
        from llmft.models.tokenizer import load_task_tokenizer

        tokenizer = load_task_tokenizer(cfg)
    report["tokenizer"] = {"name": getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__,
                           "vocab": len(tokenizer)}
    report["warnings"] += _tokenizer_warnings(task, tokenizer)
    formatter = formatter_for(task, tokenizer)
    train_prompts = {formatter(row).prompt for row in rows["train"].rows} if "train" in rows else set()
    tables = {}
    for split in splits:
        table = tokenize_split(cfg, tokenizer, split)
        tables[split] = table
        report["splits"][split] = _split_report(table, rows[split], formatter, split, train_prompts)
        report["splits"][split]["cache"] = str(cache_path(cfg, tokenizer, split))
        report["warnings"] += _split_warnings(report["splits"][split], split, cfg)
    if task.data_checks is not None and "train" in rows:
        report[task.name] = task.data_checks(rows["train"].rows)
        report["warnings"] += report[task.name]["warnings"]
    if "train" in tables:
        report["training"] = _training_report(cfg, tables["train"])
        report["examples"] = _rendered_examples(tables["train"], rows["train"], tokenizer)
    return report


# ------------------------------------------------------------------------------- pieces


def _tokenizer_warnings(task: Task, tokenizer) -> list[str]:
    vocab = tokenizer.get_vocab()
    bad = [t for t in task.special_tokens if t in vocab and not special_token_boundary_ok(tokenizer, t)]
    if not bad:
        return []
    return [f"Text right after the special token {bad[0]} tokenizes differently from the same text on "
            "its own (a sentencepiece tokenizer loaded with legacy=False). Training still works, but on "
            "unusual pieces; load Llama tokenizers with legacy=True."]


def _percentiles(values: np.ndarray) -> dict[str, int]:
    if len(values) == 0:
        return {f"p{p}": 0 for p in PERCENTILES} | {"max": 0}
    out = {f"p{p}": int(np.percentile(values, p, method="higher")) for p in PERCENTILES}
    return out | {"max": int(values.max())}


def _split_report(table, rows: SourceRows, formatter, split: str, train_prompts: set[str]) -> dict[str, Any]:
    stats = table_stats(table)
    lengths = table.column("length").to_numpy()
    prompt_lengths = table.column("prompt_length").to_numpy()
    first_seen: dict[str, str] = {}  # formatted text -> where it first occurs
    duplicates: list[str] = []
    prompts = []
    for row, where in zip(rows.rows, rows.where):
        example = formatter(row)
        text = "".join(s.text for s in example.segments)
        if text in first_seen:
            duplicates.append(f"{where} repeats {first_seen[text]}")
        else:
            first_seen[text] = where
        prompts.append(example.prompt)
    overlap = 0 if split == "train" else sum(1 for p in prompts if p in train_prompts)
    return {
        "source": rows.source,
        "rows": len(rows.rows),
        "malformed": 0,
        "examples": table.num_rows,
        "duplicates": len(duplicates),
        "duplicate_rows": duplicates[:10],
        "prompts_also_in_train": overlap,
        "over_length": stats.get("over_length", 0),
        "over_length_rows": stats.get("over_length_rows", [])[:10],
        "truncated": stats.get("truncated", 0),
        "dropped_over_length": stats.get("dropped_over_length", 0),
        "dropped_untrained": stats.get("dropped_untrained", 0),
        "longest": stats.get("longest", int(lengths.max(initial=0))),
        "prompt_tokens": _percentiles(prompt_lengths),
        "completion_tokens": _percentiles(lengths - prompt_lengths),
        "total_tokens": _percentiles(lengths),
        "trained_tokens": int(table.column("num_trained").to_numpy().sum()),
    }


def _split_warnings(split_report: dict, split: str, cfg) -> list[str]:
    warnings = []
    if split_report["duplicates"]:
        warnings.append(f"{split}: {split_report['duplicates']} duplicate row(s), e.g. "
                        f"{split_report['duplicate_rows'][0]}.")
    if split_report["prompts_also_in_train"]:
        warnings.append(f"{split}: {split_report['prompts_also_in_train']} prompt(s) also occur in train, "
                        "so its metrics overstate generalisation.")
    if split_report["over_length"]:
        what = {"drop": "dropped", "truncate": "truncated", "error": "refused"}[cfg.data.over_length]
        warnings.append(f"{split}: {split_report['over_length']} row(s) are longer than data.max_length = "
                        f"{cfg.data.max_length} tokens (longest {split_report['longest']}) and were {what} "
                        f"(data.over_length), e.g. {split_report['over_length_rows'][0]}.")
    if split_report["dropped_untrained"]:
        warnings.append(f"{split}: {split_report['dropped_untrained']} row(s) had no trained token left and "
                        "were dropped.")
    if split_report["examples"] == 0:
        warnings.append(f"{split}: no example is left to train or evaluate on.")
    return warnings


def _training_report(cfg, table) -> dict[str, Any]:
    from llmft.config import resolve_auto

    lengths = table.column("length").to_numpy().astype(np.int64)
    resolved = resolve_auto(cfg, len(lengths))
    batch = resolved.global_batch_size
    max_length = cfg.data.max_length
    packed_rows = len(pack_examples(lengths, max_length))
    tokens = int(lengths.sum())
    return {
        "examples_per_epoch": len(lengths),
        "trained_tokens_per_epoch": int(table.column("num_trained").to_numpy().sum()),
        "tokens_per_epoch": tokens,
        "packing": cfg.data.packing,
        "global_batch_size": batch,
        "steps_per_epoch_packed": -(-packed_rows // batch) if packed_rows else 0,
        "steps_per_epoch_unpacked": -(-len(lengths) // batch) if len(lengths) else 0,
        "padding_efficiency": {
            "packing": round(tokens / (packed_rows * max_length), 4) if packed_rows else 0.0,
            "length_grouped_padding": _padding_efficiency(resolved, lengths),
            "padding_to_max_length": round(tokens / (len(lengths) * max_length), 4) if len(lengths) else 0.0,
        },
    }


def _padding_efficiency(cfg, lengths: np.ndarray) -> float:
    """Real tokens / padded tokens when micro-batches are padded to their longest example."""
    if not len(lengths):
        return 0.0
    plan = plan_epoch(lengths, epoch=0, seed=cfg.training.seed, max_length=cfg.data.max_length,
                      packing=False, global_batch_size=cfg.global_batch_size)
    # Workers' slices of a global batch, and the micro-batches in them, are consecutive rows of
    # the plan: every `micro_batch_size` rows form one micro-batch.
    micro = cfg.training.micro_batch_size
    widths = np.maximum.reduceat(plan.rows.tokens(lengths), np.arange(0, len(plan.rows), micro))
    padded = int(np.maximum(widths, 1).sum()) * micro
    return round(int(lengths.sum()) / padded, 4) if padded else 0.0


def _rendered_examples(table, rows: SourceRows, tokenizer) -> list[dict[str, Any]]:
    shown = []
    for record in table.slice(0, EXAMPLES_SHOWN).to_pylist():
        pieces = _token_texts(tokenizer, record["input_ids"])
        runs: list[dict[str, Any]] = []
        for piece, label in zip(pieces, record["labels"]):
            trained = label != -100
            if runs and runs[-1]["trained"] == trained:
                runs[-1]["text"] += piece
            else:
                runs.append({"text": piece, "trained": trained})
        shown.append({"row": rows.where[record["row_index"]], "tokens": record["length"],
                      "trained_tokens": record["num_trained"], "runs": runs})
    return shown


def _token_texts(tokenizer, ids: list[int]) -> list[str]:
    """The text each token adds, from decoding growing prefixes (works for any tokenizer type)."""
    pieces, previous = [], ""
    for k in range(len(ids)):
        text = tokenizer.decode(ids[:k + 1], skip_special_tokens=False)
        if text.startswith(previous):
            pieces.append(text[len(previous):])
        else:
            pieces.append(tokenizer.convert_ids_to_tokens(ids[k]))
        previous = text
    return pieces


# ------------------------------------------------------------------------------- output


def print_report(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console()
    if report["malformed"]:
        console.print(f"[bold red]Malformed rows[/] in the data of {report['config'] or 'this config'}:")
        for split, problems in report["malformed"].items():
            for problem in problems:
                # soft_wrap: keep "file line N" whole for copying and grepping
                console.print(f"  data.{split}: {problem}", markup=False, highlight=False, soft_wrap=True)
        return
    console.print(f"[bold]Data report[/] for {report['config']} (task {report['task']}, tokenizer "
                  f"{report['tokenizer']['name']}, {report['tokenizer']['vocab']} tokens)", highlight=False)
    table = Table(title=f"Splits (max_length {report['max_length']}, over_length: {report['over_length_policy']})")
    for column in ("split", "rows", "exam-\nples", "dupli-\ncates", "over\nlen", "prompt\np50/90/99/max",
                   "completion\np50/90/99/max", "trained\ntokens"):
        table.add_column(column, overflow="fold")
    for split, s in report["splits"].items():
        table.add_row(split, str(s["rows"]), str(s["examples"]), str(s["duplicates"]),
                      str(s["over_length"]), _fmt_percentiles(s["prompt_tokens"]),
                      _fmt_percentiles(s["completion_tokens"]), f"{s['trained_tokens']:,}")
    for split, s in report["splits"].items():
        console.print(f"  data.{split}: {s['source']}", highlight=False)
    console.print(table)
    if "training" in report:
        t = report["training"]
        eff = t["padding_efficiency"]
        console.print(
            f"Training: {t['examples_per_epoch']:,} examples, [bold]{t['trained_tokens_per_epoch']:,} trained "
            f"tokens per epoch[/] of {t['tokens_per_epoch']:,}. Global batch {t['global_batch_size']}: "
            f"{t['steps_per_epoch_packed']} steps/epoch packed, {t['steps_per_epoch_unpacked']} unpacked.")
        console.print(
            f"Padding efficiency (real / computed tokens): packing {eff['packing']:.1%}, length-grouped "
            f"padding {eff['length_grouped_padding']:.1%}, padding to max_length "
            f"{eff['padding_to_max_length']:.1%}. Packing is {'on' if t['packing'] else 'off'} (data.packing).")
    checks = report.get(report["task"])  # the task's own data checks, if it has any
    if checks:
        details = "; ".join(f"{key.replace('_', ' ')}: {value!r}" for key, value in checks.items() if key != "warnings")
        console.print(f"{report['task']} checks: {details}.", markup=False, highlight=False)
    for warning in report["warnings"]:
        console.print(Text("warning: ", style="bold yellow") + Text(warning))
    for example in report.get("examples", []):
        colour = console.is_terminal and not console.no_color
        legend = "green: trained, dim: masked" if colour else "⟦trained⟧, the rest masked"
        console.print(f"\n[bold]{example['row']}[/] ({example['tokens']} tokens, {example['trained_tokens']} "
                      f"trained; {legend}):", highlight=False)
        text = Text()
        for run in example["runs"]:
            if colour:
                text.append(run["text"], style="bold green" if run["trained"] else "dim")
            else:
                text.append(f"⟦{run['text']}⟧" if run["trained"] else run["text"])
        console.print(text)
    console.print("\nTokenized splits cached: " + ", ".join(
        f"{split} -> {s['cache']}" for split, s in report["splits"].items()), highlight=False)


def _fmt_percentiles(p: dict[str, int]) -> str:
    return "/".join(str(p[k]) for k in ("p50", "p90", "p99", "max"))
