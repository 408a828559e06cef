"""The ``elasticsearch-setup`` Job: the roles and users the clients log in as.

Each client module declares a :class:`~constructs_lib.elastic.ClientUser`;
this Job creates its role (``PUT _security/role``) and the user with that
role and the password from the user's Secret (``PUT _security/user``), or,
for a built-in user such as ``kibana_system``, sets its password
(``POST _security/user/<name>/_password``). Then it runs the extra steps
other components hand it (index templates, Kibana data views), each a
POSIX shell snippet run with ``ES_URL``, ``ES_CA_FILE``,
``ELASTIC_PASSWORD_FILE``, ``KIBANA_URL`` and ``SETUP_LIB`` in its
environment; ``. "$SETUP_LIB"`` gives it ``es_call``, ``kibana_call``,
``expect`` and ``wait_for_kibana``.

Every request is idempotent: a PUT replaces the role or user with the
declared one, and setting a password to the value it already has changes
nothing. So the Job can run again after any apply, and must: a Job's pod
template is immutable, so ``kubectl apply`` of a changed Job fails while the
old one exists. ``ttlSecondsAfterFinished`` deletes the finished Job after
ten minutes, and the next apply creates it afresh and runs it again.

No password is on a command line: the script reads each password file into
a shell variable and gives curl its credentials and request body as a
config on standard input (``curl --config -``), written with ``printf``,
a shell builtin. Of the processes it starts, only ``curl`` and ``sed`` see
a secret, and only on their standard input, so ``ps`` and
``/proc/<pid>/cmdline`` show none.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Sequence

from constructs import Construct
from pydantic import TypeAdapter, ValidationError

from constructs_lib import elastic
from constructs_lib.common import (
    DnsLabel,
    Endpoint,
    Image,
    config_checksum,
    config_map_volume,
    container_security,
    declare_secret,
    image_tag,
    metadata,
    mount,
    pod_security,
    pull_policy,
    secret_volume,
    service_account,
    standard_labels,
)
from constructs_lib.elasticsearch import ElasticsearchSettings, declare_certs_secret
from constructs_lib.errors import ConfigurationError
from constructs_lib.kibana import KIBANA
from imports import k8s

NAME = "elasticsearch-setup"
DEFAULT_IMAGE: str = ElasticsearchSettings.model_fields["setup_image"].default
# curl needs no passwd entry, so the Job runs as a uid and gid of its own
# above the range hosts hand out (docs/security.md), not the image's 100:101.
CURL_UID = 11003
CURL_GID = 11003

SETUP_DIR = "/etc/elasticsearch-setup"
CA_DIR = "/etc/elasticsearch-ca"
ELASTIC_DIR = "/etc/elasticsearch-elastic"
USERS_DIR = "/etc/elasticsearch-users"
SETUP_SCRIPT = "setup.sh"
LIBRARY = "lib.sh"

SCHEDULE = "*/10 * * * *"
STARTING_DEADLINE_SECONDS = 300
BACKOFF_LIMIT = 2
ACTIVE_DEADLINE_SECONDS = 540
WAIT_ATTEMPTS = 45
WAIT_SECONDS = 5

# Built-in users whose password alone may be set; 'elastic' is the Job's own
# login and is never changed by it.
RESERVED_USERS = frozenset(
    {
        "kibana_system",
        "logstash_system",
        "beats_system",
        "apm_system",
        "remote_monitoring_user",
    }
)
# Built-in roles Elasticsearch refuses to overwrite ("role [...] is reserved").
RESERVED_ROLES = frozenset(
    {
        "superuser",
        "kibana_system",
        "kibana_admin",
        "logstash_system",
        "beats_system",
        "apm_system",
        "remote_monitoring_agent",
        "remote_monitoring_collector",
        "ingest_admin",
        "viewer",
        "editor",
    }
)
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")

LIBRARY_TEXT = r"""# lib.sh: helpers of the elasticsearch-setup Job and its extra steps.
#   . "$SETUP_LIB"
#   es_call PUT /_index_template/x "$json"   (or "@/path/to/file.json")
#   expect 200                               fails loudly with the status
#   kibana_call POST /api/data_views/data_view "$json"; expect 200
# Credentials reach curl as a config on standard input, never as arguments.

NL='
'

die() {
  printf 'elasticsearch-setup: %s\n' "$*" >&2
  exit 1
}

say() {
  printf 'elasticsearch-setup: %s\n' "$*"
}

# A password file's contents as the images read theirs: trailing newlines
# dropped. A password is one line without control characters.
read_secret() {
  [ -r "$1" ] || die "cannot read $1"
  secret=$(cat "$1")
  [ -n "$secret" ] || die "$1 is empty"
  case $secret in
    *[[:cntrl:]]*) die "$1 holds a control character; a password is one line" ;;
  esac
  printf '%s' "$secret"
}

