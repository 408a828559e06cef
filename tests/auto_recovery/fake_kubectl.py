"""A stand-in for kubectl 1.27 that replays a canned cluster and records calls.

The auto-recovery tests run the real script with ``PATH`` leading to a
``kubectl`` wrapper that runs this file. It models exactly the commands the
script is allowed to use, and answers anything else with exit status 2 and
a line starting ``fake kubectl: unsupported``, so the script cannot start
relying on a command, flag or output format the tests do not check:

* ``get RESOURCE -n NS -o jsonpath=TEMPLATE``: the namespace's objects as
  the List kubectl builds, printed by the port of kubectl's jsonpath engine
  in :mod:`kube_jsonpath`;
* ``rollout restart deployment/NAME -n NS``;
* ``scale deployment/NAME -n NS [--current-replicas=N] --replicas=M``;
* ``annotate deployment/NAME -n NS --overwrite KEY=VALUE``;
* ``--request-timeout=D`` anywhere.

Every call must name its namespace: the job's Roles are per namespace, and a
call without ``-n`` would run in the job's own namespace.

Environment:

``FAKE_KUBECTL_STATE``
    A JSON file ``{"objects": {KEY: [objects]}, "failures": [...]}``, where
    KEY is ``pods``, ``replicasets``, ``deployments``,
    ``horizontalpodautoscalers`` or ``podmetrics``. Restarts, scales and
    annotations are written back to it. A failure ``{"args": [...], "namespace": NS,
    "stderr": TEXT, "exit": N}`` makes a call whose words start with
    ``args`` (in NS, if given) print TEXT to stderr and exit N.
``FAKE_KUBECTL_LOG``
    A JSON-lines file; each call appends ``{"argv", "namespace", "requests",
    "exit"}``. ``requests`` are the API requests the real kubectl makes for
    the command (verb, group, resource, subresource, name), which the tests
    compare with the job's Role. Discovery requests (``/api``, ``/apis``)
    are left out: every authenticated user may make them
    (``system:discovery``).

What the real kubectl 1.27 requests, from its source:

* ``get RESOURCE -n NS``: ``list`` (cmd/get/get.go; the builder lists in
  chunks of 500, each a ``list``);
* ``rollout restart deployment/NAME``: ``get`` the Deployment (the
  builder's ``Latest()``), then a strategic-merge ``patch`` setting the pod
  template's ``kubectl.kubernetes.io/restartedAt`` annotation
  (cmd/rollout/rollout_restart.go);
* ``scale deployment/NAME --current-replicas=N --replicas=M``: ``get`` the
  Deployment (the builder), then ``get`` and ``update`` of its ``scale``
  subresource, because a precondition is set; without
  ``--current-replicas`` it would ``patch`` the subresource instead
  (cmd/scale/scale.go, scale/scale.go ``ScaleSimple``);
* ``annotate deployment/NAME --overwrite KEY=VALUE``: ``get`` the
  Deployment (the builder's ``Latest()``), then a merge ``patch`` of its
  metadata (cmd/annotate/annotate.go ``RunAnnotate``). Without
  ``--overwrite`` it refuses to change an annotation that is already set.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, datetime
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from kube_jsonpath import JsonPathError, Unsupported, render  # noqa: E402

# The resource names the script uses: (state key, API group, resource).
RESOURCES = {
    "pods": ("pods", "", "pods"),
    "replicasets": ("replicasets", "apps", "replicasets"),
    "deployments": ("deployments", "apps", "deployments"),
    "horizontalpodautoscalers": (
        "horizontalpodautoscalers",
        "autoscaling",
        "horizontalpodautoscalers",
    ),
    "pods.metrics.k8s.io": ("podmetrics", "metrics.k8s.io", "pods"),
}
_VALUE_FLAGS = {
    "-n": "namespace",
    "--namespace": "namespace",
    "-o": "output",
    "--output": "output",
    "--request-timeout": "request-timeout",
    "--current-replicas": "current-replicas",
    "--replicas": "replicas",
}
_BOOLEAN_FLAGS = {"--overwrite": "overwrite"}


class Refused(Exception):
    """A call the fake does not model: exit 2, so the test fails."""


class KubectlError(Exception):
    """A failure the real kubectl would report, with its exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def request(
    verb: str,
    group: str,
    resource: str,
    namespace: str,
    name: str = "",
    subresource: str = "",
) -> dict[str, str]:
    return {
        "verb": verb,
        "group": group,
        "resource": resource,
        "subresource": subresource,
        "namespace": namespace,
        "name": name,
    }


