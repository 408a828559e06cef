"""The ``auto-recovery`` CronJob: restarts crash-looping Deployments and adds
a replica to Deployments whose containers run close to their memory limit.

The script, ``auto_recovery.sh`` beside this module, is shipped in a
ConfigMap and run with ``/bin/sh`` in a kubectl image; its header says what
it counts and logs. This module renders the objects around it:

* a ServiceAccount in the stack's namespace;
* in each namespace the job acts in, a Role granting exactly the requests
  the script's kubectl commands make, and a RoleBinding to that account.
  The script never lists across namespaces, so nothing is cluster-wide. In
  dry-run mode the Role is read-only: the job cannot change what it only
  reports on;
* the CronJob, one run at a time (``concurrencyPolicy: Forbid``), a missed
  run dropped rather than caught up, each run bounded in time.

What the original design's job got wrong, and what replaces it: its image
(``ghcr.io/sunday/auto-recovery:latest``) does not exist publicly and moved
with every push, so a pinned public kubectl image runs it; it had no
ServiceAccount or RBAC, so every call was refused; it compared
``kubectl top``'s text ("512Mi") with 80, so memory is now compared in bytes
against each container's limit; it found Deployments by an ``app`` label,
so pods are now traced through their ReplicaSet's ownerReferences; it
counted completed Job pods as unhealthy; it scaled Deployments an
autoscaler owns, and restarted and scaled the same Deployment every minute.

The image: Bitnami's kubectl image, the last 1.27 build (1.27.14, on Debian
12), which has the shell (dash), awk (mawk) and coreutils the script uses.
Bitnami moved its versioned tags from ``bitnami/`` to ``bitnamilegacy/`` in
2025, where they no longer receive updates; the official
``registry.k8s.io/kubectl`` images start at 1.28 and have no shell, and
``rancher/kubectl`` is built from scratch. Mirror the image, or pin its
digest, before relying on it in production.
"""

from __future__ import annotations

import re
from pathlib import Path

from constructs import Construct
from pydantic import Field, ValidationInfo, field_validator, model_validator

from constructs_lib.common import (
    DnsLabel,
    DurationOrZero,
    Image,
    Resources,
    StrictModel,
    config_map_volume,
    container_security,
    duration_seconds,
    image_tag,
    metadata,
    mount,
    pod_security,
    pull_policy,
    scan_exceptions,
    service_account,
    standard_labels,
)
from imports import k8s

NAME = "auto-recovery"
SCRIPT = Path(__file__).with_name("auto_recovery.sh")
SCRIPT_KEY = "auto-recovery.sh"
SCRIPT_DIR = "/opt/auto-recovery"
TMP_DIR = "/tmp"
KUBECTL_UID = 11004
"""A uid of its own above the range hosts hand out (docs/security.md), not
the Bitnami image's 1001; kubectl needs no /etc/passwd entry for it."""

STARTING_DEADLINE_SECONDS = 50
"""A run that cannot start within this of its minute is dropped: the next
one reads the cluster afresh. Setting it also stops the CronJob controller
from giving up after 100 missed runs."""

ACTIVE_DEADLINE_SECONDS = 240
"""Each kubectl call gives up after 20 seconds, so a run over a few
namespaces ends well within this; one that hangs longer is killed."""

MIN_COOLDOWN_SECONDS = 300
"""Neither cooldown may be shorter than 5m: a Deployment restarted or scaled
needs minutes to roll out, and a shorter cooldown would act again on a
picture the last action has not changed yet."""

SCALED_AT_ANNOTATION = "monitoring.sunday.com/auto-recovery-scaled-at"
"""Set on a Deployment, to the time (UTC, RFC 3339), each time the job scales
it; the scale cooldown reads it. The script writes the same name."""

# The five fields of a CronJob schedule (robfig/cron's standard parser,
# which the CronJob controller uses): name, lowest, highest.
_CRON_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 6),
)
_CRON_ITEM = re.compile(r"^(\*|([0-9]+)(?:-([0-9]+))?)(?:/([0-9]+))?$")


