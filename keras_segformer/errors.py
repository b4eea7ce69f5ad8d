"""User-facing error types and the bridge out of ``tf.data``.

``DataError`` (a data file) and ``CheckpointError`` (a checkpoint file)
are ``ValueError`` subclasses: the command line prints them as one line.

A data error (unreadable file, mask size mismatch, label out of range)
found inside a ``tf.data`` pipeline crosses TensorFlow's runtime: Python
raises a ``ValueError`` in ``tf.numpy_function``, TensorFlow turns it into
an ``InvalidArgumentError`` whose message holds the original one plus a
traceback and graph node names. ``tag`` marks the original message on the
way in; ``data_errors()`` (a context manager around ``fit``, ``evaluate``
or a loop over the dataset) finds the marked message in whatever comes
out and raises it again as a plain ``DataError``. Backend independent:
JAX and PyTorch iterate the same ``tf.data`` pipeline.
"""

import contextlib
import re

# Never printed: a clean error carries the message between the marks only.
_START = "<<keras-segformer-data-error>>"
_END = "<</keras-segformer-data-error>>"
_TAGGED = re.compile(re.escape(_START) + "(.*?)" + re.escape(_END), re.S)


class DataError(ValueError):
    """A data file is unreadable or does not fit the model (it names the
    file)."""


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, corrupt or has an unexpected layout.

    Also importable as ``keras_segformer.convert.CheckpointError``.
    """


def plural(count, noun, nouns=None):
    """``count`` and ``noun``, in the plural unless ``count`` is 1.

    Args:
        count: int.
        noun: str. The singular.
        nouns: str or None. The plural (default: ``noun + "s"``).

    Returns:
        str.

    Example:
    >>> plural(1, "image"), plural(3, "image")
    ('1 image', '3 images')
    """
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"


def sample(names, n=6, sep=", "):
    """The first ``n`` of ``names`` (sorted), then ``...`` if there are
    more: a short list for a message.

    Args:
        names: iterable of str.
        n: int. How many to show.
        sep: str. Between two names.

    Returns:
        str.

    Example:
    >>> sample(["c", "a", "b"], n=2)
    'a, b ...'
    """
    names = sorted(names)
    return sep.join(names[:n]) + (" ..." if len(names) > n else "")


def tag(message):
    """Mark ``message`` so that ``data_error_message`` finds it again in a
    TensorFlow error that wraps it.

    Args:
        message: str. A one-line message naming the file.
    """
    return f"{_START}{message}{_END}"


def data_error_message(error):
    """The tagged data message inside ``error`` (or its causes), or None.

    Args:
        error: ``BaseException``.
    """
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        match = _TAGGED.search(str(error))
        if match:
            return match.group(1)
        error = error.__cause__ or error.__context__
    return None


@contextlib.contextmanager
def data_errors():
    """Turn a data error raised inside ``tf.data`` into a ``DataError``.

    Any exception whose message (or whose cause's) carries a tagged data
    message is replaced by ``DataError(message)`` without the chained
    TensorFlow traceback; other exceptions pass unchanged.

    Example:
    >>> with data_errors():
    ...     model.fit(make_dataset(images, masks, batch_size=8,
    ...         training=True), epochs=1)
    """
    try:
        yield
    except Exception as e:
        message = data_error_message(e)
        if message is None:
            raise
        raise DataError(message) from None
