"""SegFormer's optimizer recipe (paper / mmseg) and a one-call compile.

AdamW (lr 6e-5, weight decay 0.01), the decode head at 10x the learning
rate, no weight decay on norms and biases, poly decay (power 1) after a
1500-step linear warmup. Keras has no parameter groups and Adam is
invariant to gradient scale (scaling gradients would not scale the step),
so ``GroupedAdamW`` gives each group of variables its own learning rate
in its update step. The step's rates are computed once per group, and the
update itself is ``keras_segformer.ops.optimizer.adamw_update`` (one
multi-tensor update per group on PyTorch; per variable elsewhere, where
TensorFlow's tf.distribute and JAX's compiler want it, on TensorFlow with
its fused Adam kernel), with the numbers of Keras' ``AdamW``.
"""

import contextlib
import os
import re

import keras
from keras import ops

from keras_segformer.ops import internals
from keras_segformer.ops import optimizer as optimizer_ops
from keras_segformer.serializable import attribute_config
from keras_segformer.training.distribute import (
    num_replicas,
    synchronize_batch_norm,
)
from keras_segformer.training.losses import SegFormerLoss
from keras_segformer.training.metrics import MeanIoU
from keras_segformer.training.schedules import WarmupPolyDecay

# Keras' TensorFlow optimizer (tf.distribute's merge call) has this method.
_TF_DISTRIBUTE = hasattr(keras.optimizers.AdamW, "_distributed_tf_update_step")
GROUPED_UPDATE = "grouped_update"
internals.check_update_hooks(keras.optimizers.AdamW)


