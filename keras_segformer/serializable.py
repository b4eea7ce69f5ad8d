"""The ``get_config`` entries that are plain attribute reads.

Layers, losses, metrics and schedules keep each constructor argument as an
attribute; their configs list those attributes. ``attribute_config`` reads
them from one tuple of names, so a class states its keys once.
"""


def attribute_config(obj, names, **renamed):
    """Config entries read from ``obj``'s attributes.

    Args:
        obj: object. The layer, loss, metric or schedule.
        names: tuple of str. Keys whose attribute has the same name.
        **renamed: str. ``key=attribute`` for a key whose attribute has
            another name (e.g. ``dropout="dropout_rate"``).

    Returns:
        dict. ``{key: getattr(obj, attribute)}``, ``names`` first.

    Example:
    >>> def get_config(self):
    ...     names = ("hidden_size", "num_heads")
    ...     return {**super().get_config(), **attribute_config(self, names)}
    """
    config = {name: getattr(obj, name) for name in names}
    for key, attribute in renamed.items():
        config[key] = getattr(obj, attribute)
    return config