def _cron_field(schedule: str, text: str, name: str, low: int, high: int) -> None:
    """Raise ValueError unless ``text`` is a valid cron field."""

    def bad(why: str) -> ValueError:
        return ValueError(
            f"schedule {schedule!r}: {name} field {text!r} {why} (each field is "
            f"'*' or a number from {low} to {high}, a range 'N-M', or a list "
            "of them separated by ',', each optionally with a step '/S', S > 0)"
        )

    for item in text.split(","):
        match = _CRON_ITEM.fullmatch(item)
        if match is None:
            raise bad(f"has an invalid part {item!r}")
        _, first, last, step = match.groups()
        if step is not None and int(step) == 0:
            raise bad("has a step of 0")
        if step is not None and first is not None and last is None:
            raise bad(f"has a step on a single number in {item!r}; use 'N-M/S'")
        for number in (first, last):
            if number is not None and not low <= int(number) <= high:
                raise bad(f"has {number}, outside {low}-{high}")
        if first is not None and last is not None and int(first) > int(last):
            raise bad(f"has the range {first}-{last}, which runs backwards")


def validate_schedule(schedule: str) -> str:
    """Return ``schedule`` if it is a five-field numeric cron schedule."""
    fields = schedule.split(" ")
    if len(fields) != len(_CRON_FIELDS) or "" in fields:
        raise ValueError(
            f"schedule {schedule!r} must be five fields separated by single "
            "spaces: minute hour day-of-month month day-of-week"
        )
    for text, (name, low, high) in zip(fields, _CRON_FIELDS, strict=True):
        _cron_field(schedule, text, name, low, high)
    return schedule


# System namespaces hold the cluster's own components, which this job must
# not restart or scale.
_SYSTEM_NAMESPACES = {"kube-system", "kube-public", "kube-node-lease"}

# The API requests each of the script's commands makes (kubectl 1.27):
# every read is a list in one namespace; `kubectl rollout restart` gets the
# Deployment and patches its pod template; `kubectl scale
# --current-replicas` gets the Deployment, then gets and updates its scale
# subresource; `kubectl annotate`, which records when it scaled, gets the
# Deployment and patches its metadata. tests/auto_recovery/fake_kubectl.py
# cites the sources, and the tests compare these rules with the requests the
# script makes.
_READS: list[tuple[str, str, tuple[str, ...]]] = [
    ("", "pods", ("list",)),
    ("apps", "replicasets", ("list",)),
    ("apps", "deployments", ("list",)),
    ("autoscaling", "horizontalpodautoscalers", ("list",)),
    ("metrics.k8s.io", "pods", ("list",)),
]
_WRITES: list[tuple[str, str, tuple[str, ...]]] = [
    ("apps", "deployments", ("get", "patch")),
    ("apps", "deployments/scale", ("get", "update")),
]


