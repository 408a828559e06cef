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


def pod_template(workload: dict[str, Any]) -> dict[str, Any]:
    """The pod template of a Deployment, StatefulSet, DaemonSet, Job or CronJob."""
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    return spec["template"]


def pod_volume(spec: dict[str, Any], name: str) -> dict[str, Any]:
    """The volume called ``name`` of a pod spec."""
    (found,) = [volume for volume in spec["volumes"] if volume["name"] == name]
    return found


def secret_file(
    spec: dict[str, Any], container: dict[str, Any], path: str
) -> tuple[str, str]:
    """(Secret name, key) of the file at ``path``, through the container's mounts."""
    for mount in container["volumeMounts"]:
        directory = mount["mountPath"].rstrip("/")
        if path.startswith(directory + "/"):
            source = pod_volume(spec, mount["name"])["secret"]
            file_name = path[len(directory) + 1 :]
            (key,) = [i["key"] for i in source["items"] if i["path"] == file_name]
            return source["secretName"], key
    raise AssertionError(f"no mount provides {path}")


def shell_script(container: dict[str, Any]) -> str:
    """The script of a ``/bin/sh -c`` container, as the shell receives it."""
    command = container["command"]
    assert command[:2] == ["/bin/sh", "-c"]
    # Kubernetes turns "$$" into "$" before the shell sees the command.
    return command[2].replace("$$", "$")
