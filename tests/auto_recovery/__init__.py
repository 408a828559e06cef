"""Fixtures of the auto-recovery tests: a fake kubectl and canned clusters.

``fake_kubectl.py`` stands in for kubectl on the script's PATH,
``kube_jsonpath.py`` is the port of kubectl's jsonpath engine it prints
with, and ``scenarios/`` holds the cluster states it replays.
"""