@keras.saving.register_keras_serializable(package="keras_segformer")
class GroupedAdamW(keras.optimizers.AdamW):
    """AdamW with per-variable learning-rate multipliers and no weight decay
    on 1-D variables: PyTorch-style parameter groups.

    The multiplier of a variable is the value of the first pattern of
    ``lr_multipliers`` that ``re.search`` finds in its ``path`` (1.0 if
    none). It scales both the Adam step and the decoupled weight decay
    (torch's AdamW decays by ``lr * weight_decay`` of the group).
    Variables of rank <= 1 (biases, LayerNorm / BatchNorm scales and
    offsets) get no decay unless ``decay_rank_1=True``; Keras'
    ``exclude_from_weight_decay()`` still works on top.

    Adam's epsilon defaults to 1e-8 (PyTorch); Keras adds it to
    ``sqrt(v_hat * (1 - beta_2 ** t))`` rather than ``sqrt(v_hat)``, a
    difference of order epsilon.

    Where Keras' internals differ from what the grouped update reads, each
    variable takes AdamW's own update at its group's rate (same numbers).

    ``stand_in`` (attribute, False): set on the optimizer a model's
    constructor compiles with, which then stands in for none when a
    trained state is loaded (see ``load_own_variables``).

    Args:
        learning_rate: float or ``LearningRateSchedule``. Base rate.
        weight_decay: float. Decoupled weight decay.
        lr_multipliers: dict or None. Regex on ``variable.path`` ->
            learning-rate multiplier.
        decay_rank_1: bool. Also decay variables of rank <= 1.
        beta_1, beta_2, epsilon: Adam's constants.
        **kwargs: other ``keras.optimizers.AdamW`` arguments (``clipnorm``,
            ``global_clipnorm``, ``gradient_accumulation_steps``, ...).

    Example:
    >>> opt = GroupedAdamW(6e-5, lr_multipliers={"^decode_head/": 10.0})
    """

    def __init__(
        self,
        learning_rate=6e-5,
        weight_decay=0.01,
        lr_multipliers=None,
        decay_rank_1=False,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-8,
        **kwargs,
    ):
        super().__init__(
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            **kwargs,
        )
        lr_multipliers = dict(lr_multipliers or {})
        for pattern, value in lr_multipliers.items():
            re.compile(pattern)  # fail early on a bad pattern
            if float(value) < 0:
                raise ValueError(
                    "`lr_multipliers` values must be >= 0. Received "
                    f"{pattern!r}: {value}"
                )
        self._multiplier_patterns = tuple(
            (str(p), float(v)) for p, v in lr_multipliers.items()
        )
        self.decay_rank_1 = bool(decay_rank_1)
        # Variables an optimizer has before `build` (step counter, rate).
        self._unbuilt_variable_count = len(self.variables)
        self._rates_cache = None
        # Made by a model's constructor, not given by the user.
        self.stand_in = False

    def load_own_variables(self, store):
        """Keras' restore, plus two cases of a model built compiled:

        - the state of an optimizer saved before its first step (only its
          counters): a model saved untrained holds such an optimizer, and
          Keras would warn that it skips it. The slots stay at zero, as a
          new optimizer's.
        - a trained state into the optimizer a model's constructor made
          (``stand_in``), still unbuilt (``load_model(...,
          compile=False)``, ``load_weights`` into a new model): skipped
          without Keras' warning, as Keras skips it for a model that has
          no optimizer. An optimizer given to ``compile`` keeps the
          warning.
        """
        saved = len(store.keys())
        if self.built and saved == self._unbuilt_variable_count:
            for i, variable in enumerate(self.variables[:saved]):
                variable.assign(store[str(i)])
            return
        if self.stand_in and not self.built and saved != len(self.variables):
            return
        super().load_own_variables(store)

    @property
    def lr_multipliers(self):
        return dict(self._multiplier_patterns)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        internals.check_update_hooks(type(self), built=self)
        groups = [self._group(v) for v in var_list]
        # Indexed like the optimizer's slots (`_get_variable_index`).
        self._multiplier_table = tuple(m for m, _ in groups)
        self._decay_table = tuple(d for _, d in groups)
        # For AdamW's own update_step: a Keras variable (TF: its tf.Variable)
        tf = keras.backend.backend() == "tensorflow"
        self._groups_by_id = {
            id(v.value if tf else v): g for v, g in zip(var_list, groups)
        }

    def _group(self, variable):
        multiplier = next(
            (
                value
                for pattern, value in self._multiplier_patterns
                if re.search(pattern, variable.path)
            ),
            1.0,
        )
        decayed = self._use_weight_decay(variable) and (
            self.decay_rank_1 or len(variable.shape) > 1
        )
        return multiplier, decayed

    def variable_groups(self, variables=None):
        """``{variable.path: (lr_multiplier, decayed)}``, for inspection.

        Args:
            variables: list of variables or None. Default: the variables
                the optimizer was built with.
        """
        if variables is None:
            if not self.built:
                raise ValueError(
                    "Pass `variables` or build the optimizer first."
                )
            variables = self._trainable_variables
        return {v.path: self._group(v) for v in variables}

    def _apply_weight_decay(self, variables):
        # Decay happens in the update, with each variable's own rate.
        return

    def _group_key(self, index, dtype):
        """What the variables of one group share: multiplier, decay, dtype."""
        return self._multiplier_table[index], self._decay_table[index], dtype

    def _rates(self, learning_rate, index, dtype):
        """``(alpha, decay)`` of variable ``index``: Adam's bias-corrected
        step size and the decoupled decay ``lr * weight_decay`` (None when
        the variable is not decayed), Keras' ``Adam`` formulas. Inside
        ``_step_rates()`` (TensorFlow's per-variable updates) computed
        once per group and step."""
        key = self._group_key(index, dtype)
        multiplier, decayed, _ = key
        if self._rates_cache is not None and key in self._rates_cache:
            return self._rates_cache[key]
        lr = ops.cast(learning_rate, dtype)
        if multiplier != 1.0:
            lr = lr * multiplier
        step = ops.cast(self.iterations + 1, dtype)
        beta_1_power = ops.power(ops.cast(self.beta_1, dtype), step)
        beta_2_power = ops.power(ops.cast(self.beta_2, dtype), step)
        alpha = lr * ops.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        decay = None
        if decayed and self.weight_decay:
            decay = ops.cast(self.weight_decay, dtype) * lr
        if self._rates_cache is not None:
            self._rates_cache[key] = (alpha, decay)
        return alpha, decay

    @contextlib.contextmanager
    def _step_rates(self):
        """Share each group's rates between its variables for one step of
        per-variable ``update_step`` calls."""
        self._rates_cache = {}
        try:
            yield
        finally:
            self._rates_cache = None

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if _TF_DISTRIBUTE or not internals.on(GROUPED_UPDATE):
            # TensorFlow: tf.distribute updates each variable in a merge
            # call (`update_step`, with the rates shared from there on).
            super()._backend_update_step(
                grads, trainable_variables, learning_rate
            )
            return
        groups = {}
        for grad, variable in zip(grads, trainable_variables):
            index = self._get_variable_index(variable)
            key = self._group_key(index, variable.dtype)
            groups.setdefault(key, []).append((index, grad, variable))
        for members in groups.values():  # one `_rates` call per group
            indices, grads, variables = zip(*members)
            self._update(indices, grads, variables, learning_rate)

    def _distributed_tf_update_step(self, *args, **kwargs):
        with self._step_rates():
            return super()._distributed_tf_update_step(*args, **kwargs)

    def _update(self, indices, grads, variables, learning_rate):
        """One step of variables that share their rates (one group)."""
        alpha, decay = self._rates(
            learning_rate, indices[0], variables[0].dtype
        )
        hats = None
        if self.amsgrad:
            hats = [self._velocity_hats[i] for i in indices]
        optimizer_ops.adamw_update(
            list(variables),
            list(grads),
            [self._momentums[i] for i in indices],
            [self._velocities[i] for i in indices],
            alpha,
            decay,
            self.beta_1,
            self.beta_2,
            self.epsilon,
            velocity_hats=hats,
        )

    def update_step(self, gradient, variable, learning_rate):
        if internals.on(GROUPED_UPDATE):
            index = self._get_variable_index(variable)
            self._update((index,), (gradient,), (variable,), learning_rate)
            return
        # AdamW's own step at the group's rate, after the decay (as Keras).
        multiplier, decayed = self._groups_by_id[id(variable)]
        lr = ops.cast(learning_rate, variable.dtype) * multiplier
        if decayed and self.weight_decay:
            decay = ops.cast(self.weight_decay, variable.dtype) * lr
            variable.assign(variable - variable * decay)
        super().update_step(gradient, variable, lr)

    def get_config(self):
        names = ("lr_multipliers", "decay_rank_1")
        return {**super().get_config(), **attribute_config(self, names)}


