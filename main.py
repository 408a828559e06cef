"""Render every environment in charts/settings/ into dist/, or change nothing.

``cdk8s synth`` runs this file (see cdk8s.yaml); ``python main.py`` does the
same. All settings and rule files are validated, and the rules are checked
with promtool, before anything is written. The manifests are rendered into
a scratch directory and only then swapped into dist/ in one step, so a
failed synth leaves the previous dist/ exactly as it was.

Environment variables:

- ``MONITORING_SETTINGS_DIR``: read environment files from here instead of
  charts/settings/.
- ``MONITORING_DIST_DIR``: publish to this directory instead of dist/.
- ``MONITORING_DEBUG=1``: show the full traceback of an unexpected error.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import constructs_lib  # noqa: F401  (quiets the JavaScript bridge first)

# isort: split
from cdk8s import App, YamlOutputType

from charts.loader import SETTINGS_DIR, load_environments
from charts.monitoring_chart import MonitoringChart
from constructs_lib.common import declared_secrets
from constructs_lib.errors import ConfigurationError
from constructs_lib.integrity import check_references
from constructs_lib.rules import check_with_promtool

ROOT = Path(__file__).resolve().parent


def render(settings_dir: Path, outdir: Path) -> list[Path]:
    """Validate every environment and write one manifest file for each."""
    environments = load_environments(settings_dir)
    app = App(outdir=str(outdir), yaml_output_type=YamlOutputType.FILE_PER_CHART)
    for settings in environments:
        where = f"environment {settings.environment!r}"
        try:
            chart = MonitoringChart(app, settings=settings)
        except ConfigurationError as error:
            raise ConfigurationError(where, str(error)) from None
        check_with_promtool(chart.stack.prometheus.rule_files, where=where)
        problems = check_references(chart.to_json(), declared_secrets(chart))
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise ConfigurationError(where, f"{problems[0]}{more}")
    app.synth()
    return sorted(outdir.glob("*.k8s.yaml"))


def publish(files: list[Path], dist: Path) -> None:
    """Replace ``dist`` with ``files`` in one rename, never half-written."""
    dist.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{dist.name}.new-", dir=dist.parent))
    for path in files:
        shutil.copy2(path, staged / path.name)
    retired = dist.parent / f".{dist.name}.old"
    shutil.rmtree(retired, ignore_errors=True)
    if dist.exists():
        dist.rename(retired)
    staged.rename(dist)
    shutil.rmtree(retired, ignore_errors=True)


def main() -> int:
    settings_dir = Path(os.environ.get("MONITORING_SETTINGS_DIR", SETTINGS_DIR))
    dist = Path(os.environ.get("MONITORING_DIST_DIR", ROOT / "dist"))
    try:
        with tempfile.TemporaryDirectory(prefix="monitoring-synth-") as scratch:
            files = render(settings_dir, Path(scratch))
            publish(files, dist)
            # When run by `cdk8s synth`, also hand the files to the CLI,
            # which lists what it finds in its own output directory.
            cli_outdir = os.environ.get("CDK8S_OUTDIR")
            if cli_outdir:
                Path(cli_outdir).mkdir(parents=True, exist_ok=True)
                for path in files:
                    shutil.copy2(path, Path(cli_outdir) / path.name)
    except ConfigurationError as error:
        print(f"synth failed: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # noqa: BLE001  (one line, not a bridge trace)
        if os.environ.get("MONITORING_DEBUG") == "1":
            raise
        print(
            f"synth failed: unexpected {type(error).__name__}: {error} "
            "(set MONITORING_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
