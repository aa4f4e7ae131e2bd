"""Print the config reference (every field, its type, default and description) as markdown.

README.md's "Config reference" section is this script's output; tests/unit/test_readme.py checks
that the two agree.
"""

from __future__ import annotations

import sys
from typing import get_args

from pydantic import BaseModel

from llmft.config import Config


def _type_name(annotation) -> str:
    text = str(annotation) if get_args(annotation) else getattr(annotation, "__name__", str(annotation))
    for noise in ("typing.", "Literal"):
        text = text.replace(noise, "")
    return text.replace("NoneType", "null").replace("|", "\\|")


def reference() -> str:
    lines = []
    for section, field in Config.model_fields.items():
        model = field.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue
        lines += [f"### `{section}`", "", (model.__doc__ or "").strip(), "",
                  "| key | type | default | description |", "|---|---|---|---|"]
        for name, sub in model.model_fields.items():
            default = "required" if sub.is_required() else repr(sub.get_default(call_default_factory=True))
            description = (sub.description or "").replace("|", "\\|")
            lines.append(f"| `{section}.{name}` | `{_type_name(sub.annotation)}` | `{default}` | {description} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(reference())