class AutoRecoverySettings(StrictModel):
    """How the auto-recovery job runs, and where it may act."""

    namespaces: list[DnsLabel] = Field(
        min_length=1,
        description="Required: the namespaces whose Deployments the job "
        "restarts and scales, each given a Role, e.g. ['sunday-production']. "
        "No default, so that a new environment never acts on another "
        "environment's application.",
    )
    dry_run: bool = Field(
        default=True,
        description="Log what the job would do and change nothing; its Roles "
        "then grant only reads. Defaults to on, so an environment acts only "
        "once its settings say so.",
    )
    schedule: str = Field(
        default="* * * * *",
        description="When the job runs, as a five-field cron schedule of "
        "numbers: each field '*', a number within the field's range (minute "
        "0-59, hour 0-23, day of month 1-31, month 1-12, day of week 0-6), a "
        "range 'N-M', or a comma-separated list of these, each optionally "
        "with a step '/S' (S > 0). Defaults to every minute, as in the "
        "design.",
    )
    image: Image = Field(
        default="docker.io/bitnamilegacy/kubectl:1.27.14",
        description="A kubectl image with /bin/sh, awk and coreutils. Defaults "
        "to Bitnami's kubectl 1.27.14, the cluster's minor version.",
    )
    unhealthy_threshold: int = Field(
        default=5,
        ge=0,
        description="Restart failing Deployments only while more pods than "
        "this, over all the namespaces, are unhealthy. Defaults to 5.",
    )
    memory_threshold_percent: int = Field(
        default=80,
        ge=1,
        le=100,
        description="Add a replica when a container uses more than this "
        "percentage of its memory limit. Defaults to 80.",
    )
    max_replicas: int = Field(
        default=10,
        ge=1,
        description="Never scale a Deployment above this. Defaults to 10.",
    )
    restart_cooldown: DurationOrZero = Field(
        default="30m",
        description="Leave a Deployment restarted (by the job or anyone) less "
        "than this long ago alone. At least 5m. Defaults to 30m.",
    )
    scale_cooldown: DurationOrZero = Field(
        default="10m",
        description="Leave a Deployment the job scaled less than this long "
        f"ago (its {SCALED_AT_ANNOTATION} annotation) alone, so that each "
        "added replica settles before the next. At least 5m. Defaults to 10m.",
    )
    max_restarts_per_run: int = Field(
        default=3,
        ge=1,
        description="Restart at most this many Deployments in one run; the "
        "rest are logged as skipped and wait for a later run. Defaults to 3.",
    )
    max_scales_per_run: int = Field(
        default=3,
        ge=1,
        description="Scale at most this many Deployments in one run; the rest "
        "are logged as skipped and wait for a later run. Defaults to 3.",
    )
    resources: Resources = Field(
        default=Resources(
            cpu_request="50m",
            memory_request="64Mi",
            cpu_limit="500m",
            memory_limit="256Mi",
        ),
        description="Container resources. kubectl's start-up (API discovery) "
        "is the peak.",
    )

    @field_validator("schedule")
    @classmethod
    def _schedule_is_cron(cls, value: str) -> str:
        return validate_schedule(value)

    @field_validator("restart_cooldown", "scale_cooldown")
    @classmethod
    def _cooldown_is_long_enough(cls, value: str, info: ValidationInfo) -> str:
        if duration_seconds(value) < MIN_COOLDOWN_SECONDS:
            raise ValueError(
                f"{info.field_name} must be at least 5m, not {value!r}: a "
                "shorter cooldown acts again before the last change has "
                "rolled out"
            )
        return value

    @model_validator(mode="after")
    def _namespaces_are_apps(self) -> AutoRecoverySettings:
        duplicates = sorted(
            {n for n in self.namespaces if self.namespaces.count(n) > 1}
        )
        if duplicates:
            raise ValueError(f"namespaces lists {duplicates} more than once")
        system = sorted(set(self.namespaces) & _SYSTEM_NAMESPACES)
        if system:
            raise ValueError(
                f"namespaces {system} hold the cluster's own components; the "
                "job must not restart or scale them"
            )
        return self


def role_rules(dry_run: bool) -> list[k8s.PolicyRule]:
    """The Role of each namespace: reads, and the writes unless dry-run."""
    verbs: dict[tuple[str, str], set[str]] = {}
    for group, resource, granted in _READS + ([] if dry_run else _WRITES):
        verbs.setdefault((group, resource), set()).update(granted)
    return [
        k8s.PolicyRule(api_groups=[group], resources=[resource], verbs=sorted(v))
        for (group, resource), v in sorted(verbs.items())
    ]


def script_environment(settings: AutoRecoverySettings) -> dict[str, str]:
    """The variables the script reads (its header describes them)."""
    return {
        "NAMESPACES": " ".join(settings.namespaces),
        "DRY_RUN": "true" if settings.dry_run else "false",
        "UNHEALTHY_THRESHOLD": str(settings.unhealthy_threshold),
        "MEMORY_THRESHOLD_PERCENT": str(settings.memory_threshold_percent),
        "MAX_REPLICAS": str(settings.max_replicas),
        "RESTART_COOLDOWN_SECONDS": str(
            int(duration_seconds(settings.restart_cooldown))
        ),
        "SCALE_COOLDOWN_SECONDS": str(int(duration_seconds(settings.scale_cooldown))),
        "MAX_RESTARTS_PER_RUN": str(settings.max_restarts_per_run),
        "MAX_SCALES_PER_RUN": str(settings.max_scales_per_run),
    }


