"""The README's config reference is the schema's own; its commands exist."""

from __future__ import annotations

import runpy

from tests.support import REPO


def test_config_reference_is_current():
    reference = runpy.run_path(str(REPO / "scripts/config_reference.py"))["reference"]()
    assert reference.strip() in (REPO / "README.md").read_text(), \
        "README.md's config reference is stale: run `python scripts/config_reference.py` and paste it"


def test_readme_names_the_ci_test_command():
    assert "scripts/test.sh" in (REPO / ".ci/run").read_text()
    assert "scripts/test.sh" in (REPO / "README.md").read_text()
