"""Prometheus alert rule files: load them, validate them, and lint them.

The rule files are shipped to Prometheus verbatim as the keys of one ConfigMap,
so :func:`load_rule_files` returns their original text keyed by file name,
after checking what Prometheus itself would not catch, or would catch only
at run time in the cluster: alert and group names repeated across files,
missing or unknown ``severity`` labels (Alertmanager routes on them), and two
files that would land on the same ConfigMap key.

:func:`check_with_promtool` then asks ``promtool check rules`` about the PromQL
and templates. This module is pure Python and does not import cdk8s.
"""

from __future__ import annotations

import os
import pathlib
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from constructs_lib.errors import ConfigurationError

DEFAULT_RULES_DIR = pathlib.Path(__file__).resolve().parent.parent / "rules"
SEVERITIES = ("critical", "warning", "info")
PROMTOOL_ENV = "PROMTOOL"
RULE_GLOB = "*.yml"
_RULE_FILE_NAME = re.compile(r"^[-._a-zA-Z0-9]+\.yml$")
_CONFIG_MAP_LIMIT_BYTES = 1024 * 1024 - 64 * 1024  # room for the object itself

# promtool checks four small files in well under a second; the bound only
# stops a wedged binary from hanging a synth or a CI run.
_PROMTOOL_TIMEOUT_SECONDS = 60


def default_rule_paths() -> list[pathlib.Path]:
    """The project's built-in rule files in ``rules/``, sorted by name.

    ``.yaml`` files are included so that :func:`load_rule_files` refuses
    them by name instead of leaving them silently unloaded.
    """
    return sorted(
        path
        for path in DEFAULT_RULES_DIR.iterdir()
        if path.suffix in (".yml", ".yaml") and path.is_file()
    )


def load_rule_files(paths: Iterable[pathlib.Path]) -> dict[str, str]:
    """Read and validate rule files; return ``{file name: original text}``.

    Raises :class:`ConfigurationError` naming the file when a file is missing
    or not valid YAML, is not ``{groups: [...]}``, has a rule without ``expr``
    or an alert without a ``severity`` label of critical, warning or info or
    without a ``runbook`` annotation,
    when two files share a file name, or when a group or alert name appears
    more than once across all the given files.
    """
    files: dict[str, str] = {}
    path_of: dict[str, pathlib.Path] = {}
    alerts_seen: dict[str, pathlib.Path] = {}
    groups_seen: dict[str, pathlib.Path] = {}
    total = 0
    for path in paths:
        path = pathlib.Path(path)
        if not _RULE_FILE_NAME.fullmatch(path.name):
            raise ConfigurationError(
                str(path),
                f"file name {path.name!r} must end in '.yml' and use only "
                "letters, digits, '-', '_' and '.': Prometheus loads "
                f"{RULE_GLOB!r}, and the name becomes a ConfigMap key",
            )
        if path.name in path_of:
            raise ConfigurationError(
                str(path),
                f"has the same file name as {path_of[path.name]}; rule files "
                "become keys of one ConfigMap, so their names must differ",
            )
        text = _read(path)
        document = _parse(path, text)
        for group in _groups(path, document):
            name = group["name"]
            if name in groups_seen:
                raise ConfigurationError(
                    str(path),
                    f"rule group {name!r} is already defined in "
                    f"{_other(groups_seen[name], path)}; group names must be "
                    "unique across all rule files",
                )
            groups_seen[name] = path
            for alert in _check_rules(path, group):
                if alert in alerts_seen:
                    raise ConfigurationError(
                        str(path),
                        f"alert {alert!r} is already defined in "
                        f"{_other(alerts_seen[alert], path)}; alert names must "
                        "be unique across all rule files",
                    )
                alerts_seen[alert] = path
        files[path.name] = text
        path_of[path.name] = path
        total += len(text.encode())
        if total > _CONFIG_MAP_LIMIT_BYTES:
            raise ConfigurationError(
                str(path),
                "the rule files together exceed the 1 MiB a ConfigMap can hold",
            )
    return files


def check_with_promtool(files: Mapping[str, str], where: str) -> None:
    """Run ``promtool check rules`` on each rule file text.

    ``files`` maps file names to texts, as :func:`load_rule_files` returns.
    Raises :class:`ConfigurationError` naming the file and promtool's first
    error line, or telling the user to run ``make setup`` when promtool is
    not installed: a missing linter must not pass as a clean lint.
    """
    promtool = find_promtool(where)
    with tempfile.TemporaryDirectory(prefix="rules-check-") as tmp:
        directory = pathlib.Path(tmp)
        for name in sorted(files):
            if pathlib.PurePath(name).name != name or name in ("", ".", ".."):
                raise ConfigurationError(
                    where, f"rule file name {name!r} must be a plain file name"
                )
            (directory / name).write_text(files[name], encoding="utf-8")
        for name in sorted(files):
            # One file per run so a failure is pinned on the right file, and
            # run from the temp dir so promtool prints the bare name, not a
            # temporary path.
            try:
                result = subprocess.run(
                    [promtool, "check", "rules", name],
                    cwd=directory,
                    capture_output=True,
                    text=True,
                    timeout=_PROMTOOL_TIMEOUT_SECONDS,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                raise ConfigurationError(
                    f"{where}, rule file {name}",
                    f"promtool check rules did not finish in "
                    f"{_PROMTOOL_TIMEOUT_SECONDS}s",
                ) from None
            except OSError as error:
                raise ConfigurationError(
                    where, f"could not run promtool at {promtool}: {error}"
                ) from None
            if result.returncode != 0:
                raise ConfigurationError(
                    f"{where}, rule file {name}",
                    "promtool check rules failed: "
                    + _first_error(result.stderr + "\n" + result.stdout, name),
                )


def _read(path: pathlib.Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigurationError(str(path), "rule file does not exist") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigurationError(
            str(path), f"rule file cannot be read: {error}"
        ) from None


class _StrictLoader(yaml.SafeLoader):
    """A safe loader that rejects repeated mapping keys.

    PyYAML keeps the last of two ``expr:`` keys silently, whereas Prometheus
    refuses the file: catch it here so both agree.
    """


def _construct_mapping(
    loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False
) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r}",
                key_node.start_mark,
            )
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)


