"""The package's version, in a module of its own: the package and the
files it writes (model cards, presets) read it without importing each
other."""

__version__ = "0.1.0"
