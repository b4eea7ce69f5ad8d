"""``keras-segformer --help`` explains every command and flag: a
description per command, a help line and the default per flag, and the
same values for a flag in every command that takes it (the docs page of
the command line is generated from these parsers)."""

import argparse
import re

import numpy as np
import pytest

from keras_segformer.cli import build_parser, common

# Flags whose name is shared by commands that mean different things by
# it: convert --format is the format it reads, export --format the one it
# writes.
DIFFERENT_MEANINGS = {"--format"}


def _commands():
    parser = build_parser()
    sub = next(
        a for a in parser._actions if isinstance(a, argparse._SubParsersAction)
    )
    return parser, sub.choices


def _flags(command):
    """The flags of ``command`` a user sees (not -h)."""
    return [
        a
        for a in command._actions
        if not isinstance(a, argparse._HelpAction)
        and a.help is not argparse.SUPPRESS
    ]


def _takes(action):
    """What a flag takes: the number of values, the action, the type (by
    name), the choices and the metavar."""
    return (
        action.nargs,
        type(action).__name__,
        getattr(action.type, "__name__", action.type),
        None if action.choices is None else tuple(action.choices),
        action.metavar,
    )


def test_every_command_and_flag_explains_itself():
    parser, commands = _commands()
    assert parser.description
    missing = []
    for name, command in commands.items():
        if not (command.description or "").strip():
            missing.append(f"{name}: no description")
        if name == "benchmark" and not command._actions[1:]:
            continue  # outside a checkout: no harness, no flags
        text = command.format_help()
        for action in _flags(command):
            flag = "/".join(action.option_strings) or action.dest
            if not (action.help or "").strip():
                missing.append(f"{name} {flag}: no help")
                continue
            shown = (
                action.required
                or not action.option_strings  # a positional argument
                or action.nargs == 0  # a switch: off unless given
                or "default" in action.help.lower()
            )
            if not shown and action.default is not None:
                value = action.default
                if isinstance(value, (list, tuple)):
                    value = " ".join(map(str, value))
                # argparse wraps the lines: compare without line breaks.
                flat = re.sub(r"\s+", " ", text)
                shown = f"(default: {value})" in flat
            if not shown:
                missing.append(f"{name} {flag}: default not shown")
    assert not missing, "\n".join(missing)


def test_a_flag_takes_the_same_values_in_every_command():
    _, commands = _commands()
    seen = {}
    for name, command in commands.items():
        for action in _flags(command):
            for flag in action.option_strings:
                seen.setdefault(flag, {})[name] = _takes(action)
    differ = {
        flag: by_command
        for flag, by_command in seen.items()
        if flag not in DIFFERENT_MEANINGS and len(set(by_command.values())) > 1
    }
    assert not differ, differ
    # The crop size is one definition: one size or two, in train and
    # predict alike.
    assert set(seen["--crop-size"]) >= {"train", "predict"}


@pytest.mark.parametrize("command", ["train", "predict"])
def test_crop_size_takes_one_or_two_sizes(command, capsys):
    parser, _ = _commands()
    required = {
        "train": ["--num-classes", "2", "--images", "a", "--masks", "b"],
        "predict": ["--model", "m.keras", "--input", "a", "--output", "o"],
    }[command]
    if command == "train":
        required += ["--out", "o"]
    args = [command, *required]
    assert parser.parse_args([*args, "--crop-size", "64"]).crop_size == [64]
    two = parser.parse_args([*args, "--crop-size", "64", "96"]).crop_size
    assert common.size_value(two) == (64, 96)
    assert common.size_pair([64]) == (64, 64)
    for bad in (["64", "96", "128"], ["8"]):
        with pytest.raises(SystemExit):
            parser.parse_args([*args, "--crop-size", *bad])
        assert "--crop-size" in capsys.readouterr().err


def test_help_lines_end_with_the_default():
    parser = argparse.ArgumentParser(formatter_class=common.HelpFormatter)
    parser.add_argument("--seed", type=int, default=0, help="seed")
    parser.add_argument("--size", nargs=2, default=[2, 3], help="size")
    parser.add_argument("--rate", default="5%", help="a rate")
    parser.add_argument("--said", default=1, help="one (default: one)")
    parser.add_argument("--none", help="nothing")
    parser.add_argument("--on", action="store_true", help="a switch")
    text = re.sub(r"\s+", " ", parser.format_help())
    assert "seed (default: 0)" in text
    assert "size (default: 2 3)" in text
    assert "a rate (default: 5%)" in text
    assert "one (default: one) " in text and "(default: 1)" not in text
    assert "nothing " in text and "(default: None)" not in text
    assert "(default: False)" not in text


def test_predict_colours_the_demo_model_as_the_demo_does():
    from types import SimpleNamespace

    from keras_segformer.cli.predict import resolve_palette
    from keras_segformer.data import synthetic
    from keras_segformer.inference import get_palette

    for n in (2, 6, synthetic.MAX_CLASSES):
        names = synthetic.class_names(n)
        model = SimpleNamespace(num_classes=n, id2label=dict(enumerate(names)))
        palette, shown = resolve_palette("auto", model)
        # The colours the demo draws its data and overlays in.
        np.testing.assert_array_equal(
            get_palette(palette), synthetic.palette(n)
        )
        assert shown == list(names)
    # Other names: generated colours, not the demo's.
    other = SimpleNamespace(
        num_classes=3, id2label={0: "background", 1: "cat", 2: "dog"}
    )
    palette, _ = resolve_palette("auto", other)
    assert not np.array_equal(get_palette(palette), synthetic.palette(3))