class AutoRecovery(Construct):
    """The auto-recovery CronJob, its script, and per-namespace RBAC."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        settings: AutoRecoverySettings,
        namespace: str,
    ) -> None:
        super().__init__(scope, id)
        self.settings = settings
        labels = standard_labels(NAME, "auto-recovery", image_tag(settings.image))

        service_account(self, "sa", name=NAME, namespace=namespace, labels=labels)
        # Named after the stack's namespace: the Role lives in an
        # application namespace, where it must say whose it is.
        role = f"{NAME}-{namespace}"
        for target in sorted(settings.namespaces):
            k8s.KubeRole(
                self,
                f"role-{target}",
                metadata=metadata(role, labels, target),
                rules=role_rules(settings.dry_run),
            )
            k8s.KubeRoleBinding(
                self,
                f"binding-{target}",
                metadata=metadata(role, labels, target),
                role_ref=k8s.RoleRef(
                    api_group="rbac.authorization.k8s.io", kind="Role", name=role
                ),
                subjects=[
                    k8s.Subject(kind="ServiceAccount", name=NAME, namespace=namespace)
                ],
            )

        k8s.KubeConfigMap(
            self,
            "script",
            metadata=metadata(NAME, labels, namespace),
            data={SCRIPT_KEY: SCRIPT.read_text()},
        )

        env = {
            **script_environment(settings),
            # kubectl keeps its discovery cache under $HOME/.kube; the root
            # file system is read-only, /tmp is not.
            "HOME": TMP_DIR,
        }
        container = k8s.Container(
            name=NAME,
            image=settings.image,
            image_pull_policy=pull_policy(settings.image),
            command=["/bin/sh", f"{SCRIPT_DIR}/{SCRIPT_KEY}"],
            env=[k8s.EnvVar(name=key, value=value) for key, value in env.items()],
            resources=settings.resources.to_k8s(),
            security_context=container_security(),
            volume_mounts=[
                mount("script", SCRIPT_DIR),
                mount("tmp", TMP_DIR, read_only=False),
            ],
        )
        pod = k8s.PodSpec(
            service_account_name=NAME,
            # kubectl calls the API server with the ServiceAccount's token.
            automount_service_account_token=True,
            restart_policy="Never",
            security_context=pod_security(KUBECTL_UID),
            containers=[container],
            volumes=[
                config_map_volume("script", NAME, [SCRIPT_KEY]),
                k8s.Volume(
                    name="tmp",
                    empty_dir=k8s.EmptyDirVolumeSource(
                        size_limit=k8s.Quantity.from_string("64Mi")
                    ),
                ),
            ],
        )
        k8s.KubeCronJob(
            self,
            "cronjob",
            metadata=metadata(
                NAME,
                labels,
                namespace,
                scan_exceptions(
                    {
                        "CKV_K8S_38": "the job reads, restarts and scales "
                        "Deployments through the API with this token",
                    }
                ),
            ),
            spec=k8s.CronJobSpec(
                schedule=settings.schedule,
                time_zone="Etc/UTC",
                # Two runs acting on one picture would restart or scale twice.
                concurrency_policy="Forbid",
                starting_deadline_seconds=STARTING_DEADLINE_SECONDS,
                successful_jobs_history_limit=1,
                failed_jobs_history_limit=3,
                job_template=k8s.JobTemplateSpec(
                    metadata=k8s.ObjectMeta(labels=dict(labels)),
                    spec=k8s.JobSpec(
                        # The next scheduled run is the retry, from a fresh
                        # read of the cluster.
                        backoff_limit=0,
                        active_deadline_seconds=ACTIVE_DEADLINE_SECONDS,
                        template=k8s.PodTemplateSpec(
                            metadata=k8s.ObjectMeta(labels=dict(labels)),
                            spec=pod,
                        ),
                    ),
                ),
            ),
        )