def parse(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    """Split arguments into words and flags, refusing unknown flags."""
    words: list[str] = []
    flags: dict[str, str] = {}
    args = iter(argv)
    for arg in args:
        if not arg.startswith("-"):
            words.append(arg)
            continue
        name, has_value, value = arg.partition("=")
        if name in _BOOLEAN_FLAGS and not has_value:
            key = _BOOLEAN_FLAGS[name]
            if key in flags:
                raise Refused(f"flag {name} given twice")
            flags[key] = "true"
            continue
        if name not in _VALUE_FLAGS:
            raise Refused(f"flag {name}")
        if not has_value:
            value = next(args, None)
            if value is None:
                raise Refused(f"flag {name} without a value")
        key = _VALUE_FLAGS[name]
        if key in flags:
            raise Refused(f"flag {name} given twice")
        flags[key] = value
    return words, flags


def in_namespace(objects: list[dict], namespace: str) -> list[dict]:
    return [o for o in objects if o["metadata"].get("namespace") == namespace]


def deployment(state: dict, namespace: str, name: str) -> dict:
    for obj in in_namespace(state["objects"].get("deployments", []), namespace):
        if obj["metadata"]["name"] == name:
            return obj
    raise KubectlError(
        f'Error from server (NotFound): deployments.apps "{name}" not found'
    )


def deployment_name(word: str) -> str:
    kind, _, name = word.partition("/")
    if kind != "deployment" or not name:
        raise Refused(f"target {word!r} (use deployment/NAME)")
    return name


def run(words: list[str], flags: dict[str, str], state: dict) -> tuple[str, list[dict]]:
    """Carry out one call: what it prints, and the API requests it makes."""
    namespace = flags.get("namespace")
    if not namespace:
        raise Refused("a call without -n NAMESPACE")
    if words[:1] == ["get"] and len(words) == 2:
        if words[1] not in RESOURCES:
            raise Refused(f"resource {words[1]!r}")
        key, group, resource = RESOURCES[words[1]]
        output = flags.get("output", "")
        if not output.startswith("jsonpath="):
            raise Refused(f"output {output!r} (only -o jsonpath=...)")
        requests = [request("list", group, resource, namespace)]
        listing = {
            "apiVersion": "v1",
            "kind": "List",
            "metadata": {"resourceVersion": ""},
            "items": in_namespace(state["objects"].get(key, []), namespace),
        }
        try:
            return render(output.removeprefix("jsonpath="), listing), requests
        except JsonPathError as err:
            raise KubectlError(f"error: error executing jsonpath: {err}") from err
    if words[:2] == ["rollout", "restart"] and len(words) == 3:
        name = deployment_name(words[2])
        requests = [
            request("get", "apps", "deployments", namespace, name),
            request("patch", "apps", "deployments", namespace, name),
        ]
        obj = deployment(state, namespace, name)
        if obj["spec"].get("paused"):
            raise KubectlError(
                f'error: deployments.apps "{name}" can\'t restart paused '
                "deployment (run rollout resume first)"
            )
        template = obj["spec"]["template"].setdefault("metadata", {})
        template.setdefault("annotations", {})["kubectl.kubernetes.io/restartedAt"] = (
            datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        )
        return f"deployment.apps/{name} restarted\n", requests
    if words[:1] == ["scale"] and len(words) == 2:
        name = deployment_name(words[1])
        if "replicas" not in flags:
            raise Refused("scale without --replicas")
        requests = [request("get", "apps", "deployments", namespace, name)]
        if "current-replicas" in flags:
            requests += [
                request("get", "apps", "deployments", namespace, name, "scale"),
                request("update", "apps", "deployments", namespace, name, "scale"),
            ]
        else:
            requests.append(
                request("patch", "apps", "deployments", namespace, name, "scale")
            )
        obj = deployment(state, namespace, name)
        current = obj["spec"].get("replicas", 1)
        expected = flags.get("current-replicas")
        if expected is not None and int(expected) != current:
            raise KubectlError(
                f"error: Expected replicas to be {expected}, was {current}"
            )
        obj["spec"]["replicas"] = int(flags["replicas"])
        return f"deployment.apps/{name} scaled\n", requests
    if words[:1] == ["annotate"] and len(words) == 3:
        name = deployment_name(words[1])
        key, has_value, value = words[2].partition("=")
        if not has_value or not key or not value:
            raise Refused(f"annotation {words[2]!r} (use KEY=VALUE)")
        requests = [
            request("get", "apps", "deployments", namespace, name),
            request("patch", "apps", "deployments", namespace, name),
        ]
        obj = deployment(state, namespace, name)
        annotations = obj["metadata"].setdefault("annotations", {})
        if key in annotations and "overwrite" not in flags:
            raise KubectlError(
                f"error: --overwrite is false but found the following declared "
                f"annotation(s): '{key}' already has a value ({annotations[key]})"
            )
        annotations[key] = value
        return f"deployment.apps/{name} annotated\n", requests
    raise Refused(f"command {' '.join(words)!r}")


def injected_failure(
    words: list[str], flags: dict[str, str], state: dict
) -> dict[str, Any] | None:
    for failure in state.get("failures", []):
        args = failure["args"]
        if words[: len(args)] != args:
            continue
        if failure.get("namespace") not in (None, flags.get("namespace")):
            continue
        return failure
    return None


def main(argv: list[str]) -> int:
    state_path = os.environ["FAKE_KUBECTL_STATE"]
    with open(state_path) as file:
        state = json.load(file)
    record: dict[str, Any] = {"argv": argv, "namespace": None, "requests": []}
    status = 0
    try:
        words, flags = parse(argv)
        record["namespace"] = flags.get("namespace")
        failure = injected_failure(words, flags, state)
        try:
            output, record["requests"] = run(words, flags, state)
        except KubectlError:
            if failure is None:
                raise
            output = ""
        if failure is not None:
            raise KubectlError(failure["stderr"], failure.get("exit", 1))
        sys.stdout.write(output)
        with open(state_path, "w") as file:
            json.dump(state, file)
    except (Refused, Unsupported) as err:
        sys.stderr.write(f"fake kubectl: unsupported: {err}\n")
        record["unsupported"] = str(err)
        status = 2
    except KubectlError as err:
        sys.stderr.write(f"{err}\n")
        status = err.status
    record["exit"] = status
    with open(os.environ["FAKE_KUBECTL_LOG"], "a") as file:
        file.write(json.dumps(record) + "\n")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
