"""The generated settings reference is current."""

from __future__ import annotations

import importlib.util

from tests.conftest import ROOT


def test_settings_reference_matches_the_models() -> None:
    spec = importlib.util.spec_from_file_location(
        "settings_reference", ROOT / "scripts" / "settings_reference.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    committed = (ROOT / "docs" / "settings.md").read_text()

    assert committed == module.render(), (
        "docs/settings.md is stale: run .venv/bin/python scripts/settings_reference.py"
    )
