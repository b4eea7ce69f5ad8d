"""SegFormer's training loss: upsample the logits, then masked cross-entropy.

The numbers equal the ``loss`` of transformers'
``SegformerForSemanticSegmentation`` (``modeling_segformer.py``).
"""

import inspect

import keras
import numpy as np
from keras import ops

from keras_segformer.ops import losses as loss_ops
from keras_segformer.ops.resize import resize_bilinear
from keras_segformer.serializable import attribute_config
from keras_segformer.training.distribute import sum_over_replicas

_MEAN_REDUCTIONS = ("sum_over_batch_size", "mean", "mean_with_sample_weight")


def scale_loss_for_distribution(value):
    """``value`` divided by the number of replicas under tf.distribute (a
    no-op elsewhere), as Keras' own losses divide their mean (the
    formula of ``keras.src.losses.loss``, with public names)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        if replicas > 1:
            value = ops.multiply(value, ops.cast(1.0 / replicas, value.dtype))
    return value


def _concrete_bool(x):
    """``bool(x)`` for an eager tensor; ``None`` while tracing (tf.function,
    jax.jit), where the value is not known yet."""
    try:
        return bool(ops.convert_to_numpy(x))
    except Exception:  # symbolic tensor or tracer: no value to read
        return None


def _as_labels(y_true):
    labels = ops.convert_to_tensor(y_true)
    try:
        rank = len(labels.shape)
    except ValueError:  # TF shape of unknown rank
        rank = None
    if rank is None:
        raise ValueError(
            "`y_true` has an unknown rank. This happens when a TensorFlow "
            "function is retraced after the label rank changed (for "
            "example (B, H, W) then (B, H, W, 1)): keep one label rank, or "
            "compile the model again."
        )
    if rank == 4 and labels.shape[-1] == 1:
        labels = ops.squeeze(labels, axis=-1)
    if len(labels.shape) != 3:
        raise ValueError(
            "`y_true` must hold integer labels of shape (batch, height, "
            f"width) or (batch, height, width, 1). Received shape "
            f"{tuple(labels.shape)}."
        )
    return ops.cast(labels, "int32")


def check_integer_labels(y):
    """Refuse in-memory float labels with a fractional part: class indices
    cast to int would be truncated silently (0.5 -> class 0).

    Args:
        y: the labels given to ``fit`` / ``evaluate``; only a NumPy array
            or backend tensor is read (not a dataset or generator).

    Raises:
        TypeError: float labels with a fractional part (NaN, inf too).
    """
    if not (isinstance(y, np.ndarray) or keras.ops.is_tensor(y)):
        return
    if "float" not in keras.backend.standardize_dtype(y.dtype):
        return
    values = keras.ops.convert_to_numpy(y)
    fractional = values != np.floor(values)  # NaN and inf included
    if fractional.any():
        raise TypeError(
            "`y` holds float labels with a fractional part (e.g. "
            f"{values[fractional].flat[0]!r}): labels are class indices "
            "(0 .. num_classes - 1, 255 ignored). Pass integer ids, not "
            "probabilities or masks resized with interpolation."
        )


FLOAT_LABELS = (
    "labels are class indices (0 .. num_classes - 1, 255 ignored), and a "
    "cast to int would truncate them. Resize masks with nearest-neighbour "
    "interpolation and keep them integers"
)


def check_label_dataset(dataset):
    """A ``tf.data`` dataset of ``(images, labels, ...)`` whose labels are
    floats, with every batch checked for a fractional part as it is read
    (``check_integer_labels`` for data in memory); other datasets (integer
    labels, no labels) are returned as they are.

    Args:
        dataset: ``tf.data.Dataset`` or anything else (returned as is).

    Returns:
        The dataset, checked.

    Raises:
        DataError: (while iterating, out of ``errors.data_errors``) float
            labels with a fractional part (NaN, inf too), a value named.
    """
    spec = getattr(dataset, "element_spec", None)
    if not isinstance(spec, tuple) or len(spec) < 2:
        return dataset
    labels = spec[1]
    if not getattr(getattr(labels, "dtype", None), "is_floating", False):
        return dataset
    import tensorflow as tf

    from keras_segformer.errors import DataError, tag

    def check(y):
        fractional = y != np.floor(y)  # NaN and inf included
        if fractional.any():
            value = y[fractional].flat[0].item()
            raise DataError(
                tag(
                    f"The dataset's labels are {y.dtype} with a fractional "
                    f"part (e.g. {value!r}): {FLOAT_LABELS}."
                )
            )
        return y

    def checked(*element):
        # The labels pass through the check (a control dependency on a
        # stateless op would be pruned by tf.data's graph optimizer).
        y = tf.numpy_function(
            check, [element[1]], element[1].dtype, stateful=False
        )
        y.set_shape(element[1].shape)
        return (element[0], y, *element[2:])

    return dataset.map(checked)


def _broadcast_sample_weight(sample_weight, dtype):
    """Per-sample ``(B,)`` or per-pixel ``(B, H, W[, 1])`` -> broadcastable
    to ``(B, H, W)``."""
    sample_weight = ops.convert_to_tensor(sample_weight, dtype=dtype)
    rank = len(sample_weight.shape)
    if rank == 4 and sample_weight.shape[-1] == 1:
        return ops.squeeze(sample_weight, axis=-1)
    if rank == 3:
        return sample_weight
    if rank == 2 and sample_weight.shape[-1] == 1:
        sample_weight = ops.squeeze(sample_weight, axis=-1)
        rank = 1
    if rank == 1:
        return ops.reshape(sample_weight, (-1, 1, 1))
    if rank == 0:
        return sample_weight
    raise ValueError(
        "`sample_weight` must have shape (batch,), (batch, height, width) or "
        f"(batch, height, width, 1). Received shape "
        f"{tuple(sample_weight.shape)}."
    )


@keras.saving.register_keras_serializable(package="keras_segformer")
class SegFormerLoss(keras.losses.Loss):
    """Upsample logits to the label size, then cross-entropy ignoring 255.

    ``y_pred`` are the model's logits ``(batch, h, w, num_classes)`` at 1/4
    resolution; ``y_true`` integer labels ``(batch, H, W)`` or
    ``(batch, H, W, 1)`` at full resolution. The logits are resized
    bilinearly to ``(H, W)`` (PyTorch ``align_corners=False``), then:

    - ``num_classes > 1``: softmax cross-entropy averaged over the pixels
      whose label is not ``ignore_index``, over the whole batch: the same
      number as ``torch.nn.CrossEntropyLoss(ignore_index=255)``. With
      ``class_weights`` it is the weighted mean (sum of weighted losses over
      the sum of the weights of the valid pixels), as torch's ``weight=``.
    - ``num_classes == 1``: sigmoid binary cross-entropy with the
      ``ignore_index`` (and negative) pixels zeroed, then averaged over ALL
      pixels, ignored ones included. That is what transformers computes,
      ``(loss * valid_mask).mean()``, so it is matched on purpose.

    A batch in which every pixel is ignored gives 0 (torch gives NaN), so a
    fully unlabelled crop does not poison training.

    ``sample_weight`` (per sample ``(batch,)`` or per pixel) multiplies each
    pixel's weight, like ``class_weights``; the multi-class mean divides by
    the total weight, the binary mean by the pixel count. Keras' generic
    reduction is not applied on top: whatever ``reduction`` says, the value
    is computed here.

    Label checking (``check_labels=True``): a label outside
    ``[0, num_classes)`` that is not ``ignore_index`` (binary: a label > 1)
    raises ``ValueError`` when the loss runs eagerly; inside a compiled
    function (``tf.function``, ``jax.jit``) it cannot raise and the loss
    becomes NaN instead. With ``check_labels=False`` such pixels are
    ignored. The eager check reads one boolean back from the device per
    call (PyTorch's trainer runs eagerly); ``check_labels=False`` avoids
    that sync. Under ``tf.distribute`` the mean is still over the labelled
    pixels of the global batch (the count is summed over the replicas, each
    replica returns its share), so N devices compute what one device does
    with the same batch; Keras' own losses average per-replica means.

    Args:
        ignore_index: int. Label value that is neither scored nor counted.
        class_weights: sequence of floats or None. One weight per class
            (``num_classes > 1`` only).
        check_labels: bool. Validate the label values (see above).
        reduction: str or None. ``"sum_over_batch_size"`` / ``"mean"`` /
            ``"mean_with_sample_weight"``: the mean described above;
            ``"sum"``: sum of the weighted pixel losses; ``None`` /
            ``"none"``: the weighted per-pixel losses ``(batch, H, W)``.
        name: str. Name of the loss.
        dtype: dtype of the computation (default float32 / ``floatx``).

    Example:
    >>> model.compile(optimizer="adamw", loss=SegFormerLoss())
    >>> SegFormerLoss()(labels, logits)  # scalar
    """

    def __init__(
        self,
        ignore_index=255,
        class_weights=None,
        check_labels=True,
        reduction="sum_over_batch_size",
        name="segformer_loss",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.ignore_index = int(ignore_index)
        if class_weights is not None:
            class_weights = [float(w) for w in np.ravel(class_weights)]
            if any(w < 0 for w in class_weights):
                raise ValueError(
                    "`class_weights` must be non-negative. Received: "
                    f"{class_weights}"
                )
        self.class_weights = class_weights
        self.check_labels = bool(check_labels)

    def __call__(self, y_true, y_pred, sample_weight=None):
        with keras.name_scope(self.name):
            losses, weights, count = self._pixel_losses(
                y_true, y_pred, sample_weight
            )
            weighted = losses * weights
            if self.reduction in (None, "none"):
                return weighted
            total = ops.sum(weighted)
            if self.reduction == "sum":
                return total
            count, summed = sum_over_replicas(count)
            mean = ops.divide_no_nan(total, count)
            if summed:
                # This replica's share of the global mean: tf.distribute
                # sums the replicas' gradients.
                return mean
            return scale_loss_for_distribution(mean)

    def call(self, y_true, y_pred):
        """Weighted per-pixel losses ``(batch, H, W)``, ignored pixels 0."""
        losses, weights, _ = self._pixel_losses(y_true, y_pred, None)
        return losses * weights

    def _pixel_losses(self, y_true, y_pred, sample_weight):
        """Per-pixel losses, per-pixel weights and the mean's denominator."""
        logits = ops.convert_to_tensor(y_pred, dtype=self.dtype)
        if len(logits.shape) != 4 or not isinstance(logits.shape[-1], int):
            raise ValueError(
                "`y_pred` must be logits of shape (batch, height, width, "
                f"num_classes) with a known num_classes. Received shape "
                f"{tuple(logits.shape)}."
            )
        num_classes = logits.shape[-1]
        labels = _as_labels(y_true)
        size = loss_ops.spatial_size(labels)
        upsample = tuple(logits.shape[1:3]) != size
        if upsample and num_classes == 1:
            logits = resize_bilinear(logits, size)

        ignored = ops.equal(labels, self.ignore_index)
        if num_classes == 1:
            if self.class_weights is not None:
                raise ValueError(
                    "`class_weights` needs num_classes > 1; the logits have "
                    "a single channel (binary, sigmoid)."
                )
            # transformers: valid = (labels >= 0) & (labels != ignore_index).
            valid = ops.logical_and(
                ops.logical_not(ignored), ops.greater_equal(labels, 0)
            )
            bad = ops.logical_and(valid, ops.greater(labels, 1))
        else:
            in_range = ops.logical_and(
                ops.greater_equal(labels, 0), ops.less(labels, num_classes)
            )
            valid = in_range
            bad = ops.logical_not(ops.logical_or(in_range, ignored))
        poison = None
        if self.check_labels:
            poison = self._check(labels, bad, num_classes)
        valid = ops.logical_and(valid, ops.logical_not(bad))
        safe = ops.where(valid, labels, 0)

        if num_classes == 1:
            x = logits[..., 0]
            y = ops.cast(safe, x.dtype)
            # Stable BCE-with-logits: max(x, 0) - x * y + log(1 + e^-|x|).
            losses = ops.relu(x) - x * y + ops.log1p(ops.exp(-ops.absolute(x)))
        else:
            # logsumexp(logits) - logits[label], through each backend's
            # fused kernel (the gather's gradient is a slow scatter-add);
            # upsampled in bands, never a full-resolution logit map.
            if upsample:
                losses = loss_ops.upsampled_cross_entropy(logits, safe)
            else:
                losses = loss_ops.softmax_cross_entropy(logits, safe)

        weights = ops.cast(valid, losses.dtype)
        if self.class_weights is not None:
            if len(self.class_weights) != num_classes:
                raise ValueError(
                    f"`class_weights` has {len(self.class_weights)} entries "
                    f"but the logits have {num_classes} classes."
                )
            table = ops.convert_to_tensor(self.class_weights, losses.dtype)
            weights = weights * ops.take(table, safe)
        if sample_weight is not None:
            weights = weights * _broadcast_sample_weight(
                sample_weight, losses.dtype
            )
        if poison is not None:
            losses = ops.where(poison, float("nan"), losses)

        if num_classes == 1:
            count = ops.cast(ops.size(losses), losses.dtype)
        else:
            count = ops.sum(weights)
        return losses, weights, count

    def _check(self, labels, bad, num_classes):
        """Raise on bad labels when eager; else return the NaN flag."""
        any_bad = ops.any(bad)
        flag = _concrete_bool(any_bad)
        if flag is None:
            return any_bad
        if flag:
            values = ops.convert_to_numpy(labels)[ops.convert_to_numpy(bad)]
            expected = "0 or 1" if num_classes == 1 else f"0..{num_classes - 1}"
            raise ValueError(
                f"Labels must be {expected} or ignore_index="
                f"{self.ignore_index}. Received invalid values "
                f"{sorted(set(values.tolist()))[:10]} in {values.size} "
                "pixels. Pass check_labels=False to ignore such pixels."
            )
        return None

    def get_config(self):
        names = ("ignore_index", "class_weights", "check_labels")
        return {**super().get_config(), **attribute_config(self, names)}


def _is_keras_objective(obj):
    """A loss or metric of Keras' own (a name, class instance or function),
    which compares labels and logits as they are. Those of this project
    upsample the logits first; the user's own may resize themselves."""
    if isinstance(obj, str):
        return True
    owner = obj if inspect.isfunction(obj) else type(obj)
    return owner.__module__.split(".")[0] == "keras"


def _objective_name(obj):
    if isinstance(obj, str):
        return obj
    return getattr(obj, "name", None) or obj.__name__


def foreign_objectives(loss, metrics):
    """Names of Keras' own losses and metrics among ``loss`` and
    ``metrics``: they score the logits at 1/4 of the image size."""
    return [
        _objective_name(obj)
        for obj in keras.tree.flatten([loss, metrics])
        if obj is not None and _is_keras_objective(obj)
    ]


def _static_hw(tensor, rank):
    shape = getattr(tensor, "shape", None)
    if shape is None or len(shape) != rank:
        return None
    hw = tuple(shape[1:3])
    return None if None in hw else tuple(int(d) for d in hw)


def check_label_size(y, y_pred, objectives):
    """Stop a step whose per-pixel labels do not match the logits' size
    when a loss or metric would compare them as they are."""
    logits_hw = _static_hw(y_pred, 4)
    labels = getattr(y, "shape", None)
    if logits_hw is None or labels is None or len(labels) not in (3, 4):
        return
    labels_hw = _static_hw(y, len(labels))
    if labels_hw is None or labels_hw == logits_hw:
        return
    raise ValueError(
        f"{', '.join(objectives)} compare the labels, shape "
        f"{tuple(labels)}, with the logits, shape {tuple(y_pred.shape)}, "
        "which are at 1/4 of the image size. Use "
        "keras_segformer.training.SegFormerLoss (the default loss) and its "
        "MeanIoU metric, which upsample the logits to the labels' size, or "
        "resize the labels to the logits' size."
    )


def checked_datasets(args, kwargs, argument):
    """``(args, kwargs)`` with the dataset passed as ``argument`` (its
    keyword and position) wrapped by ``check_label_dataset`` (float
    labels checked batch by batch; anything else unchanged)."""
    name, position = argument
    if len(args) > position:
        args = list(args)
        args[position] = check_label_dataset(args[position])
        return tuple(args), kwargs
    if name in kwargs:
        kwargs = dict(kwargs, **{name: check_label_dataset(kwargs[name])})
    return args, kwargs
