"""tf2onnx rewriters: the op patterns Keras' TensorFlow layers leave,
written as the ONNX ops that ONNX Runtime runs as one kernel.

Run by ``tf_export.write_onnx`` (tf2onnx's ``custom_rewriter``) on the
TensorFlow graph before its ops are converted, so that tf2onnx's own
optimizers (transposes, constant folding) then work on the result.
Each rewriter replaces a pattern only when its structure proves the
replacement computes the same values; anything else is left to tf2onnx.

- ``rewrite_layer_norm``: Keras' layer normalization over the last axis
  (``tf.nn.moments``, ``rsqrt``, scale and shift: ten ops) ->
  ``LayerNormalization`` (opset 17).
- ``rewrite_tensordot``: ``tf.tensordot(x, kernel, [[-1], [0]])``, Keras'
  ``Dense`` on a map (reshape to 2-D, ``MatMul``, reshape back, with the
  shape arithmetic for both reshapes) -> one ``MatMul``, which broadcasts
  the kernel over the leading axes.
- ``rewrite_gelu``: TensorFlow's exact GELU ``0.5 x erfc(-x / sqrt 2)``
  (ONNX has no ``Erfc``) -> ``0.5 x (1 + erf(x / sqrt 2))``, the form
  ONNX Runtime fuses into its ``Gelu`` kernel.

Backend-specific on purpose: runs only where ``tf_export`` runs.
"""

import numpy as np

# The first opset with LayerNormalization.
LAYER_NORM_OPSET = 17


def _producer(g, tensor, *types):
    """The node computing ``tensor`` if its type is one of ``types``."""
    node = g.get_node_by_output(tensor)
    if node is not None and node.type in types:
        return node
    return None


def _const(g, tensor):
    """The value of ``tensor`` as a numpy array, or None if not constant."""
    node = g.get_node_by_output(tensor)
    if node is None or not node.is_const():
        return None
    return np.asarray(node.get_tensor_value(as_list=False))


def _operands(node):
    """``node``'s two inputs in both orders (commutative ops)."""
    a, b = node.input
    return ((a, b), (b, a))


def _skip_identity(g, tensor):
    """``tensor`` with ``StopGradient`` / ``Identity`` producers skipped."""
    node = _producer(g, tensor, "StopGradient", "Identity")
    while node is not None:
        tensor = node.input[0]
        node = _producer(g, tensor, "StopGradient", "Identity")
    return tensor


def _is_last_axis(g, axes_tensor, x):
    axes = _const(g, axes_tensor)
    rank = g.get_rank(x)
    if axes is None or rank is None or axes.size != 1:
        return False
    return int(axes.reshape(())) % rank == rank - 1


def _channel_vector(value, channels):
    """``value`` (gamma or beta) as a float32 ``(channels,)`` vector, or
    None when it is not one per channel."""
    if value is None or value.size != channels:
        return None
    if any(d != 1 for d in value.shape[:-1]):
        return None
    return value.reshape(channels).astype(np.float32)


def _match_layer_norm(g, node):
    """``(x, gamma, beta, epsilon)`` when ``node`` ends Keras' layer
    normalization of ``x`` over its last axis (``keras.ops
    .layer_normalization`` on TensorFlow)::

        mean, var = moments(x)          # Mean, SquaredDifference, Mean
        inv = rsqrt(var + epsilon) * gamma
        out = x * inv + (-mean * inv + beta)

    TensorFlow's graph optimizer drops a ``* gamma`` of ones and a
    ``+ beta`` of zeros (a freshly initialized layer): those forms match
    too, with gamma 1 and beta 0.
    """
    for scaled_t, shift_t in _operands(node):
        scaled = _producer(g, scaled_t, "Mul")
        if scaled is None:
            continue
        shift_add = _producer(g, shift_t, "AddV2", "Add")
        shifts = [(shift_t, None)]  # beta folded away (zeros)
        if shift_add is not None:
            shifts += list(_operands(shift_add))
        for x, inv in _operands(scaled):
            for shift_mul_t, beta_t in shifts:
                found = _match_normalizer(g, x, inv, shift_mul_t)
                if found is None:
                    continue
                gamma, epsilon, channels = found
                if beta_t is None:
                    beta = np.zeros(channels, np.float32)
                else:
                    beta = _channel_vector(_const(g, beta_t), channels)
                if beta is not None:
                    return x, gamma, beta, epsilon
    return None


