"""griffe extensions for the API reference (mkdocs.yml).

``RuntimeDocstrings``: docstrings that a module assigns at import.

``keras_segformer.models.builders`` fills the docstrings of
``SegFormerB0`` ... ``MiTB5Classifier`` from the variant table when it is
imported (the pattern of keras.applications' convnext.py); griffe reads
the source without importing it, so this extension imports that one module
and copies the docstrings it finds.

``DoctestBlocks``: the docstrings write their examples as ``>>>`` lines
right under ``Example:``; Markdown would read ``>>>`` as nested quotes, so
each run of ``>>>`` / ``...`` lines becomes a ``pycon`` code block.
"""

import importlib
import inspect

import griffe

MODULES = ("keras_segformer.models.builders",)


class RuntimeDocstrings(griffe.Extension):
    """Copy the import-time docstrings of ``MODULES``' functions."""

    def on_package(self, *, pkg, **kwargs):
        """Fill the functions of ``MODULES`` that have no docstring.

        Args:
            pkg: griffe.Module. The package griffe loaded.
            **kwargs: the other event arguments (unused).
        """
        for path in MODULES:
            if not path.startswith(pkg.path + "."):
                continue
            module = importlib.import_module(path)
            static = pkg[path[len(pkg.path) + 1 :]]
            for name, member in static.members.items():
                if member.is_alias or not member.is_function:
                    continue
                text = getattr(module, name, None).__doc__
                if member.docstring is None and text:
                    member.docstring = griffe.Docstring(
                        inspect.cleandoc(text),
                        parent=member,
                        lineno=member.lineno,
                    )


def doctest_to_fences(text):
    """``text`` with each run of ``>>>`` / ``...`` lines fenced as pycon.

    Args:
        text: str. A cleaned docstring.

    Returns:
        str. The same text, runs of doctest lines inside code fences.
    """
    out, in_block = [], False
    for line in text.split("\n"):
        stripped = line.lstrip()
        is_doctest = stripped.startswith(">>>") or (
            in_block and stripped.startswith("...")
        )
        if is_doctest and not in_block:
            indent = line[: len(line) - len(stripped)]
            out.append(indent + "```pycon")
            in_block = True
        elif not is_doctest and in_block:
            out.append(indent + "```")
            in_block = False
        out.append(line)
    if in_block:
        out.append(indent + "```")
    return "\n".join(out)


def _objects(obj):
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _objects(member)


class DoctestBlocks(griffe.Extension):
    """Fence the ``>>>`` examples of every docstring of the package."""

    def on_package(self, *, pkg, **kwargs):
        """Rewrite the docstrings of ``pkg`` before they are parsed.

        Args:
            pkg: griffe.Module. The package griffe loaded.
            **kwargs: the other event arguments (unused).
        """
        for obj in _objects(pkg):
            if obj.docstring is not None and ">>>" in obj.docstring.value:
                obj.docstring.value = doctest_to_fences(obj.docstring.value)
