"""`llmft eval`'s replicas engine: one whole model per Ray worker, fed by Ray Data.

The fastest engine when the model fits one device. Each Ray Data row is one generation batch
(`generation_batches`), so the replicas generate exactly the batches the zero3 engine does.
"""

from __future__ import annotations

from typing import Any

from llmft.config import Config
from llmft.eval.generate import Answer, Generated, Replica


def generate_with_replicas(cfg: Config, prompts: list[str], batches: list[list[int]], *, stop_token: str | None,
                           max_new_tokens: int) -> Generated:
    """Answers to `prompts`, in order, from `cfg.scaling.num_workers` whole-model replicas."""
    import logging

    import ray

    # Ray Data's per-operator progress lines would drown the results table.
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    workers = cfg.world_size
    rows = [{"indices": batch, "prompts": [prompts[i] for i in batch]} for batch in batches]
    dataset = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), workers * 4)))
    results = dataset.map(
        Replica, fn_constructor_kwargs={"cfg": cfg, "stop_token": stop_token, "max_new_tokens": max_new_tokens,
                                        "num_threads": int(cfg.scaling.cpus_per_worker)},
        compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=cfg.scaling.cpus_per_worker,
        num_gpus=1 if cfg.scaling.use_gpu else 0, resources=cfg.scaling.resources_per_worker or None,
    ).take_all()
    answers = {int(i): Answer(str(text), str(reason)) for row in results
               for i, text, reason in zip(row["indices"], row["texts"], row["stop_reasons"])}
    return Generated([answers[i] for i in range(len(prompts))], decoding_seconds=busiest_replica_seconds(results))


def busiest_replica_seconds(rows: list[dict[str, Any]]) -> float:
    """The longest any one replica spent generating: replicas generate side by side, each its
    batches one after another."""
    per_replica: dict[str, float] = {}
    for row in rows:
        per_replica[row["replica"]] = per_replica.get(row["replica"], 0.0) + float(row["seconds"])
    return max(per_replica.values(), default=0.0)
