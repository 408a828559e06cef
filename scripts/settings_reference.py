"""Write docs/settings.md: every environment setting, its default and meaning.

Run ``.venv/bin/python scripts/settings_reference.py`` after changing a
settings model; tests/test_project.py fails while the committed page is stale.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import constructs_lib  # noqa: E402,F401  (quiets the JavaScript bridge first)
from constructs_lib.stack import StackSettings  # noqa: E402

HEADER = """# Environment settings

Generated from the settings models by `scripts/settings_reference.py`; do not
edit by hand. Each environment is one file in `charts/settings/`, named after
the environment. Every key is optional unless its default says "required";
unknown keys are rejected, and values must have the type shown (a quoted
`"2"` is not the number 2).

| setting | default | meaning |
|---|---|---|
"""


def rows(
    model: type[BaseModel], prefix: str = "", defaults: BaseModel | None = None
) -> list[str]:
    """One table row per leaf setting; nested models are flattened."""
    lines = []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        if defaults is not None:
            default = f"`{getattr(defaults, name)!r}`"
        elif field.is_required():
            default = "required"
        else:
            default = f"`{_default_value(field)!r}`"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            nested = (
                getattr(defaults, name)
                if defaults is not None
                else None
                if field.is_required()
                else _default_value(field)
            )
            lines += rows(annotation, f"{path}.", nested)
            continue
        default = default.replace("|", "\\|")
        lines.append(f"| `{path}` | {default} | {field.description or ''} |")
    return lines


def _default_value(field: Any) -> Any:
    if field.default is not PydanticUndefined:
        return field.default
    return field.default_factory()


def render() -> str:
    return HEADER + "\n".join(rows(StackSettings)) + "\n"


if __name__ == "__main__":
    (ROOT / "docs" / "settings.md").write_text(render())
