"""Reads each environment's settings file and explains what is wrong with it.

Every ``*.yaml`` file in ``charts/settings/`` is one environment; the file
name is the environment's name. A file is checked in full by the pydantic
models before anything is rendered, and the first problem is reported as one
line naming the environment, the field, the value received and what is
allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from constructs_lib.errors import ConfigurationError
from constructs_lib.rules import load_yaml_strict, yaml_problem
from constructs_lib.stack import StackSettings

SETTINGS_DIR = Path(__file__).resolve().parent / "settings"


def load_environments(directory: Path = SETTINGS_DIR) -> list[StackSettings]:
    """Validate every environment file in ``directory``, sorted by name."""
    paths = sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
    if not paths:
        raise ConfigurationError(
            str(directory),
            "no environment files (*.yaml) found; add one per "
            "environment, e.g. production.yaml",
        )
    stems = [path.stem for path in paths]
    for path in paths:
        if stems.count(path.stem) > 1:
            raise ConfigurationError(
                f"environment {path.stem!r}",
                f"is defined twice ({path.stem}.yaml and {path.stem}.yml); "
                "keep one",
            )
    return [load_environment(path) for path in paths]


def load_environment(path: Path) -> StackSettings:
    """Validate one environment file; its stem must match ``environment``."""
    where = f"environment {path.stem!r} ({path.name})"
    try:
        data = load_yaml_strict(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigurationError(
            where, f"is not valid YAML: {yaml_problem(error)}"
        ) from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ConfigurationError(where, f"cannot be read: {error}") from None
    if not isinstance(data, dict):
        raise ConfigurationError(
            where, f"must be a mapping of settings, got {type(data).__name__}"
        )
    try:
        settings = StackSettings.model_validate(data)
    except ValidationError as error:
        raise ConfigurationError(where, describe(error, StackSettings)) from None
    if settings.environment != path.stem:
        raise ConfigurationError(
            where,
            f"field environment: got {settings.environment!r}; it must match "
            f"the file name {path.stem!r}",
        )
    return settings


def describe(error: ValidationError, model: type[BaseModel]) -> str:
    """The first validation problem as 'field X: got V; what is allowed'."""
    problems = error.errors()
    first = problems[0]
    field = ".".join(str(part) for part in first["loc"])
    if first["type"] == "extra_forbidden":
        allowed = ", ".join(sorted(_fields_at(model, first["loc"][:-1])))
        text = f"field {field}: unknown setting; allowed here: {allowed}"
    elif first["type"] == "missing":
        text = f"field {field}: is required but missing"
    else:
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "value_error" and isinstance(first["input"], dict):
            # A check across a section's fields: the message names them and
            # their values, which the whole section would only bury.
            text = f"field {field}: {message}" if field else message
        else:
            text = f"field {field}: got {_show(first['input'])}; {message}"
    if len(problems) > 1:
        text += f" (and {len(problems) - 1} more problem(s) in this file)"
    return text


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        annotation = current.model_fields[part].annotation
        current = annotation
    if isinstance(current, type) and issubclass(current, BaseModel):
        return list(current.model_fields)
    return []


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
