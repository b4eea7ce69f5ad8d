"""Optimizer recipe: schedule vs mmcv, AdamW groups vs torch.optim.AdamW."""

import contextlib

import keras
import numpy as np
import pytest
import torch
from conftest import BACKEND, tiny_segformer
from test_losses import SHAPE, quarter_res_model

from keras_segformer.training import (
    GroupedAdamW,
    MeanIoU,
    SegFormerLoss,
    WarmupPolyDecay,
    compile_for_training,
    create_optimizer,
)


def _mmcv_lr(step, base, total, warmup, ratio, power, min_lr):
    """mmcv PolyLrUpdaterHook + linear warmup, as written in mmcv."""
    coeff = (1 - min(step, total) / total) ** power
    regular = (base - min_lr) * coeff + min_lr
    if warmup and step < warmup:
        k = (1 - step / warmup) * (1 - ratio)
        return regular * (1 - k)
    return regular


@pytest.mark.parametrize(
    "warmup, ratio, power, min_lr",
    [(1500, 1e-6, 1.0, 0.0), (100, 0.1, 0.9, 1e-6), (0, 1e-6, 1.0, 0.0)],
)
def test_schedule_matches_mmcv(warmup, ratio, power, min_lr):
    total = 160_000
    schedule = WarmupPolyDecay(
        6e-5,
        decay_steps=total,
        warmup_steps=warmup,
        warmup_ratio=ratio,
        power=power,
        end_learning_rate=min_lr,
    )
    steps = [0, 1, 50, 99, 100, 750, 1499, 1500, 1501, 80_000, total, 200_000]
    got = [float(keras.ops.convert_to_numpy(schedule(s))) for s in steps]
    expected = [
        _mmcv_lr(s, 6e-5, total, warmup, ratio, power, min_lr) for s in steps
    ]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-15)
    if warmup:
        assert got[0] == pytest.approx(6e-5 * ratio, rel=1e-4)


def test_groups_of_the_real_model():
    """Head (and only head) at 10x; no decay on exactly the rank-1
    variables (biases, LayerNorm / BatchNorm gamma and beta)."""
    # Only paths and shapes matter here: on JAX, skip initializing the
    # weights, which eager JAX compiles shape by shape (slow).
    lazy = BACKEND == "jax"
    scope = keras.StatelessScope(initialize_variables=False) if lazy else None
    with scope or contextlib.nullcontext():
        model = tiny_segformer()
    opt = create_optimizer(model, total_steps=100, warmup_steps=10)
    groups = opt.variable_groups(model.trainable_variables)
    head = {v.path for v in model.get_layer("decode_head").trainable_variables}
    assert head and len(head) < len(groups)
    for v in model.trainable_variables:
        multiplier, decayed = groups[v.path]
        assert multiplier == (10.0 if v.path in head else 1.0), v.path
        leaf = v.path.rsplit("/", 1)[-1]
        assert decayed == (leaf not in ("bias", "gamma", "beta")), v.path
    assert any(
        "batch_norm" in p and not d for p, (_, d) in groups.items()
    )  # BN in the head: 10x, not decayed


def test_adamw_groups_match_torch(rng):
    """Three steps with known gradients (some all-zero, so the move is pure
    weight decay) equal torch.optim.AdamW with mmseg's parameter groups and
    mmcv's learning rates."""
    model = quarter_res_model(3)
    lr, wd, total, warmup, ratio = 1e-2, 0.5, 10, 2, 0.1
    opt = create_optimizer(
        model,
        total_steps=total,
        learning_rate=lr,
        weight_decay=wd,
        warmup_steps=warmup,
        warmup_ratio=ratio,
    )
    variables = model.trainable_variables
    start = [keras.ops.convert_to_numpy(v) for v in variables]
    zero_grad = {"stem/kernel", "norm/gamma", "decode_head/kernel"}
    grads = [
        [
            np.zeros(v.shape, "float32")
            if v.path in zero_grad
            else rng.standard_normal(v.shape).astype("float32")
            for v in variables
        ]
        for step in range(3)
    ]
    for step_grads in grads:
        opt.apply(
            [keras.ops.convert_to_tensor(g) for g in step_grads], variables
        )

    params = [torch.nn.Parameter(torch.from_numpy(x.copy())) for x in start]
    groups = []
    for head in (True, False):
        for decay in (True, False):
            members = [
                p
                for p, v in zip(params, variables)
                if v.path.startswith("decode_head/") == head
                and (len(v.shape) > 1) == decay
            ]
            groups.append(
                {
                    "params": members,
                    "lr_mult": 10.0 if head else 1.0,
                    "weight_decay": wd if decay else 0.0,
                }
            )
    torch_opt = torch.optim.AdamW(groups, lr=lr, eps=1e-8)
    for step, step_grads in enumerate(grads):
        base = _mmcv_lr(step, lr, total, warmup, ratio, 1.0, 0.0)
        for group in torch_opt.param_groups:
            group["lr"] = base * group["lr_mult"]
        for p, g in zip(params, step_grads):
            p.grad = torch.from_numpy(g)
        torch_opt.step()

    rates = [_mmcv_lr(t, lr, total, warmup, ratio, 1.0, 0.0) for t in range(3)]
    for v, p, x0 in zip(variables, params, start):
        got = keras.ops.convert_to_numpy(v)
        want = p.detach().numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
        if v.path not in zero_grad:
            assert not np.allclose(got, x0), v.path
            continue
        # Zero gradients: Adam does not move it, only the decay does.
        multiplier = 10.0 if v.path.startswith("decode_head/") else 1.0
        decay = wd if len(v.shape) > 1 else 0.0
        shrink = np.prod([1 - r * multiplier * decay for r in rates])
        np.testing.assert_allclose(got, x0 * shrink, rtol=1e-6)
    assert zero_grad == {"stem/kernel", "norm/gamma", "decode_head/kernel"}