# Escapes \ and " for a JSON string or a double-quoted curl config value.
quote() {
  printf '%s' "$1" | sed 's/[\\"]/\\&/g'
}

# _call BASE_URL METHOD PATH [DATA [HEADER]]: one request as the elastic
# user; sets STATUS (000 when nothing answered) and BODY.
_call() {
  CALL="$2 $3"
  _out=$(
    {
      printf 'user = "elastic:%s"\n' "$(quote "$ELASTIC_PASSWORD")"
      if [ -n "${4-}" ]; then
        printf 'data-binary = "%s"\n' "$(quote "$4")"
      fi
      if [ -n "${5-}" ]; then
        printf 'header = "%s"\n' "$(quote "$5")"
      fi
    } | curl -q --silent --show-error --max-time 30 --config - \
      --cacert "$ES_CA_FILE" --request "$2" \
      --header 'Content-Type: application/json' \
      --write-out '\n%{http_code}' "$1$3" 2>&1
  ) || true
  STATUS=${_out##*"$NL"}
  BODY=${_out%"$NL"*}
  case $STATUS in
    [0-9][0-9][0-9]) ;;
    *) BODY=$_out STATUS=000 ;;
  esac
}

es_call() {
  _call "$ES_URL" "$@"
}

kibana_call() {
  _call "$KIBANA_URL" "$1" "$2" "${3-}" 'kbn-xsrf: elasticsearch-setup'
}

# expect STATUS...: go on if the last call answered one of them.
expect() {
  for _status in "$@"; do
    [ "$STATUS" = "$_status" ] && return 0
  done
  die "$CALL answered HTTP $STATUS: $BODY"
}

# wait_for URL_KIND PATH ATTEMPTS SECONDS: bounded wait for an HTTP 200.
_wait_for() {
  _attempt=1
  while :; do
    "$1" GET "$2"
    [ "$STATUS" = 200 ] && return 0
    if [ "$_attempt" -ge "$3" ]; then
      die "no HTTP 200 from $2 after $3 attempts; last answer HTTP $STATUS: $BODY"
    fi
    say "waiting for $2 (attempt $_attempt of $3: HTTP $STATUS)"
    _attempt=$((_attempt + 1))
    sleep "$4"
  done
}

wait_for_elasticsearch() {
  _wait_for es_call '/_cluster/health?wait_for_status=yellow&timeout=5s' "$@"
}

wait_for_kibana() {
  _wait_for kibana_call /api/status "$@"
}

# ensure_role NAME FILE: create or replace the role with the file's JSON.
ensure_role() {
  es_call PUT "/_security/role/$1" "@$2"
  expect 200
  say "role $1 is in place"
}

# The password must never be printed, even inside an error response.
_withhold() {
  case $BODY in
    *"$1"* | *"$(quote "$1")"*)
      BODY='(withheld: the response repeats the password)' ;;
  esac
}

# ensure_user NAME ROLE: create or update the user, password from its file.
ensure_user() {
  _password=$(read_secret "$USERS_DIR/$1/password")
  _body="{\"password\":\"$(quote "$_password")\",\"roles\":[\"$2\"],"
  _body="$_body\"metadata\":{\"managed_by\":\"elasticsearch-setup\"}}"
  es_call PUT "/_security/user/$1" "$_body"
  _withhold "$_password"
  expect 200
  say "user $1 has role $2 and its password"
}

# set_password NAME: the password of a built-in user, from its file.
set_password() {
  _password=$(read_secret "$USERS_DIR/$1/password")
  es_call POST "/_security/user/$1/_password" \
    "{\"password\":\"$(quote "$_password")\"}"
  _withhold "$_password"
  expect 200
  say "built-in user $1 has its password"
}

run_step() {
  say "step $1"
  sh -eu "$1" || die "step $1 failed"
}

