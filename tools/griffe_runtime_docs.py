"""A griffe extension for the API reference (mkdocs.yml): docstrings that
a module assigns at import.

``keras_segformer.models.builders`` fills the docstrings of
``SegFormerB0`` ... ``MiTB5Classifier`` from the variant table when it is
imported (the pattern of keras.applications' convnext.py); griffe reads
the source without importing it, so this extension imports that one module
and copies the docstrings it finds.
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
