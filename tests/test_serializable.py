"""What saved files depend on: get_config keys (read by
``attribute_config``) and the decode heads' weight paths, order and
signature (shared through ``BaseDecodeHead``)."""

import inspect

import keras
import pytest

from keras_segformer import layers
from keras_segformer.serializable import attribute_config
from keras_segformer.training import (
    ConfusionMatrix,
    GroupedAdamW,
    SegFormerLoss,
    WarmupPolyDecay,
)


class _Thing:
    alpha = 1
    beta = "b"
    gamma_rate = 0.5


def test_attribute_config_reads_names_then_renamed_keys():
    config = attribute_config(_Thing(), ("beta", "alpha"), gamma="gamma_rate")
    assert config == {"beta": "b", "alpha": 1, "gamma": 0.5}
    assert list(config) == ["beta", "alpha", "gamma"]


def test_attribute_config_names_a_missing_attribute():
    with pytest.raises(AttributeError, match="delta"):
        attribute_config(_Thing(), ("alpha", "delta"))


# The keys each class added to its base config before attribute_config
# (saved .keras files hold them), with the constructor values given here.
_CASES = [
    (
        lambda: layers.EfficientSelfAttention(16, 2, 4, 0.1, 1e-6),
        {
            "hidden_size": 16,
            "num_heads": 2,
            "sr_ratio": 4,
            "attention_dropout": 0.1,
            "layer_norm_epsilon": 1e-6,
        },
    ),
    (
        lambda: layers.MiTBlock(8, 2, 2, 3, 0.1, 0.2, 0.3, 1e-6, 1e-4, True),
        {
            "hidden_size": 8,
            "num_heads": 2,
            "sr_ratio": 2,
            "mlp_ratio": 3,
            "drop_path": 0.1,
            "dropout": 0.2,
            "attention_dropout": 0.3,
            "layer_norm_epsilon": 1e-6,
            "block_norm_epsilon": 1e-4,
            "approximate_gelu": True,
        },
    ),
    (
        lambda: layers.MixFFN(8, 32, dropout=0.1, approximate_gelu=True),
        {
            "hidden_size": 8,
            "intermediate_size": 32,
            "dropout": 0.1,
            "approximate_gelu": True,
        },
    ),
    (
        lambda: layers.OverlappingPatchEmbedding(
            8, 7, 4, layer_norm_epsilon=1e-6
        ),
        {
            "hidden_size": 8,
            "patch_size": 7,
            "stride": 4,
            "layer_norm_epsilon": 1e-6,
        },
    ),
    (
        lambda: layers.SegFormerHead(5, 16, dropout=0.2, num_inputs=3),
        {
            "num_classes": 5,
            "decoder_hidden_size": 16,
            "dropout": 0.2,
            "num_inputs": 3,
        },
    ),
    (
        lambda: layers.MMSegSegFormerHead(5, 16, dropout=0.2, num_inputs=3),
        {
            "num_classes": 5,
            "decoder_hidden_size": 16,
            "dropout": 0.2,
            "num_inputs": 3,
        },
    ),
    (
        lambda: SegFormerLoss(ignore_index=7, class_weights=[1.0, 2.0]),
        {"ignore_index": 7, "class_weights": [1.0, 2.0], "check_labels": True},
    ),
    (
        lambda: ConfusionMatrix(4, ignore_index=9, from_logits=False),
        {"num_classes": 4, "ignore_index": 9, "from_logits": False},
    ),
    (
        lambda: GroupedAdamW(lr_multipliers={"head": 10.0}, decay_rank_1=True),
        {"lr_multipliers": {"head": 10.0}, "decay_rank_1": True},
    ),
]


@pytest.mark.parametrize("make, expected", _CASES, ids=range(len(_CASES)))
def test_get_config_keeps_its_keys(make, expected):
    obj = make()
    config = obj.get_config()
    assert {key: config[key] for key in expected} == expected
    base = super(type(obj), obj).get_config()
    assert set(config) == set(base) | set(expected)


def test_schedule_config_is_exactly_its_arguments():
    schedule = WarmupPolyDecay(1e-3, 100, 10, 1e-6, 0.9, 1e-7, name="s")
    config = schedule.get_config()
    assert list(config) == [
        "initial_learning_rate",
        "decay_steps",
        "warmup_steps",
        "warmup_ratio",
        "power",
        "end_learning_rate",
        "name",
    ]
    assert type(WarmupPolyDecay.from_config(config)) is WarmupPolyDecay
    assert (
        keras.optimizers.schedules.deserialize(
            keras.optimizers.schedules.serialize(schedule)
        ).get_config()
        == config
    )


_HEAD_WEIGHTS = {
    "SegFormerHead": [
        ("linear_c1/kernel", (4, 8)),
        ("linear_c1/bias", (8,)),
        ("linear_c2/kernel", (6, 8)),
        ("linear_c2/bias", (8,)),
        ("linear_fuse/kernel", (16, 8)),
        ("batch_norm/gamma", (8,)),
        ("batch_norm/beta", (8,)),
        ("batch_norm/moving_mean", (8,)),
        ("batch_norm/moving_variance", (8,)),
        ("classifier/kernel", (8, 5)),
        ("classifier/bias", (5,)),
    ],
    "MMSegSegFormerHead": [
        ("conv1/kernel", (4, 8)),
        ("conv2/kernel", (6, 8)),
        *[
            (f"conv{i}_bn/{name}", (8,))
            for i in (1, 2)
            for name in ("gamma", "beta", "moving_mean", "moving_variance")
        ],
        ("fusion_conv/kernel", (16, 8)),
        ("fusion_bn/gamma", (8,)),
        ("fusion_bn/beta", (8,)),
        ("fusion_bn/moving_mean", (8,)),
        ("fusion_bn/moving_variance", (8,)),
        ("classifier/kernel", (8, 5)),
        ("classifier/bias", (5,)),
    ],
}


@pytest.mark.parametrize("name", sorted(_HEAD_WEIGHTS))
def test_decode_heads_keep_weight_paths_order_and_signature(name):
    cls = getattr(layers, name)
    head = cls(5, 8, num_inputs=2, name="decode_head")
    head.build([(1, 8, 8, 4), (1, 4, 4, 6)])
    got = [(w.path, tuple(w.shape)) for w in head.weights]
    assert got == [("decode_head/" + p, s) for p, s in _HEAD_WEIGHTS[name]]
    assert head.classifier.dtype_policy.name == "float32"
    assert list(inspect.signature(cls).parameters) == [
        "num_classes",
        "decoder_hidden_size",
        "dropout",
        "num_inputs",
        "kwargs",
    ]
    with pytest.raises(ValueError, match=f"{name} expects 2 feature maps"):
        cls(5, 8, num_inputs=2).build([(1, 8, 8, 4)])