def test_fit_moves_head_ten_times_further(rng):
    """One compiled fit step on the backend: Adam's first step moves each
    weight by ~lr (|g| >> eps), the head's by ~10 lr."""
    lr = 1e-3
    model = quarter_res_model(3)
    opt = create_optimizer(
        model,
        total_steps=10,
        learning_rate=lr,
        weight_decay=0.0,
        warmup_steps=0,
    )
    compile_for_training(model, 10, optimizer=opt)
    images = rng.standard_normal((4, *SHAPE[1:], 3)).astype("float32")
    labels = rng.integers(0, 3, (4, *SHAPE[1:])).astype("int32")
    before = {
        v.path: keras.ops.convert_to_numpy(v) for v in model.trainable_variables
    }
    model.fit(images, labels, batch_size=4, epochs=1, verbose=0)
    moved = {
        v.path: np.abs(keras.ops.convert_to_numpy(v) - before[v.path]).max()
        for v in model.trainable_variables
    }
    np.testing.assert_allclose(moved["stem/kernel"], lr, rtol=0.02)
    np.testing.assert_allclose(moved["decode_head/kernel"], 10 * lr, rtol=0.02)
    np.testing.assert_allclose(moved["decode_head/bias"], 10 * lr, rtol=0.02)
    # Training goes on and the loss goes down.
    history = model.fit(images, labels, batch_size=4, epochs=4, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < losses[0]
    assert "mean_iou" in history.history
    lr_now = keras.ops.convert_to_numpy(opt.learning_rate)
    np.testing.assert_allclose(lr_now, lr * (1 - 5 / 10), rtol=1e-5)


def test_compile_for_training_defaults(rng):
    model = quarter_res_model(3)
    compile_for_training(model, total_steps=40)
    schedule = model.optimizer._learning_rate
    assert isinstance(model.optimizer, GroupedAdamW)
    assert (schedule.initial_learning_rate, schedule.warmup_steps) == (6e-5, 40)
    assert schedule.decay_steps == 40
    assert list(model.optimizer.lr_multipliers.values()) == [10.0]
    assert model.optimizer.weight_decay == 0.01
    (metric,) = model._compile_config.config["metrics"]
    assert isinstance(metric, MeanIoU) and metric.num_classes == 3
    compile_for_training(model, total_steps=160_000)
    assert model.optimizer._learning_rate.warmup_steps == 1500
    with pytest.raises(ValueError, match="warmup_steps"):
        compile_for_training(model, 10, optimizer="adam", warmup_steps=3)


def test_binary_model_trains(rng):
    """One logit channel: sigmoid loss, 2-class mIoU, compiled fit."""
    model = quarter_res_model(1)
    compile_for_training(model, total_steps=10, warmup_steps=0)
    images = rng.standard_normal((2, *SHAPE[1:], 3)).astype("float32")
    labels = rng.integers(0, 2, (2, *SHAPE[1:])).astype("int32")
    labels[:, :4] = 255
    (metric,) = model._compile_config.config["metrics"]
    assert metric.num_classes == 2
    history = model.fit(images, labels, epochs=2, verbose=0).history
    assert np.isfinite(history["loss"]).all()
    assert 0.0 <= history["mean_iou"][-1] <= 1.0


def test_save_and_load_compiled_model(rng, tmp_path):
    model = quarter_res_model(3)
    compile_for_training(
        model,
        total_steps=50,
        optimizer=create_optimizer(model, total_steps=50, warmup_steps=5),
        class_weights=[1.0, 2.0, 3.0],
    )
    images = rng.standard_normal((2, *SHAPE[1:], 3)).astype("float32")
    labels = rng.integers(0, 3, (2, *SHAPE[1:])).astype("int32")
    model.fit(images, labels, epochs=2, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.saving.load_model(path)
    opt = restored.optimizer
    assert isinstance(opt, GroupedAdamW)
    assert opt.lr_multipliers == model.optimizer.lr_multipliers
    assert list(opt.lr_multipliers.values()) == [10.0]
    assert isinstance(opt._learning_rate, WarmupPolyDecay)
    assert opt._learning_rate.get_config() == (
        model.optimizer._learning_rate.get_config()
    )
    assert isinstance(restored.loss, SegFormerLoss)
    assert restored.loss.class_weights == [1.0, 2.0, 3.0]
    restored_metrics = restored._compile_config.config["metrics"]
    assert "MeanIoU" in str(restored_metrics)
    # Optimizer state (step, Adam moments) comes back too.
    assert int(keras.ops.convert_to_numpy(opt.iterations)) == 2
    for a, b in zip(opt.variables, model.optimizer.variables):
        np.testing.assert_array_equal(
            keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b)
        )


def test_errors():
    model = quarter_res_model(3)
    with pytest.raises(ValueError, match="warmup_steps"):
        create_optimizer(model, total_steps=100)  # default warmup 1500
    with pytest.raises(ValueError, match="total_steps"):
        create_optimizer(model, total_steps=0)
    other = quarter_res_model(3, name="classifier")
    with pytest.raises(ValueError, match="no layer named 'decode_head'"):
        create_optimizer(other, total_steps=10, warmup_steps=0)
    opt = create_optimizer(
        other, total_steps=10, warmup_steps=0, head_lr_multiplier=1.0
    )
    assert opt.lr_multipliers == {}
    with pytest.raises(ValueError, match="lr_multipliers"):
        GroupedAdamW(lr_multipliers={"x": -1.0})
    assert isinstance(MeanIoU(2), keras.metrics.Metric)