def _match_normalizer(g, x, inv, shift_mul_t):
    """``(gamma, epsilon, channels)`` when ``inv`` is ``rsqrt(var(x) +
    epsilon) * gamma`` (or ``rsqrt(var(x) + epsilon)``: gamma 1) and
    ``shift_mul_t`` is ``-mean(x) * inv``."""
    shift_mul = _producer(g, shift_mul_t, "Mul")
    shape = g.get_shape(x)
    if shift_mul is None or not shape or shape[-1] is None or shape[-1] < 1:
        return None
    negated = [a for a, b in _operands(shift_mul) if b == inv]
    neg = negated and _producer(g, negated[0], "Neg")
    mean = neg and _producer(g, neg.input[0], "Mean")
    if not mean or mean.input[0] != x:
        return None
    if not _is_last_axis(g, mean.input[1], x):
        return None
    channels = shape[-1]
    inv_mul = _producer(g, inv, "Mul")
    candidates = list(_operands(inv_mul)) if inv_mul is not None else []
    candidates.append((inv, None))  # gamma folded away (ones)
    for rsqrt_t, gamma_t in candidates:
        rsqrt = _producer(g, rsqrt_t, "Rsqrt")
        if gamma_t is None:
            gamma = np.ones(channels, np.float32)
        else:
            gamma = _channel_vector(_const(g, gamma_t), channels)
        add = rsqrt and _producer(g, rsqrt.input[0], "AddV2", "Add")
        if add is None or gamma is None:
            continue
        for var_t, eps_t in _operands(add):
            var = _producer(g, var_t, "Mean")
            eps = _const(g, eps_t)
            if var is None or eps is None or eps.size != 1:
                continue
            sq = _producer(g, var.input[0], "SquaredDifference")
            if sq is None or not _is_last_axis(g, var.input[1], x):
                continue
            if sq.input[0] != x:
                continue
            if _skip_identity(g, sq.input[1]) != mean.output[0]:
                continue
            return gamma, float(eps.reshape(())), channels
    return None


def rewrite_layer_norm(g, ops):
    """tf2onnx rewriter: Keras' layer normalization over the last axis ->
    ONNX ``LayerNormalization`` (float32 graphs, opset 17 or later)."""
    if g.opset < LAYER_NORM_OPSET:
        return ops
    for node in list(ops):
        if node.type not in ("AddV2", "Add"):
            continue
        if g.get_dtype(node.output[0]) != 1:  # onnx FLOAT
            continue
        found = _match_layer_norm(g, node)
        if found is None:
            continue
        x, gamma, beta, epsilon = found
        scale = g.make_const(f"{node.name}/ln_scale", gamma)
        bias = g.make_const(f"{node.name}/ln_bias", beta)
        norm = g.make_node(
            "LayerNormalization",
            [x, scale.output[0], bias.output[0]],
            attr={"axis": -1, "epsilon": epsilon},
            shapes=[g.get_shape(node.output[0])],
            dtypes=[g.get_dtype(node.output[0])],
            op_name_scope=node.name,
        )
        ops.extend([scale, bias, norm])
        g.replace_all_inputs(node.output[0], norm.output[0], ops=ops)
    return ops


def _last_dim_of(g, tensor, x):
    """Whether the int scalar ``tensor`` is ``x``'s last dimension as
    tensordot computes it: ``prod(gather(shape(x), [rank - 1]))``."""
    prod = _producer(g, tensor, "Prod")
    gather = prod and _producer(g, prod.input[0], "GatherV2")
    shape = gather and _producer(g, gather.input[0], "Shape")
    if not shape or shape.input[0] != x:
        return False
    indices = _const(g, gather.input[1])
    return indices is not None and indices.reshape(-1).tolist() == [
        g.get_rank(x) - 1
    ]


def _tensordot_input(g, flatten, rows):
    """The tensor ``x`` that ``flatten`` (a ``Reshape``) turns into a
    matrix of ``rows``-long rows when ``x``'s last axis has ``rows``
    entries: then the matrix rows are ``x``'s vectors along its last
    axis, in order, whatever the number of rows."""
    x, target = flatten.input
    x_shape = g.get_shape(x)
    if not x_shape or len(x_shape) < 3 or x_shape[-1] != rows:
        return None
    value = _const(g, target)
    if value is not None:
        return x if value.reshape(-1).tolist()[1:] == [rows] else None
    pack = _producer(g, target, "Pack")
    if pack is None or len(pack.input) != 2 or pack.get_attr_value("axis"):
        return None
    width = pack.input[1]
    width_value = _const(g, width)
    if width_value is not None and width_value.reshape(-1).tolist() == [rows]:
        return x
    return x if _last_dim_of(g, width, x) else None