: "${ES_URL:?}" "${ES_CA_FILE:?}" "${ELASTIC_PASSWORD_FILE:?}" "${KIBANA_URL:?}"
ELASTIC_PASSWORD=$(read_secret "$ELASTIC_PASSWORD_FILE")
"""


def _steps_file(index: int) -> str:
    return f"step-{index:02d}.sh"


def _role_file(role_name: str) -> str:
    return f"role-{role_name}.json"


def setup_script(users: Sequence[elastic.ClientUser], steps: int) -> str:
    """``setup.sh``: wait, roles, users, built-in passwords, extra steps."""
    lines = [
        "#!/bin/sh",
        "# elasticsearch-setup: the roles and users the stack's clients log in",
        "# as. Every request is idempotent; the Job may run any number of times.",
        "set -eu",
        ': "${SETUP_DIR:?}" "${USERS_DIR:?}" "${WAIT_ATTEMPTS:?}" "${WAIT_SECONDS:?}"',
        f'SETUP_LIB="$SETUP_DIR/{LIBRARY}"',
        "export ES_URL ES_CA_FILE ELASTIC_PASSWORD_FILE KIBANA_URL SETUP_LIB",
        '. "$SETUP_LIB"',
        "",
        'wait_for_elasticsearch "$WAIT_ATTEMPTS" "$WAIT_SECONDS"',
    ]
    roles_done: set[str] = set()
    for user in users:
        name = shlex.quote(user.username)
        if user.role is None:
            lines.append(f"set_password {name}")
            continue
        role_name = str(user.role_name)
        if role_name not in roles_done:
            roles_done.add(role_name)
            lines.append(
                f"ensure_role {shlex.quote(role_name)} "
                f'"$SETUP_DIR/{_role_file(role_name)}"'
            )
        lines.append(f"ensure_user {name} {shlex.quote(role_name)}")
    for index in range(1, steps + 1):
        lines.append(f'run_step "$SETUP_DIR/{_steps_file(index)}"')
    lines += ['say "done"', ""]
    return "\n".join(lines)


def check_users(users: Sequence[elastic.ClientUser]) -> list[str]:
    """Why these users could not be created as declared, or an empty list."""
    problems = []
    seen: set[str] = set()
    roles: dict[str, str] = {}
    for user in users:
        where = f"user {user.username!r}"
        if not _NAME.fullmatch(user.username):
            problems.append(
                f"{where}: a username must be letters, digits, '_', '.', '-'"
            )
            continue
        if user.username in seen:
            problems.append(f"{where} is declared twice")
        seen.add(user.username)
        if user.username == "elastic":
            problems.append(f"{where}: the setup Job never manages the superuser")
            continue
        try:
            TypeAdapter(DnsLabel).validate_python(user.secret)
        except ValidationError:
            problems.append(f"{where}: Secret {user.secret!r} is not a valid name")
        if user.role is None:
            if user.role_name is not None:
                problems.append(
                    f"{where}: role_name {user.role_name!r} without a role "
                    "descriptor; a built-in user has neither"
                )
            if user.username not in RESERVED_USERS:
                problems.append(
                    f"{where} has no role, but only the built-in users "
                    f"{sorted(RESERVED_USERS)} may be declared without one"
                )
            continue
        if user.username in RESERVED_USERS:
            problems.append(
                f"{where} is a built-in user; Elasticsearch refuses to create "
                "it, declare it without a role"
            )
        if not user.role_name or not _NAME.fullmatch(user.role_name):
            problems.append(
                f"{where}: role_name {user.role_name!r} must be letters, "
                "digits, '_', '.', '-'"
            )
            continue
        if user.role_name in RESERVED_ROLES:
            problems.append(
                f"{where}: role {user.role_name!r} is built in; Elasticsearch "
                "refuses to overwrite it"
            )
        if not isinstance(user.role, dict):
            problems.append(f"{where}: the role descriptor must be a mapping")
            continue
        body = json.dumps(user.role, sort_keys=True)
        if roles.setdefault(user.role_name, body) != body:
            problems.append(
                f"{where}: role {user.role_name!r} is declared twice with "
                "different descriptors"
            )
    return problems


class ElasticsearchSetup(Construct):
    """A ConfigMap with the setup script and the Job that runs it."""

    def __init__(
        self,
        scope: Construct,
        id: str,
        *,
        namespace: str,
        users: Sequence[elastic.ClientUser],
        extra_steps: Sequence[str] = (),
        image: str = DEFAULT_IMAGE,
        elastic_secret: str = "elasticsearch-elastic",
        elasticsearch: Endpoint = elastic.ELASTICSEARCH,
        kibana: Endpoint = KIBANA,
    ) -> None:
        super().__init__(scope, id)
        try:
            TypeAdapter(Image).validate_python(image)
        except ValidationError as error:
            raise ConfigurationError(
                "elasticsearch-setup image", error.errors()[0]["msg"]
            ) from error
        problems = check_users(users)
        for index, step in enumerate(extra_steps, start=1):
            if not isinstance(step, str) or not step.strip():
                problems.append(f"extra step #{index} is empty; a step is shell code")
        if problems:
            raise ConfigurationError("elasticsearch-setup users", "; ".join(problems))
        self.namespace = namespace
        self.users = list(users)
        labels = standard_labels(NAME, "logs-setup", image_tag(image))

        self.files: dict[str, str] = {
            SETUP_SCRIPT: setup_script(self.users, len(extra_steps)),
            LIBRARY: LIBRARY_TEXT,
        }
        for user in self.users:
            if user.role is not None:
                self.files[_role_file(str(user.role_name))] = (
                    json.dumps(user.role, indent=2, sort_keys=True) + "\n"
                )
        for index, step in enumerate(extra_steps, start=1):
            self.files[_steps_file(index)] = step.rstrip("\n") + "\n"

        # The Job does not call the Kubernetes API; no token.
        service_account(self, "sa", name=NAME, namespace=namespace, labels=labels)
        declare_secret(
            self,
            name=elastic_secret,
            namespace=namespace,
            keys=(elastic.PASSWORD_KEY,),
            purpose="the password of Elasticsearch's 'elastic' user",
        )
        declare_certs_secret(self, namespace)
        for user in self.users:
            declare_secret(
                self,
                name=user.secret,
                namespace=namespace,
                keys=(elastic.PASSWORD_KEY,),
                purpose=f"the password of the Elasticsearch user {user.username}",
            )

        config_map = k8s.KubeConfigMap(
            self,
            "config",
            metadata=metadata(NAME, labels, namespace),
            data=dict(self.files),
        )
        # A CronJob rather than a Job: a run that misses its window (the
        # cluster still forming after a first apply) is simply retried on
        # the next tick, a user deleted by hand is recreated, and a changed
        # script applies cleanly, where a Job's pod template is immutable.
        self.job = k8s.KubeCronJob(
            self,
            "job",
            metadata=metadata(NAME, labels, namespace),
            spec=k8s.CronJobSpec(
                schedule=SCHEDULE,
                concurrency_policy="Forbid",
                starting_deadline_seconds=STARTING_DEADLINE_SECONDS,
                successful_jobs_history_limit=1,
                failed_jobs_history_limit=3,
                job_template=k8s.JobTemplateSpec(
                    metadata=k8s.ObjectMeta(labels=dict(labels)),
                    spec=k8s.JobSpec(
                        backoff_limit=BACKOFF_LIMIT,
                        # Shorter than the schedule's period, so one run
                        # ends before the next is due.
                        active_deadline_seconds=ACTIVE_DEADLINE_SECONDS,
                        template=self._pod_template(
                            labels, image, elastic_secret, elasticsearch, kibana
                        ),
                    ),
                ),
            ),
        )
        self.job.add_dependency(config_map)

    def _pod_template(
        self,
        labels: dict[str, str],
        image: str,
        elastic_secret: str,
        elasticsearch: Endpoint,
        kibana: Endpoint,
    ) -> k8s.PodTemplateSpec:
        env = {
            "ES_URL": elasticsearch.url,
            "ES_CA_FILE": f"{CA_DIR}/{elastic.CA_KEY}",
            "ELASTIC_PASSWORD_FILE": f"{ELASTIC_DIR}/{elastic.PASSWORD_KEY}",
            "KIBANA_URL": kibana.url,
            "SETUP_DIR": SETUP_DIR,
            "USERS_DIR": USERS_DIR,
            "WAIT_ATTEMPTS": str(WAIT_ATTEMPTS),
            "WAIT_SECONDS": str(WAIT_SECONDS),
        }
        mounts = [
            mount("setup", SETUP_DIR),
            elastic.ca_mount(CA_DIR),
            mount("elastic", ELASTIC_DIR),
        ]
        volumes = [
            config_map_volume("setup", NAME, sorted(self.files)),
            elastic.ca_volume(),
            secret_volume("elastic", elastic_secret, [elastic.PASSWORD_KEY]),
        ]
        for index, user in enumerate(self.users, start=1):
            volume = f"user-{index}"
            mounts.append(mount(volume, f"{USERS_DIR}/{user.username}"))
            volumes.append(elastic.credentials_volume(volume, user))
        setup = k8s.Container(
            name="setup",
            image=image,
            image_pull_policy=pull_policy(image),
            command=["/bin/sh", f"{SETUP_DIR}/{SETUP_SCRIPT}"],
            env=[k8s.EnvVar(name=key, value=value) for key, value in env.items()],
            resources=k8s.ResourceRequirements(
                requests={
                    "cpu": k8s.Quantity.from_string("50m"),
                    "memory": k8s.Quantity.from_string("32Mi"),
                },
                limits={
                    "cpu": k8s.Quantity.from_string("200m"),
                    "memory": k8s.Quantity.from_string("64Mi"),
                },
            ),
            security_context=container_security(),
            volume_mounts=mounts,
        )
        return k8s.PodTemplateSpec(
            metadata=k8s.ObjectMeta(
                labels=dict(labels),
                annotations={"checksum/config": config_checksum(self.files)},
            ),
            spec=k8s.PodSpec(
                service_account_name=NAME,
                automount_service_account_token=False,
                enable_service_links=False,
                # A failed pod stays for its log; the Job starts a new one.
                restart_policy="Never",
                security_context=pod_security(CURL_UID, CURL_GID, fs_group=CURL_GID),
                containers=[setup],
                volumes=volumes,
            ),
        )