def load_yaml_strict(text: str) -> Any:
    """``yaml.safe_load`` that refuses a mapping key written twice."""
    return yaml.load(text, Loader=_StrictLoader)


def _parse(path: pathlib.Path, text: str) -> Any:
    try:
        return load_yaml_strict(text)
    except yaml.YAMLError as error:
        raise ConfigurationError(
            str(path), f"not valid YAML: {yaml_problem(error)}"
        ) from None


def yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML error as one line: the problem and where it is."""
    # PyYAML's own message spans several lines with a source excerpt; the
    # problem and its position are what a one-line error needs.
    if isinstance(error, yaml.MarkedYAMLError) and error.problem:
        mark = error.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        return f"{error.problem}{where}"
    return " ".join(str(error).split())


def _groups(path: pathlib.Path, document: Any) -> list[dict[str, Any]]:
    if not isinstance(document, dict) or set(document) != {"groups"}:
        found = (
            f"keys {sorted(map(str, document))}"
            if isinstance(document, dict)
            else type(document).__name__
        )
        raise ConfigurationError(
            str(path),
            f"must be a mapping with the single key 'groups', got {found}",
        )
    groups = document["groups"]
    if not isinstance(groups, list) or not groups:
        raise ConfigurationError(str(path), "'groups' must be a non-empty list")
    for index, group in enumerate(groups, start=1):
        where = f"group {index}"
        if not isinstance(group, dict):
            raise ConfigurationError(str(path), f"{where} must be a mapping")
        name = group.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ConfigurationError(
                str(path), f"{where} needs a non-empty string 'name'"
            )
        rules = group.get("rules")
        if not isinstance(rules, list) or not rules:
            raise ConfigurationError(
                str(path), f"group {name!r} needs a non-empty list 'rules'"
            )
    return groups


def _check_rules(path: pathlib.Path, group: dict[str, Any]) -> list[str]:
    """Validate one group's rules; return its alert names in order."""
    alerts: list[str] = []
    for index, rule in enumerate(group["rules"], start=1):
        where = f"group {group['name']!r}, rule {index}"
        if not isinstance(rule, dict):
            raise ConfigurationError(str(path), f"{where} must be a mapping")
        alert, record = rule.get("alert"), rule.get("record")
        if (alert is None) == (record is None):
            raise ConfigurationError(
                str(path), f"{where} needs exactly one of 'alert' or 'record'"
            )
        if alert is not None:
            if not isinstance(alert, str) or not alert.strip():
                raise ConfigurationError(
                    str(path), f"{where}: 'alert' must be a non-empty string"
                )
            where = f"group {group['name']!r}, alert {alert!r}"
        expr = rule.get("expr")
        if expr is None or (isinstance(expr, str) and not expr.strip()):
            raise ConfigurationError(str(path), f"{where} has no 'expr'")
        if alert is None:
            continue
        labels = rule.get("labels") or {}
        severity = labels.get("severity") if isinstance(labels, dict) else None
        if severity is None:
            raise ConfigurationError(
                str(path),
                f"{where} has no 'severity' label; use one of {', '.join(SEVERITIES)}",
            )
        if severity not in SEVERITIES:
            raise ConfigurationError(
                str(path),
                f"{where} has severity {severity!r}; "
                f"use one of {', '.join(SEVERITIES)}",
            )
        annotations = rule.get("annotations") or {}
        runbook = annotations.get("runbook") if isinstance(annotations, dict) else None
        if not isinstance(runbook, str) or not runbook.strip():
            raise ConfigurationError(
                str(path),
                f"{where} has no 'runbook' annotation; give the page or URL "
                "that tells on-call what to do (docs/runbooks/ for the "
                "built-in alerts)",
            )
        alerts.append(alert)
    return alerts


def _other(first: pathlib.Path, second: pathlib.Path) -> str:
    return "the same file" if first == second else str(first)


def find_promtool(where: str) -> str:
    configured = os.environ.get(PROMTOOL_ENV)
    if configured:
        if os.path.isfile(configured) and os.access(configured, os.X_OK):
            return configured
        raise ConfigurationError(
            where,
            f"{PROMTOOL_ENV}={configured!r} is not an executable file; point it "
            "at promtool or unset it, then run `make setup` to install promtool",
        )
    found = shutil.which("promtool")
    if found is None:
        raise ConfigurationError(
            where,
            "promtool is not installed (not on PATH and $PROMTOOL is unset), so "
            "the alert rules cannot be checked; run `make setup` to install it",
        )
    return found


def _first_error(output: str, name: str) -> str:
    """The first error line promtool printed, without layout noise."""
    lines = [line.strip() for line in output.splitlines()]
    candidates = [
        line
        for line in lines
        if line and line != "FAILED:" and not line.startswith("Checking ")
    ]
    if not candidates:
        return "promtool reported a failure but printed no error"
    first = candidates[0]
    # YAML errors come as a header line ending in ':' with the detail on the
    # next line; one line must carry both to be useful.
    if first.endswith(":") and len(candidates) > 1:
        first = f"{first} {candidates[1]}"
    return first.removeprefix(f"{name}: ")
