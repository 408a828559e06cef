"""Lookups in a list of synthesized Kubernetes objects, shared by the tests."""

from __future__ import annotations

from typing import Any


def get(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The one object of ``kind`` named ``name``; fails if not exactly one."""
    found = [
        obj
        for obj in objects
        if obj["kind"] == kind and obj["metadata"]["name"] == name
    ]
    assert len(found) == 1, f"expected one {kind} {name!r}, found {len(found)}"
    return found[0]