def _restores_leading_axes(g, shape_t, x, units):
    """Whether the shape tensor ``shape_t`` is ``x``'s shape with its last
    axis replaced by ``units``: ``concat([gather(shape(x), [0 .. r-2]),
    [units]])`` (tensordot's own) or the same as a constant."""
    rank = g.get_rank(x)
    expected_tail = [units]
    value = _const(g, shape_t)
    if value is not None:
        x_shape = g.get_shape(x)
        return (
            x_shape is not None
            and all(d is not None and d > 0 for d in x_shape[:-1])
            and value.tolist() == list(x_shape[:-1]) + expected_tail
        )
    concat = _producer(g, shape_t, "ConcatV2")
    if concat is None or len(concat.input) != 3:
        return False
    head_t, tail_t, axis_t = concat.input
    axis, tail = _const(g, axis_t), _const(g, tail_t)
    gather = _producer(g, head_t, "GatherV2")
    if axis is None or tail is None or gather is None:
        return False
    if int(axis.reshape(())) != 0 or tail.reshape(-1).tolist() != (
        expected_tail
    ):
        return False
    shape = _producer(g, gather.input[0], "Shape")
    indices = _const(g, gather.input[1])
    gather_axis = _const(g, gather.input[2])
    return (
        shape is not None
        and shape.input[0] == x
        and indices is not None
        and indices.reshape(-1).tolist() == list(range(rank - 1))
        and gather_axis is not None
        and int(gather_axis.reshape(())) == 0
    )


def rewrite_tensordot(g, ops):
    """tf2onnx rewriter: ``tf.tensordot(x, kernel, [[-1], [0]])`` (a
    ``Dense`` on a tensor of rank 3 or more) -> ``MatMul(x, kernel)``."""
    for node in list(ops):
        if node.type != "Reshape":
            continue
        matmul = _producer(g, node.input[0], "MatMul")
        if matmul is None or any(
            matmul.get_attr_value(a, 0) for a in ("transpose_a", "transpose_b")
        ):
            continue
        flatten = _producer(g, matmul.input[0], "Reshape")
        kernel_shape = g.get_shape(matmul.input[1])
        if flatten is None or not kernel_shape or len(kernel_shape) != 2:
            continue
        rows, units = kernel_shape
        x = _tensordot_input(g, flatten, rows)
        if x is None or units is None or units < 1:
            continue
        if not _restores_leading_axes(g, node.input[1], x, units):
            continue
        product = g.make_node(
            "MatMul",
            [x, matmul.input[1]],
            shapes=[g.get_shape(node.output[0])],
            dtypes=[g.get_dtype(node.output[0])],
            op_name_scope=node.name,
        )
        ops.append(product)
        g.replace_all_inputs(node.output[0], product.output[0], ops=ops)
    return ops


def _match_gelu(g, node):
    """``x`` when ``node`` computes ``(0.5 * x) * erfc(-x * c)`` with
    ``c`` = 1 / sqrt(2) (``tf.nn.gelu(x, approximate=False)``)."""
    for half_t, erfc_t in _operands(node):
        half = _producer(g, half_t, "Mul")
        erfc = _producer(g, erfc_t, "Erfc")
        if half is None or erfc is None:
            continue
        scaled = _producer(g, erfc.input[0], "Mul")
        if scaled is None:
            continue
        for x, half_value in _operands(half):
            value = _const(g, half_value)
            if value is None or value.size != 1 or float(value) != 0.5:
                continue
            for neg_t, c_t in _operands(scaled):
                neg = _producer(g, neg_t, "Neg")
                c = _const(g, c_t)
                if neg is None or neg.input[0] != x:
                    continue
                if c is None or c.size != 1:
                    continue
                if not np.isclose(float(c), 0.5**0.5, rtol=1e-6):
                    continue
                return x
    return None


def rewrite_gelu(g, ops):
    """tf2onnx rewriter: TensorFlow's exact GELU -> ``x * (1 + erf(x /
    sqrt 2)) * 0.5`` (erfc(-y) = 1 + erf(y)), which ONNX Runtime's graph
    optimizer fuses into one ``Gelu`` kernel (float32 graphs)."""
    for node in list(ops):
        if node.type != "Mul" or g.get_dtype(node.output[0]) != 1:
            continue
        x = _match_gelu(g, node)
        if x is None:
            continue
        name = node.name
        sqrt2 = g.make_const(f"{name}/sqrt2", np.array(2**0.5, np.float32))
        one = g.make_const(f"{name}/one", np.array(1.0, np.float32))
        half = g.make_const(f"{name}/half", np.array(0.5, np.float32))
        shape, dtype = [g.get_shape(node.output[0])], [1]
        new = [sqrt2, one, half]
        previous = x
        for op_type, other in (
            ("Div", sqrt2),
            ("Erf", None),
            ("Add", one),
            ("Mul", None),
            ("Mul", half),
        ):
            if op_type == "Erf":
                inputs = [previous]
            elif other is None:  # x * (1 + erf(...))
                inputs = [x, previous]
            else:
                inputs = [previous, other.output[0]]
            step = g.make_node(
                op_type,
                inputs,
                shapes=shape,
                dtypes=dtype,
                op_name_scope=name,
            )
            new.append(step)
            previous = step.output[0]
        ops.extend(new)
        g.replace_all_inputs(node.output[0], previous, ops=ops)
    return ops


REWRITERS = (rewrite_layer_norm, rewrite_tensordot, rewrite_gelu)
