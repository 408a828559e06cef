"""Kubernetes 1.27 API bindings.

``cdk8s import k8s`` downloads the API schema from the internet, which build
machines here cannot reach. cdk8s-plus-27 ships the same generated bindings
for Kubernetes 1.27, so this module re-exports them under the conventional
``imports.k8s`` name. Bindings for custom resources, when the library needs
them, are generated next to this file with ``cdk8s import <crd-file>``.
"""

from cdk8s_plus_27.k8s import *  # noqa: F403
