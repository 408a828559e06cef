"""Project hygiene: generated docs are current and the code is lint-clean."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

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


def test_code_passes_ruff() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stdout + result.stderr
