"""Helpers shared by the sub-commands: model loading, folders, labels."""


def load_any_model(path, *, variant=None, num_classes=None):
    """Load a model from a ``.keras`` file, a transformers directory, or a
    Keras weights file (``.weights.h5``, needs ``variant`` and
    ``num_classes``); see ``keras_segformer.export.load_model``.
    """
    from keras_segformer.export.loading import load_model

    return load_model(path, variant=variant, num_classes=num_classes)


def add_model_arguments(parser):
    """``--model`` (what ``load_any_model`` reads), and ``--variant`` and
    ``--num-classes``, which a ``.weights.h5`` ``--model`` needs."""
    parser.add_argument(
        "--model",
        required=True,
        help="a .keras file, a transformers save_pretrained directory, or "
        "a .weights.h5 file (with --variant and --num-classes)",
    )
    parser.add_argument(
        "--variant", help="b0 ... b5, for a .weights.h5 --model"
    )
    parser.add_argument(
        "--num-classes", type=int, help="classes, for a .weights.h5 --model"
    )


def read_class_names(spec, num_classes=None):
    """Class names from ``ade20k``, ``cityscapes`` or a JSON file (a list or
    an ``id2label`` dict): ``keras_segformer.classes.resolve_labels`` with
    ``--labels`` in its messages. Returns ``{id: name}`` or None."""
    from keras_segformer.classes import resolve_labels

    return resolve_labels(spec, num_classes, name="--labels")
