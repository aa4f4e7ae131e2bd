"""The shipped Llama-2 recipe configs and the distinct DeepSpeed setups they run."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support import REPO


def shipped_recipes() -> list[Path]:
    """configs/<task>/llama-2-{7b,13b,70b}.yaml for every task."""
    return sorted(REPO.glob("configs/*/llama-2-*.yaml"))


def setup_key(setup: dict) -> str:
    return json.dumps(setup, sort_keys=True)


def recipes_by_setup() -> dict[str, list[Path]]:
    """The shipped recipes grouped by the DeepSpeed setup their smoke run executes."""
    from llmft.config import load_config
    from llmft.smoke import plan_smoke, setup_of

    groups: dict[str, list[Path]] = {}
    for path in shipped_recipes():
        plan = plan_smoke(load_config(path), out_dir=Path("/nonexistent"), cpus=2, gpus=0)
        groups.setdefault(setup_key(setup_of(plan.config)), []).append(path)
    return groups
