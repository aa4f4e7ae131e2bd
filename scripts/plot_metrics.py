"""Loss curves of an llmft run, from its `metrics.jsonl`, as a PNG.

    python scripts/plot_metrics.py outputs/<run> --out loss.png

Plots `train_loss` per optimizer step and, when the run logged it, `valid_loss` at its
evaluation steps. The PNG is written atomically (temp file, then rename).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any


def read_metrics(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of `<run_dir>/metrics.jsonl` (or of the file itself when given one)."""
    path = Path(run_dir)
    path = path / "metrics.jsonl" if path.is_dir() else path
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def loss_series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric; a step logged twice (e.g. after a resume) keeps its last value."""
    by_step = {int(r["step"]): float(r[key]) for r in records if isinstance(r.get(key), (int, float))}
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def plot_loss_curve(run_dir: str | os.PathLike, out: str | os.PathLike, title: str | None = None) -> Path:
    """Write the run's train (and valid) loss curve to `out`; returns the path."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    train_steps, train_loss = loss_series(records, "train_loss")
    if not train_steps:
        raise ValueError(f"{run_dir}: metrics.jsonl has no train_loss records")
    valid_steps, valid_loss = loss_series(records, "valid_loss")
    figure, axes = plt.subplots(figsize=(7, 4))
    axes.plot(train_steps, train_loss, marker="o", markersize=3, label="train_loss")
    if valid_steps:
        axes.plot(valid_steps, valid_loss, marker="s", linestyle="--", label="valid_loss")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss per trained token")
    axes.set_title(title or Path(run_dir).name)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.png")
    figure.savefig(tmp, dpi=120)
    plt.close(figure)
    os.replace(tmp, out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="An llmft run folder (holding metrics.jsonl) or the file itself.")
    parser.add_argument("--out", required=True, help="PNG to write.")
    parser.add_argument("--title", default=None)
    args = parser.parse_args()
    print(plot_loss_curve(args.run_dir, args.out, args.title))


if __name__ == "__main__":
    main()
