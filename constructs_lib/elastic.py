"""What every client of the Elasticsearch cluster shares: address, CA, users.

Security is on: Elasticsearch serves HTTPS with a certificate from the
operator's ``elasticsearch-certs`` Secret, and each client (Kibana, Filebeat,
Jaeger, the APM server, Grafana) logs in as a user of its own, with a role
that allows only what it does. The users and roles are created by the
``elasticsearch-setup`` Job from the ``ClientUser`` values the client
modules declare; each password comes from an operator Secret that both the
Job and the client mount, so the two can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from constructs_lib.common import Endpoint, mount, secret_volume
from imports import k8s

ELASTICSEARCH = Endpoint("elasticsearch", 9200, scheme="https")
"""The client Service every component sends to."""

CERTS_SECRET = "elasticsearch-certs"
"""Operator Secret with the cluster's CA and the nodes' certificate."""
CA_KEY = "ca.crt"
CERT_KEY = "tls.crt"
KEY_KEY = "tls.key"

PASSWORD_KEY = "password"
"""The key of every client credential Secret."""

CA_VOLUME = "elasticsearch-ca"


@dataclass(frozen=True)
class ClientUser:
    """An Elasticsearch user that one client logs in as.

    ``role`` is the role descriptor (the body of ``PUT _security/role``) the
    setup Job creates under ``role_name``; ``None`` for built-in users such
    as ``kibana_system``, whose password alone is set.
    """

    username: str
    secret: str
    role_name: str | None = None
    role: dict[str, Any] | None = field(default=None, hash=False, compare=False)


def ca_volume() -> k8s.Volume:
    """The cluster CA alone, from the certificates Secret."""
    return secret_volume(CA_VOLUME, CERTS_SECRET, [CA_KEY])


def ca_mount(directory: str) -> k8s.VolumeMount:
    """Mount the CA so that ``<directory>/ca.crt`` is the CA file."""
    return mount(CA_VOLUME, directory)


def credentials_volume(name: str, user: ClientUser) -> k8s.Volume:
    """The password of ``user`` from its Secret, as the file ``password``."""
    return secret_volume(name, user.secret, [PASSWORD_KEY])
