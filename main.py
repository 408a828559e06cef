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

``python main.py --check`` validates and renders without writing anything;
``make synth`` runs it first so that a bad setting stops with one line
before the cdk8s CLI starts.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import constructs_lib  # noqa: F401  (quiets the JavaScript bridge first)

# isort: split
from cdk8s import App, YamlOutputType

from charts.loader import SETTINGS_DIR, load_environments
from charts.monitoring_chart import MonitoringChart
from constructs_lib.common import declared_secrets
from constructs_lib.errors import ConfigurationError
from constructs_lib.integrity import check_references
from constructs_lib.prometheus import check_config_with_promtool
from constructs_lib.rules import check_with_promtool

ROOT = Path(__file__).resolve().parent


def render(
    settings_dir: Path,
    outdir: Path,
    *,
    promtool: bool = True,
    lap: Callable[[str], None] = lambda phase: None,
) -> list[Path]:
    """Validate every environment and write one manifest file for each.

    ``promtool=False`` skips the two promtool runs, and ``lap`` is called at
    the end of each phase (settings, charts, promtool, references, synth):
    the benchmark uses both to time this library's own work.
    """
    environments = load_environments(settings_dir)
    lap("settings")
    app = App(outdir=str(outdir), yaml_output_type=YamlOutputType.FILE_PER_CHART)
    for settings in environments:
        where = f"environment {settings.environment!r}"
        try:
            chart = MonitoringChart(app, settings=settings)
        except ConfigurationError as error:
            raise ConfigurationError(where, str(error)) from None
        lap("charts")
        if promtool:
            prometheus = chart.stack.prometheus
            check_with_promtool(prometheus.rule_files, where=where)
            check_config_with_promtool(prometheus.config, prometheus.rule_files, where)
            lap("promtool")
        problems = check_references(chart.to_json(), declared_secrets(chart))
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise ConfigurationError(where, f"{problems[0]}{more}")
        lap("references")
    app.synth()
    lap("synth")
    return sorted(outdir.glob("*.k8s.yaml"))


def publish(files: list[Path], dist: Path) -> None:
    """Replace ``dist`` with ``files``, never leaving it half-written.

    The new directory is filled beside ``dist`` and renamed into place. A
    ``dist`` that holds anything but rendered manifests is refused rather
    than replaced, so a mistyped MONITORING_DIST_DIR cannot wipe a folder.
    """
    if dist.exists():
        foreign = sorted(
            p.name
            for p in dist.iterdir()
            if not (p.is_file() and p.name.endswith(".k8s.yaml"))
        )
        if foreign:
            raise ConfigurationError(
                str(dist),
                f"holds {', '.join(foreign[:3])}, which synth did not render; "
                "refusing to replace it (point MONITORING_DIST_DIR elsewhere)",
            )
    dist.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{dist.name}.new-", dir=dist.parent))
    staged.chmod(0o755)
    for path in files:
        shutil.copyfile(path, staged / path.name)
        (staged / path.name).chmod(0o644)
    retired = dist.parent / f".{dist.name}.old"
    shutil.rmtree(retired, ignore_errors=True)
    if dist.exists():
        dist.rename(retired)
    staged.rename(dist)
    shutil.rmtree(retired, ignore_errors=True)


def main(argv: list[str]) -> int:
    """Render and publish; with ``--check``, only validate and render."""
    check_only = "--check" in argv
    settings_dir = Path(os.environ.get("MONITORING_SETTINGS_DIR", SETTINGS_DIR))
    dist = Path(os.environ.get("MONITORING_DIST_DIR", ROOT / "dist"))
    try:
        with tempfile.TemporaryDirectory(prefix="monitoring-synth-") as scratch:
            files = render(settings_dir, Path(scratch))
            if check_only:
                return 0
            # When run by `cdk8s synth`, hand the files to the CLI first,
            # which lists what it finds in its own output directory; a
            # failure here must not have touched dist/ yet.
            cli_outdir = os.environ.get("CDK8S_OUTDIR")
            if cli_outdir:
                Path(cli_outdir).mkdir(parents=True, exist_ok=True)
                for path in files:
                    shutil.copyfile(path, Path(cli_outdir) / path.name)
            publish(files, dist)
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
    sys.exit(main(sys.argv[1:]))