def _head_pattern(model, head_layer):
    """A ``variable.path`` regex that selects exactly the head's variables."""
    try:
        head = model.get_layer(head_layer)
    except ValueError as e:
        raise ValueError(
            f"The model has no layer named {head_layer!r} (the decode "
            "head, trained at a higher learning rate). Pass head_layer=... "
            "or head_lr_multiplier=1.0."
        ) from e
    head_vars = head.trainable_variables
    if not head_vars:
        raise ValueError(
            f"Layer {head_layer!r} has no trainable variables; build the "
            "model first."
        )
    prefix = os.path.commonprefix([v.path for v in head_vars])
    prefix = prefix[: prefix.rfind("/") + 1] or prefix
    pattern = "^" + re.escape(prefix)
    selected = {
        id(v) for v in model.trainable_variables if re.search(pattern, v.path)
    }
    if selected != {id(v) for v in head_vars}:
        raise ValueError(
            f"Cannot select the variables of {head_layer!r} by path: prefix "
            f"{prefix!r} also matches other variables."
        )
    return pattern


def create_optimizer(
    model,
    *,
    total_steps,
    learning_rate=6e-5,
    weight_decay=0.01,
    warmup_steps=1500,
    warmup_ratio=1e-6,
    power=1.0,
    head_lr_multiplier=10.0,
    min_lr=0.0,
    head_layer="decode_head",
    **kwargs,
):
    """SegFormer's AdamW recipe (paper / mmseg) for ``model``.

    AdamW with no decay on norms and biases; the ``decode_head`` layer's
    variables at ``head_lr_multiplier`` times the rate; ``WarmupPolyDecay``
    schedule. One difference with mmcv: the head's rate is
    ``head_lr_multiplier * schedule``, so with ``min_lr > 0`` its floor is
    ``head_lr_multiplier * min_lr`` (mmcv: ``min_lr``). mmseg also decays
    the biases of linear layers; this recipe does not.

    Args:
        model: keras.Model. The SegFormer (with a ``head_layer`` layer).
        total_steps: int. Number of training steps (poly decay length).
        learning_rate: float. Peak (base) learning rate.
        weight_decay: float. Decoupled weight decay.
        warmup_steps: int. Linear warmup steps (<= total_steps).
        warmup_ratio: float. Warmup starts at this fraction of the rate.
        power: float. Poly decay exponent.
        head_lr_multiplier: float. Learning-rate factor of the head.
        min_lr: float. Final learning rate.
        head_layer: str. Name of the decode head layer.
        **kwargs: passed to ``GroupedAdamW`` (``clipnorm``, ``epsilon``,
            ``gradient_accumulation_steps``, ...).

    Returns:
        ``GroupedAdamW``.

    Raises:
        ValueError: ``total_steps`` <= 0, or ``warmup_steps`` outside
            ``[0, total_steps]``.

    Example:
    >>> opt = create_optimizer(model, total_steps=160_000)
    >>> model.compile(optimizer=opt, loss=SegFormerLoss())
    """
    total_steps = int(total_steps)
    if total_steps <= 0:
        raise ValueError(f"`total_steps` must be > 0. Received: {total_steps}")
    if not 0 <= int(warmup_steps) <= total_steps:
        raise ValueError(
            f"`warmup_steps` must be in [0, total_steps={total_steps}]. "
            f"Received: {warmup_steps}"
        )
    schedule = WarmupPolyDecay(
        learning_rate,
        decay_steps=total_steps,
        warmup_steps=warmup_steps,
        warmup_ratio=warmup_ratio,
        power=power,
        end_learning_rate=min_lr,
    )
    return grouped_adamw(
        model,
        schedule,
        weight_decay=weight_decay,
        head_lr_multiplier=head_lr_multiplier,
        head_layer=head_layer,
        **kwargs,
    )


