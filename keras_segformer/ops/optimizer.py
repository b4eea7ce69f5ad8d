"""The AdamW update of a group of variables that share one learning rate.

``GroupedAdamW`` computes the step's rates once per group (see its
``_backend_update_step``) and hands each group to ``adamw_update``. The
generic version updates one variable at a time with ``keras.ops``, the
formulas of Keras' ``Adam.update_step``. Fast versions: ``_torch.py``
(``torch._foreach_*``, the multi-tensor kernels of Keras' own PyTorch
Adam and of ``torch.optim``), which runs a few dozen ops per step instead
of a dozen per variable; ``_tensorflow.py`` (the fused
``ResourceApplyAdam`` kernel, one graph op per variable).
"""

from keras import ops

from keras_segformer.ops.dispatch import op


@op
def adamw_update(
    variables,
    grads,
    momentums,
    velocities,
    alpha,
    decay,
    beta_1,
    beta_2,
    epsilon,
    velocity_hats=None,
):
    """One AdamW step, in place.

    Args:
        variables: list of variables (one dtype).
        grads: list of tensors, one per variable.
        momentums, velocities: lists of variables. Adam's slots.
        alpha: 0-d tensor. Step size with Adam's bias correction,
            ``lr * sqrt(1 - beta_2 ** t) / (1 - beta_1 ** t)``.
        decay: 0-d tensor or None. Decoupled weight decay,
            ``lr * weight_decay``: ``variable -= variable * decay`` first.
        beta_1, beta_2, epsilon: floats. Adam's constants.
        velocity_hats: list of variables or None. AMSGrad's slots.
    """
    hats = velocity_hats or [None] * len(variables)
    for variable, grad, m, v, v_hat in zip(
        variables, grads, momentums, velocities, hats
    ):
        if decay is not None:
            variable.assign_sub(ops.multiply(variable, decay))
        grad = ops.cast(grad, variable.dtype)
        m.assign_add(ops.multiply(ops.subtract(grad, m), 1 - beta_1))
        v.assign_add(
            ops.multiply(ops.subtract(ops.square(grad), v), 1 - beta_2)
        )
        if v_hat is not None:
            v_hat.assign(ops.maximum(v_hat, v))
            v = v_hat
        variable.assign_sub(
            ops.divide(ops.multiply(m, alpha), ops.add(ops.sqrt(v), epsilon))
        )
