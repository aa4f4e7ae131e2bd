"""`llmft validate`: the resolved config, the values derived from it, and the DeepSpeed JSON."""

from __future__ import annotations

import json
from typing import Any

from llmft.config import Config, resolve_auto
from llmft.models.architecture import local_hidden_size
from llmft.train.deepspeed import build_deepspeed_config, training_dtype


def describe(cfg: Config) -> dict[str, Any]:
    """Everything `validate` shows, as plain data."""
    notes = []
    if "auto" in (cfg.training.epochs, cfg.training.global_batch_size):
        from llmft.data.sources import count_rows

        num_train = count_rows(cfg, "train")
        cfg = resolve_auto(cfg, num_train)
        notes.append(f"`auto` values resolved from {num_train} training examples.")
    hidden = local_hidden_size(cfg.model.name_or_path)
    if hidden is None:
        notes.append("Model config not on disk: ZeRO bucket sizes are filled in at training time.")
    tokens_per_step = cfg.global_batch_size * cfg.data.max_length
    return {
        "config": cfg.model_dump(mode="json"),
        "derived": {
            "world_size": cfg.world_size,
            "micro_batch_size": cfg.training.micro_batch_size,
            "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
            "global_batch_sequences": cfg.global_batch_size,
            "global_batch_tokens_max": tokens_per_step,
            "epochs": cfg.num_epochs,
            "dtype": training_dtype(cfg),
        },
        "deepspeed": build_deepspeed_config(cfg, hidden_size=hidden),
        "notes": notes,
    }


def print_report(report: dict[str, Any]) -> None:
    import yaml
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold green]OK[/] {report['config'].get('source')}")
    console.print(yaml.safe_dump({k: v for k, v in report["config"].items() if k != "source"},
                                 sort_keys=False), highlight=False, markup=False)
    table = Table(title="Derived values", show_header=False)
    for key, value in report["derived"].items():
        table.add_row(key, str(value))
    console.print(table)
    console.print("[bold]DeepSpeed config[/]")
    console.print_json(json.dumps(report["deepspeed"]))
    for note in report["notes"]:
        console.print(f"note: {note}")