def grouped_adamw(
    model,
    learning_rate=6e-5,
    *,
    weight_decay=0.01,
    head_lr_multiplier=10.0,
    head_layer="decode_head",
    **kwargs,
):
    """``GroupedAdamW`` with ``head_layer``'s variables at
    ``head_lr_multiplier`` times ``learning_rate`` (a float or schedule).

    The optimizer a built SegFormer is compiled with (constant rate: the
    recipe's poly schedule needs the total step count, which only
    ``create_optimizer`` / ``compile_for_training`` are given).

    Args:
        model: keras.Model. Has a ``head_layer`` layer unless
            ``head_lr_multiplier`` is 1.
        learning_rate: float or ``LearningRateSchedule``. Base rate.
        weight_decay: float. Decoupled weight decay.
        head_lr_multiplier: float. Learning-rate factor of the head.
        head_layer: str. Name of the decode head layer.
        **kwargs: passed to ``GroupedAdamW``.
    """
    multipliers = {}
    if float(head_lr_multiplier) != 1.0:
        multipliers[_head_pattern(model, head_layer)] = float(
            head_lr_multiplier
        )
    return GroupedAdamW(
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        lr_multipliers=multipliers,
        **kwargs,
    )


def compile_for_training(
    model,
    total_steps,
    *,
    optimizer=None,
    warmup_steps=None,
    class_weights=None,
    ignore_index=255,
    metrics=None,
    **kwargs,
):
    """Compile ``model`` with SegFormer's loss, optimizer and mIoU.

    Inside a ``distribution_scope`` with several devices, call it in the
    scope too; on TensorFlow it also switches the BatchNorm layers to
    global batch statistics (``synchronize_batch_norm``).

    Args:
        model: keras.Model. The SegFormer (logits at 1/4 resolution).
        total_steps: int. Number of training steps (for the schedule).
        optimizer: optimizer or None. Default: ``create_optimizer(model,
            total_steps=total_steps, warmup_steps=warmup_steps)`` with the
            recipe's other defaults.
        warmup_steps: int or None. Warmup of the default optimizer; None:
            the recipe's 1500, or ``total_steps`` for shorter runs.
        class_weights: sequence of floats or None. See ``SegFormerLoss``.
        ignore_index: int. Label value left out of loss and metrics.
        metrics: list or None. Default ``[MeanIoU(num_classes)]``;
            add ``MeanAccuracy`` / ``PixelAccuracy`` as needed (each one
            upsamples the logits again). Binary models (one logit channel)
            count 2 classes.
        **kwargs: passed to ``model.compile`` (``jit_compile``,
            ``steps_per_execution``, ...).

    Returns:
        The compiled model.

    Raises:
        ValueError: ``warmup_steps`` given with an ``optimizer``, or
            ``total_steps`` / ``warmup_steps`` out of range.

    Example:
    >>> model = keras_segformer.SegFormerB0(num_classes=150)
    >>> compile_for_training(model, total_steps=160_000)
    >>> model.fit(train_ds, epochs=..., validation_data=val_ds)
    """
    if optimizer is None:
        if warmup_steps is None:
            warmup_steps = min(1500, int(total_steps))
        optimizer = create_optimizer(
            model, total_steps=total_steps, warmup_steps=warmup_steps
        )
    elif warmup_steps is not None:
        raise ValueError(
            "`warmup_steps` configures the default optimizer; pass it to "
            "create_optimizer() when giving `optimizer`."
        )
    if metrics is None:
        channels = model.output_shape[-1]
        metrics = [MeanIoU(max(channels, 2), ignore_index=ignore_index)]
    if num_replicas(model) > 1:
        synchronize_batch_norm(model)
    model.compile(
        optimizer=optimizer,
        loss=SegFormerLoss(
            ignore_index=ignore_index, class_weights=class_weights
        ),
        metrics=metrics,
        **kwargs,
    )
    return model
