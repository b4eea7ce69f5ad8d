"""The ``keras-segformer`` command line.

Each sub-command lives in its own module of this package and exposes
``add_parser(subparsers)`` (which registers the sub-command and sets
``func`` on it). ``main`` wires them together.
"""

import argparse
import importlib
import sys

# Module name per sub-command, in the order shown by --help.
COMMANDS = (
    "train",
    "evaluate",
    "predict",
    "convert",
    "export",
    "benchmark",
    "demo",
)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-segformer",
        description="SegFormer semantic segmentation for Keras 3.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"keras_segformer.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"keras_segformer.cli.{name}":
                continue  # not built yet
            raise
        module.add_parser(sub)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except (ValueError, TypeError, FileNotFoundError, OSError) as e:
        print(f"keras-segformer {args.command}: error: {e}", file=sys.stderr)
        return 2
