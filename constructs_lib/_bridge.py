"""Quiet the JavaScript bridge before anything loads it.

cdk8s runs on jsii, whose runtime prints a multi-line banner on stderr when
the machine's Node.js release is past its end of life. The banner is not an
error and would bury the one line a failed synth prints, so it is silenced
with jsii's documented variable, for the Node.js releases named here. Import
this module before ``cdk8s`` (``constructs_lib`` does so first).
"""

import os

_NODE_RELEASES = "18,20"

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", _NODE_RELEASES)
os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")
