"""``keras-segformer benchmark``: speed and memory side by side with
transformers and keras-hub.

The harness is not part of the installed package: it lives in
``benchmarks/`` of a source checkout (``python tools/benchmark.py``).
When this package runs from a checkout (``pip install -e .``, or the
source tree on the path) the sub-command runs that harness with the same
options; installed from a wheel, it says in one line where to find it.
"""

import argparse
import os
import sys

NOT_IN_CHECKOUT = (
    "the benchmark harness is not installed with the package; run "
    "`python tools/benchmark.py` from a checkout of keras-segformer"
)
HELP = (
    "latency, GFLOP/s and memory of this project vs transformers and "
    "keras-hub, one worker process per implementation and case (from a "
    "source checkout)"
)


def checkout_root():
    """The source checkout this package runs from, or None."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    root = os.path.dirname(package)
    if os.path.isfile(os.path.join(root, "benchmarks", "cli.py")):
        return root
    return None


def _harness(root):
    if root not in sys.path:
        sys.path.insert(0, root)
    import benchmarks.cli

    return benchmarks.cli


class _KeepArguments(argparse.ArgumentParser):
    """Without the harness: keep every argument unparsed, so that the
    command reaches ``run`` and says where the harness is."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, _ = super().parse_known_args([], namespace)  # defaults
        namespace.arguments = list(args or [])
        return namespace, []


def add_parser(subparsers):
    p = subparsers.add_parser("benchmark", help=HELP, description=HELP)
    root = checkout_root()
    if root is None:
        p.__class__ = _KeepArguments
    else:
        _harness(root).add_arguments(p)
    p.set_defaults(func=run)


def run(args):
    root = checkout_root()
    if root is None:
        raise FileNotFoundError(NOT_IN_CHECKOUT)
    return _harness(root).run(args)
