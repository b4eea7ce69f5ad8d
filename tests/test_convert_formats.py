"""NVlabs, ImageNet MiT and mmsegmentation checkpoints -> Keras, in numbers.

Every checkpoint is built here from a random transformers model by inverse
key maps written from each format's own module layout (not from the
library's maps), saved with ``torch.save`` and converted. Two references
check each conversion: a functional PyTorch transcription of the format's
own forward pass (NVlabs ``Attention`` with its fused ``kv``, mmseg's
``nn.MultiheadAttention`` with packed ``in_proj`` and its
``SegformerHead``), run on the checkpoint's tensors under the format's
LayerNorm epsilons; and the transformers model the weights came from.
"""

import os
import pickle
import sys
import zipfile

import keras
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY
from hf_utils import HF_TINY, hf_forward, make_hf_model
from safetensors.numpy import load_file

import keras_segformer
from keras_segformer.convert import (
    CheckpointError,
    detect_format,
    load_checkpoint,
    load_torch_file,
    load_weights,
    read_state_dict,
    resolve_labels,
)

TOL = 1e-4
HEADS = HF_TINY["num_attention_heads"]
STRIDES = (4, 2, 2, 2)
SIZE = (45, 70)  # non-square, not a multiple of 32


def images(size=SIZE, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, *size, 3)).astype("float32")


def nchw(x):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def to_numpy(x):
    if isinstance(x, (list, tuple)):
        return [keras.ops.convert_to_numpy(t) for t in x]
    return keras.ops.convert_to_numpy(x)


def canonical_state(hf_model, directory):
    """The tensor names transformers' save_pretrained writes."""
    hf_model.save_pretrained(directory)
    state = load_file(os.path.join(directory, "model.safetensors"))
    return {
        ("segformer." + k if k.startswith("encoder.") else k): torch.tensor(v)
        for k, v in state.items()
    }


def set_layer_norm_eps(hf_model, block, patch):
    """Give a transformers model another format's LayerNorm epsilons:
    ``patch`` for patch-embedding and reduction norms, ``block`` for the
    block and stage norms."""
    for name, module in hf_model.named_modules():
        if isinstance(module, torch.nn.LayerNorm):
            inner = "patch_embeddings" in name or "attention" in name
            module.eps = patch if inner else block


class _Mover:
    """Moves tensors from a transformers state dict to new names; every
    source tensor must be moved exactly once."""

    def __init__(self, state):
        self.src = dict(state)
        self.out = {}

    def take(self, key):
        return self.src.pop(key)

    def move(self, src, dst, fn=None):
        for p in ("weight", "bias", "running_mean", "running_var"):
            if f"{src}.{p}" in self.src:
                value = self.take(f"{src}.{p}")
                self.out[f"{dst}.{p}"] = (
                    fn(value) if fn and p == "weight" else value
                )
        if f"{src}.num_batches_tracked" in self.src:
            self.out[f"{dst}.num_batches_tracked"] = self.take(
                f"{src}.num_batches_tracked"
            )

    def done(self):
        assert not self.src, f"unmapped: {sorted(self.src)}"
        return self.out


def to_nvlabs(state, prefix="backbone."):
    """transformers names -> NVlabs/SegFormer names (``mix_transformer.py``:
    ``patch_embed{n}``, ``block{n}``, ``attn.kv`` = [key; value],
    ``norm{n}``; ``segformer_head.py``: ``linear_c{n}``, ``linear_fuse``
    ConvModule, ``linear_pred``; classifier ``head``)."""
    m = _Mover(state)
    e = "segformer.encoder"
    s = 0
    while f"{e}.patch_embeddings.{s}.proj.weight" in m.src:
        n = s + 1
        m.move(f"{e}.patch_embeddings.{s}.proj", f"{prefix}patch_embed{n}.proj")
        m.move(
            f"{e}.patch_embeddings.{s}.layer_norm",
            f"{prefix}patch_embed{n}.norm",
        )
        j = 0
        while f"{e}.block.{s}.{j}.layer_norm_1.weight" in m.src:
            a, b = f"{e}.block.{s}.{j}.", f"{prefix}block{n}.{j}."
            m.move(a + "layer_norm_1", b + "norm1")
            m.move(a + "attention.self.query", b + "attn.q")
            for p in ("weight", "bias"):
                m.out[f"{b}attn.kv.{p}"] = torch.cat(
                    [
                        m.take(f"{a}attention.self.key.{p}"),
                        m.take(f"{a}attention.self.value.{p}"),
                    ]
                )
            m.move(a + "attention.self.sr", b + "attn.sr")
            m.move(a + "attention.self.layer_norm", b + "attn.norm")
            m.move(a + "attention.output.dense", b + "attn.proj")
            m.move(a + "layer_norm_2", b + "norm2")
            m.move(a + "mlp.dense1", b + "mlp.fc1")
            m.move(a + "mlp.dwconv.dwconv", b + "mlp.dwconv.dwconv")
            m.move(a + "mlp.dense2", b + "mlp.fc2")
            j += 1
        m.move(f"{e}.layer_norm.{s}", f"{prefix}norm{n}")
        s += 1
    for i in range(s):
        m.move(
            f"decode_head.linear_c.{i}.proj",
            f"decode_head.linear_c{i + 1}.proj",
        )
    m.move("decode_head.linear_fuse", "decode_head.linear_fuse.conv")
    m.move("decode_head.batch_norm", "decode_head.linear_fuse.bn")
    m.move("decode_head.classifier", "decode_head.linear_pred")
    m.move("classifier", "head")
    out = m.done()
    if "decode_head.linear_pred.weight" in out:
        # BaseDecodeHead's conv_seg exists in NVlabs checkpoints, unused.
        classes, dim = out["decode_head.linear_pred.weight"].shape[:2]
        out["decode_head.conv_seg.weight"] = torch.randn(classes, dim, 1, 1)
        out["decode_head.conv_seg.bias"] = torch.randn(classes)
    return out


def to_mmseg_backbone(state, prefix="backbone."):
    """transformers backbone names -> mmseg ``MixVisionTransformer``
    (``layers.{s}.0`` PatchEmbed, ``.1.{j}`` TransformerEncoderLayer with
    ``nn.MultiheadAttention`` in_proj = [q; k; v] and a conv MixFFN
    ``ffn.layers.{0,1,4}``, ``.2`` stage norm)."""
    m = _Mover(state)
    e = "segformer.encoder"

    def conv1x1(w):
        return w[:, :, None, None]

    s = 0
    while f"{e}.patch_embeddings.{s}.proj.weight" in m.src:
        m.move(
            f"{e}.patch_embeddings.{s}.proj", f"{prefix}layers.{s}.0.projection"
        )
        m.move(
            f"{e}.patch_embeddings.{s}.layer_norm", f"{prefix}layers.{s}.0.norm"
        )
        j = 0
        while f"{e}.block.{s}.{j}.layer_norm_1.weight" in m.src:
            a, b = f"{e}.block.{s}.{j}.", f"{prefix}layers.{s}.1.{j}."
            m.move(a + "layer_norm_1", b + "norm1")
            for p in ("weight", "bias"):
                m.out[f"{b}attn.attn.in_proj_{p}"] = torch.cat(
                    [
                        m.take(f"{a}attention.self.{n}.{p}")
                        for n in ("query", "key", "value")
                    ]
                )
            m.move(a + "attention.output.dense", b + "attn.attn.out_proj")
            m.move(a + "attention.self.sr", b + "attn.sr")
            m.move(a + "attention.self.layer_norm", b + "attn.norm")
            m.move(a + "layer_norm_2", b + "norm2")
            m.move(a + "mlp.dense1", b + "ffn.layers.0", conv1x1)
            m.move(a + "mlp.dwconv.dwconv", b + "ffn.layers.1")
            m.move(a + "mlp.dense2", b + "ffn.layers.4", conv1x1)
            j += 1
        m.move(f"{e}.layer_norm.{s}", f"{prefix}layers.{s}.2")
        s += 1
    return m.done()


def mmseg_head_state(in_channels, channels, num_classes, seed=1):
    """Random weights of mmseg's SegformerHead under its own names."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    def conv_module(prefix, cin):
        return {
            f"{prefix}.conv.weight": randn(channels, cin, 1, 1),
            f"{prefix}.bn.weight": 1 + randn(channels),
            f"{prefix}.bn.bias": randn(channels),
            f"{prefix}.bn.running_mean": randn(channels),
            f"{prefix}.bn.running_var": 0.5 + torch.rand(channels, generator=g),
            f"{prefix}.bn.num_batches_tracked": torch.tensor(7),
        }

    state = {}
    for i, cin in enumerate(in_channels):
        state.update(conv_module(f"decode_head.convs.{i}", cin))
    state.update(
        conv_module("decode_head.fusion_conv", channels * len(in_channels))
    )
    state["decode_head.conv_seg.weight"] = randn(num_classes, channels, 1, 1)
    state["decode_head.conv_seg.bias"] = randn(num_classes)
    return state


# ---------------------------------------------------------------------------
# Functional PyTorch transcriptions of the formats' forward passes


def _tokens(x):
    b, c, h, w = x.shape
    return x.flatten(2).transpose(1, 2), (h, w)


def _grid(t, hw):
    return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], *hw)


def _ln(t, sd, key, eps):
    return F.layer_norm(
        t, t.shape[-1:], sd[f"{key}.weight"], sd[f"{key}.bias"], eps
    )


def _bn(x, sd, key):
    return F.batch_norm(
        x,
        sd[f"{key}.running_mean"],
        sd[f"{key}.running_var"],
        sd[f"{key}.weight"],
        sd[f"{key}.bias"],
        training=False,
        eps=1e-5,
    )


def nvlabs_reference(sd, x, num_heads, prefix="backbone."):
    """NVlabs ``mix_transformer.py`` + ``segformer_head.py`` (eval) on
    NVlabs-named tensors: LayerNorm eps 1e-5 in patch embeddings and
    ``attn.norm``, 1e-6 elsewhere; ``kv(x).reshape(B, N, 2, heads, d)``."""
    feats = []
    h = nchw(x)
    n = 1
    while f"{prefix}patch_embed{n}.proj.weight" in sd:
        p = f"{prefix}patch_embed{n}"
        w = sd[f"{p}.proj.weight"]
        h = F.conv2d(
            h,
            w,
            sd[f"{p}.proj.bias"],
            stride=STRIDES[n - 1],
            padding=w.shape[-1] // 2,
        )
        t, hw = _tokens(h)
        t = _ln(t, sd, f"{p}.norm", 1e-5)
        heads = num_heads[n - 1]
        j = 0
        while f"{prefix}block{n}.{j}.norm1.weight" in sd:
            b = f"{prefix}block{n}.{j}"
            y = _ln(t, sd, f"{b}.norm1", 1e-6)
            bsz, tokens, c = y.shape
            d = c // heads
            q = F.linear(y, sd[f"{b}.attn.q.weight"], sd[f"{b}.attn.q.bias"])
            q = q.reshape(bsz, tokens, heads, d).permute(0, 2, 1, 3)
            kv_in = y
            if f"{b}.attn.sr.weight" in sd:
                sr = sd[f"{b}.attn.sr.weight"]
                r = F.conv2d(
                    _grid(y, hw),
                    sr,
                    sd[f"{b}.attn.sr.bias"],
                    stride=sr.shape[-1],
                )
                kv_in = _ln(_tokens(r)[0], sd, f"{b}.attn.norm", 1e-5)
            kv = F.linear(
                kv_in, sd[f"{b}.attn.kv.weight"], sd[f"{b}.attn.kv.bias"]
            )
            kv = kv.reshape(bsz, -1, 2, heads, d).permute(2, 0, 3, 1, 4)
            attn = (q @ kv[0].transpose(-2, -1)) * d**-0.5
            out = (
                (attn.softmax(-1) @ kv[1])
                .transpose(1, 2)
                .reshape(bsz, tokens, c)
            )
            t = t + F.linear(
                out, sd[f"{b}.attn.proj.weight"], sd[f"{b}.attn.proj.bias"]
            )
            y = _ln(t, sd, f"{b}.norm2", 1e-6)
            y = F.linear(y, sd[f"{b}.mlp.fc1.weight"], sd[f"{b}.mlp.fc1.bias"])
            dw = sd[f"{b}.mlp.dwconv.dwconv.weight"]
            y = F.conv2d(
                _grid(y, hw),
                dw,
                sd[f"{b}.mlp.dwconv.dwconv.bias"],
                padding=1,
                groups=dw.shape[0],
            )
            y = F.gelu(_tokens(y)[0])
            t = t + F.linear(
                y, sd[f"{b}.mlp.fc2.weight"], sd[f"{b}.mlp.fc2.bias"]
            )
            j += 1
        t = _ln(t, sd, f"{prefix}norm{n}", 1e-6)
        h = _grid(t, hw)
        feats.append(h)
        n += 1
    if "head.weight" in sd:
        pooled = _tokens(feats[-1])[0].mean(1)
        return F.linear(pooled, sd["head.weight"], sd["head.bias"]), feats
    if "decode_head.linear_pred.weight" not in sd:
        return None, feats
    size = feats[0].shape[2:]
    unified = []
    for i, f in enumerate(feats):
        k = f"decode_head.linear_c{i + 1}.proj"
        y = F.linear(_tokens(f)[0], sd[f"{k}.weight"], sd[f"{k}.bias"])
        y = _grid(y, f.shape[2:])
        unified.append(
            F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        )
    y = F.conv2d(
        torch.cat(unified[::-1], 1), sd["decode_head.linear_fuse.conv.weight"]
    )
    y = F.relu(_bn(y, sd, "decode_head.linear_fuse.bn"))
    y = F.conv2d(
        y,
        sd["decode_head.linear_pred.weight"],
        sd["decode_head.linear_pred.bias"],
    )
    return y, feats


def mmseg_reference(sd, x, num_heads, prefix="backbone."):
    """mmseg ``MixVisionTransformer`` + ``SegformerHead`` (eval) on
    mmseg-named tensors, attention through PyTorch's own
    ``multi_head_attention_forward`` with the packed ``in_proj``."""
    feats = []
    h = nchw(x)
    s = 0
    while f"{prefix}layers.{s}.0.projection.weight" in sd:
        p = f"{prefix}layers.{s}"
        w = sd[f"{p}.0.projection.weight"]
        h = F.conv2d(
            h,
            w,
            sd[f"{p}.0.projection.bias"],
            stride=STRIDES[s],
            padding=w.shape[-1] // 2,
        )
        t, hw = _tokens(h)
        t = _ln(t, sd, f"{p}.0.norm", 1e-6)
        j = 0
        while f"{p}.1.{j}.norm1.weight" in sd:
            b = f"{p}.1.{j}"
            y = _ln(t, sd, f"{b}.norm1", 1e-6)
            kv = y
            if f"{b}.attn.sr.weight" in sd:
                sr = sd[f"{b}.attn.sr.weight"]
                r = F.conv2d(
                    _grid(y, hw),
                    sr,
                    sd[f"{b}.attn.sr.bias"],
                    stride=sr.shape[-1],
                )
                kv = _ln(_tokens(r)[0], sd, f"{b}.attn.norm", 1e-6)
            out, _ = F.multi_head_attention_forward(
                y.transpose(0, 1),
                kv.transpose(0, 1),
                kv.transpose(0, 1),
                y.shape[-1],
                num_heads[s],
                sd[f"{b}.attn.attn.in_proj_weight"],
                sd[f"{b}.attn.attn.in_proj_bias"],
                None,
                None,
                False,
                0.0,
                sd[f"{b}.attn.attn.out_proj.weight"],
                sd[f"{b}.attn.attn.out_proj.bias"],
                training=False,
                need_weights=False,
            )
            t = t + out.transpose(0, 1)
            y = _grid(_ln(t, sd, f"{b}.norm2", 1e-6), hw)
            y = F.conv2d(
                y, sd[f"{b}.ffn.layers.0.weight"], sd[f"{b}.ffn.layers.0.bias"]
            )
            dw = sd[f"{b}.ffn.layers.1.weight"]
            y = F.gelu(
                F.conv2d(
                    y,
                    dw,
                    sd[f"{b}.ffn.layers.1.bias"],
                    padding=1,
                    groups=dw.shape[0],
                )
            )
            y = F.conv2d(
                y, sd[f"{b}.ffn.layers.4.weight"], sd[f"{b}.ffn.layers.4.bias"]
            )
            t = t + _tokens(y)[0]
            j += 1
        h = _grid(_ln(t, sd, f"{p}.2", 1e-6), hw)
        feats.append(h)
        s += 1
    if "decode_head.conv_seg.weight" not in sd:
        return None, feats
    size = feats[0].shape[2:]
    outs = []
    for i, f in enumerate(feats):
        k = f"decode_head.convs.{i}"
        y = F.relu(_bn(F.conv2d(f, sd[f"{k}.conv.weight"]), sd, f"{k}.bn"))
        outs.append(
            F.interpolate(y, size=size, mode="bilinear", align_corners=False)
        )
    y = F.conv2d(torch.cat(outs, 1), sd["decode_head.fusion_conv.conv.weight"])
    y = F.relu(_bn(y, sd, "decode_head.fusion_conv.bn"))
    y = F.conv2d(
        y, sd["decode_head.conv_seg.weight"], sd["decode_head.conv_seg.bias"]
    )
    return y, feats


def _nhwc(t):
    return t.detach().numpy().transpose(0, 2, 3, 1)


def run_reference(fn, sd, x, **kwargs):
    with torch.no_grad():
        logits, feats = fn(sd, x, **kwargs)
    if logits is not None and logits.ndim == 4:
        logits = _nhwc(logits)
    elif logits is not None:
        logits = logits.numpy()
    return logits, [_nhwc(f) for f in feats]


def save_pth(obj, path, legacy=False):
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return str(path)


# ---------------------------------------------------------------------------
# Checkpoint fixtures (built once per module; torch only)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Checkpoint files of every format + their reference outputs."""
    root = tmp_path_factory.mktemp("ckpt")
    x = images()
    out = {"x": x}

    seg = make_hf_model("segmentation", num_labels=7, **HF_TINY)
    state = to_nvlabs(canonical_state(seg, root / "hf_seg"))
    ref, _ = run_reference(nvlabs_reference, state, x, num_heads=HEADS)
    set_layer_norm_eps(seg, block=1e-6, patch=1e-5)
    hf_logits, _ = hf_forward(seg, x)
    out["nvlabs"] = {
        "path": save_pth(
            {"meta": {"CLASSES": tuple("abcdefg")}, "state_dict": state},
            root / "segformer.tiny.nvlabs.pth",
        ),
        "logits": ref,
        "hf_logits": hf_logits,
        "state": state,
    }

    cls = make_hf_model("classification", num_labels=5, seed=2, **HF_TINY)
    state = to_nvlabs(canonical_state(cls, root / "hf_cls"), prefix="")
    ref, feats = run_reference(
        nvlabs_reference, state, x, num_heads=HEADS, prefix=""
    )
    set_layer_norm_eps(cls, block=1e-6, patch=1e-5)
    hf_logits, hf_feats = hf_forward(cls, x)
    out["mit"] = {
        "path": save_pth(state, root / "mit_tiny.pth"),
        "logits": ref,
        "feats": feats,
        "hf_logits": hf_logits,
        "hf_feats": hf_feats,
        "state": state,
    }

    backbone = make_hf_model("backbone", seed=3, **HF_TINY)
    state = to_mmseg_backbone(canonical_state(backbone, root / "hf_backbone"))
    state.update(mmseg_head_state(HF_TINY["hidden_sizes"], 12, 6))
    ref, feats = run_reference(mmseg_reference, state, x, num_heads=HEADS)
    set_layer_norm_eps(backbone, block=1e-6, patch=1e-6)
    _, hf_feats = hf_forward(backbone, x)
    out["mmseg"] = {
        "path": save_pth(
            {
                "meta": {"dataset_meta": {"classes": tuple("abcdef")}},
                "state_dict": state,
            },
            root / "segformer_mit-tiny_mmseg.pth",
        ),
        "logits": ref,
        "feats": feats,
        "hf_feats": hf_feats,
        "state": state,
    }
    return out


def max_diff(a, b):
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b)))


# ---------------------------------------------------------------------------
# The references agree with transformers (checks the test's inverse maps)


def test_references_agree_with_transformers(checkpoints):
    nv, mit, mm = (
        checkpoints["nvlabs"],
        checkpoints["mit"],
        checkpoints["mmseg"],
    )
    assert max_diff(nv["logits"], nv["hf_logits"]) < 1e-5
    assert max_diff(mit["logits"], mit["hf_logits"]) < 1e-5
    for got, ref in zip(mm["feats"], mm["hf_feats"]):
        assert max_diff(got, ref) < 1e-5


# ---------------------------------------------------------------------------
# Conversions


def test_nvlabs_segmentation(checkpoints):
    ck = checkpoints["nvlabs"]
    model = load_checkpoint(ck["path"], num_heads=HEADS)
    assert isinstance(model, keras_segformer.SegFormer)
    assert model.head == "mlp" and model.num_classes == 7
    report = model.load_report
    assert report.format == "nvlabs"
    arch = report.architecture
    assert arch["depths"] == [1, 1, 1, 1]
    assert arch["hidden_sizes"] == HF_TINY["hidden_sizes"]
    assert arch["sr_ratios"] == [8, 4, 2, 1]
    assert arch["decoder_hidden_size"] == 16
    assert sorted(report.skipped) == [
        "decode_head.conv_seg.bias",
        "decode_head.conv_seg.weight",
        "decode_head.linear_fuse.bn.num_batches_tracked",
    ]
    assert len(report.mapping) == len(model.weights)
    assert "backbone.block1.0.attn.kv.weight[key]" in report.assigned
    assert "backbone.block1.0.attn.kv.weight[value]" in report.assigned
    logits = to_numpy(model.predict_on_batch(checkpoints["x"]))
    assert max_diff(logits, ck["logits"]) <= TOL


def test_mit_imagenet_classifier(checkpoints):
    ck = checkpoints["mit"]
    model = load_checkpoint(ck["path"], num_heads=HEADS)
    assert isinstance(model, keras_segformer.MiTClassifier)
    assert model.load_report.format == "mit"
    assert model.num_classes == 5
    logits = to_numpy(model.predict_on_batch(checkpoints["x"]))
    assert max_diff(logits, ck["logits"]) <= TOL


def test_finetuning_start_from_imagenet_backbone(checkpoints):
    """One call: ImageNet MiT .pth -> SegFormer with a fresh 3-class head."""
    ck = checkpoints["mit"]
    model = load_checkpoint(
        ck["path"],
        num_classes=3,
        backbone_only=True,
        num_heads=HEADS,
        decoder_hidden_size=12,
        labels=["sky", "road", "car"],
    )
    assert isinstance(model, keras_segformer.SegFormer)
    assert model.id2label == {0: "sky", 1: "road", 2: "car"}
    report = model.load_report
    assert sorted(report.skipped) == ["head.bias", "head.weight"]
    head = model.get_layer("decode_head")
    assert sorted(report.fresh) == sorted(w.path for w in head.weights)
    stages = to_numpy(model.backbone.predict_on_batch(checkpoints["x"]))
    for got, ref in zip(stages, ck["feats"]):
        assert max_diff(got, ref) <= TOL

    # The same into an existing model (what `train --init` does): the
    # head keeps its values.
    target = keras_segformer.build_segformer(
        3, decoder_hidden_size=12, layer_norm_epsilon=1e-6, **TINY
    )
    before = [to_numpy(w) for w in head_weights(target)]
    report = load_weights(target, ck["path"], backbone_only=True)
    assert len(report.mapping) == len(target.backbone.weights)
    for got, ref in zip(head_weights(target), before):
        np.testing.assert_array_equal(to_numpy(got), ref)
    for got, ref in zip(target.backbone.weights, model.backbone.weights):
        np.testing.assert_array_equal(to_numpy(got), to_numpy(ref))


def head_weights(model):
    return model.get_layer("decode_head").weights


def test_mmseg_segmentation(checkpoints):
    ck = checkpoints["mmseg"]
    model = load_checkpoint(ck["path"], num_heads=HEADS)
    assert isinstance(model, keras_segformer.SegFormer)
    assert model.head == "mmseg" and model.get_config()["head"] == "mmseg"
    assert isinstance(
        model.get_layer("decode_head"),
        keras_segformer.layers.MMSegSegFormerHead,
    )
    report = model.load_report
    assert report.format == "mmseg"
    assert report.architecture["decoder_hidden_size"] == 12
    assert report.architecture["num_classes"] == 6
    assert all(k.endswith("num_batches_tracked") for k in report.skipped)
    assert len(report.skipped) == 5
    assert (
        "backbone.layers.0.1.0.attn.attn.in_proj_weight[k]" in report.assigned
    )
    logits = to_numpy(model.predict_on_batch(checkpoints["x"]))
    assert max_diff(logits, ck["logits"]) <= TOL


def test_mmseg_backbone_only_file_without_prefix(checkpoints, tmp_path):
    """mmseg's mit2mmseg output: backbone names without ``backbone.``."""
    ck = checkpoints["mmseg"]
    state = {
        k[len("backbone.") :]: v
        for k, v in ck["state"].items()
        if k.startswith("backbone.")
    }
    path = save_pth(state, tmp_path / "mit_tiny_mmseg.pth", legacy=True)
    backbone = load_checkpoint(path, num_heads=HEADS)
    assert isinstance(backbone, keras_segformer.MiTBackbone)
    assert backbone.layer_norm_epsilon == 1e-6
    stages = to_numpy(backbone.predict_on_batch(checkpoints["x"]))
    for got, ref in zip(stages, ck["feats"]):
        assert max_diff(got, ref) <= TOL


def test_segmentation_checkpoint_under_new_classes(checkpoints):
    """backbone_only keeps the checkpoint's head type, takes a new size."""
    model = load_checkpoint(
        checkpoints["mmseg"]["path"],
        num_classes=2,
        backbone_only=True,
        num_heads=HEADS,
        decoder_hidden_size=8,
    )
    assert model.head == "mmseg" and model.decoder_hidden_size == 8
    report = model.load_report
    assert len(report.mapping) == len(model.backbone.weights)
    assert report.skipped and all(
        k.startswith("decode_head.") for k in report.skipped
    )
    assert len(report.skipped) == sum(
        k.startswith("decode_head.") for k in checkpoints["mmseg"]["state"]
    )


def test_b0_widths_need_no_architecture_arguments(tmp_path):
    """Heads and strides come from the variant table (matched by hidden
    sizes); the rest from shapes and counts."""
    hf = make_hf_model(  # B0 widths and heads; depth and decoder cut
        "segmentation",
        num_labels=4,
        seed=4,
        depths=[1, 2, 1, 1],
        decoder_hidden_size=32,
    )
    state = to_nvlabs(canonical_state(hf, tmp_path / "hf"))
    path = save_pth({"state_dict": state}, tmp_path / "b0.pth")
    x = images((40, 56), batch=1)
    ref, _ = run_reference(nvlabs_reference, state, x, num_heads=(1, 2, 5, 8))
    model = load_checkpoint(path)
    arch = model.load_report.architecture
    assert arch["num_heads"] == [1, 2, 5, 8]
    assert arch["strides"] == [4, 2, 2, 2]
    assert arch["depths"] == [1, 2, 1, 1]
    assert arch["hidden_sizes"] == [32, 64, 160, 256]
    assert arch["decoder_hidden_size"] == 32
    assert model.num_classes == 4
    logits = to_numpy(model.predict_on_batch(x))
    assert max_diff(logits, ref) <= TOL
    with pytest.raises(ValueError, match="depths"):
        load_checkpoint(path, variant="b0")  # b0 has depths [2, 2, 2, 2]


def test_transformers_directory_and_bare_file(tmp_path):
    hf = make_hf_model("segmentation", num_labels=3, seed=5, **HF_TINY)
    hf.save_pretrained(tmp_path / "hf")
    x = images()
    ref, _ = hf_forward(hf, x)
    model = load_checkpoint(tmp_path / "hf", labels=["a", "b", "c"])
    assert model.load_report.format == "hf"
    assert model.backbone.layer_norm_epsilon == 1e-5
    assert model.backbone.num_heads == HEADS  # from config.json
    assert model.id2label == {0: "a", 1: "b", 2: "c"}
    assert max_diff(to_numpy(model.predict_on_batch(x)), ref) <= TOL
    # Without config.json the heads must be given.
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "weights.safetensors").write_bytes(
        (tmp_path / "hf" / "model.safetensors").read_bytes()
    )
    with pytest.raises(ValueError, match="num_heads"):
        load_checkpoint(bare / "weights.safetensors")
    again = load_checkpoint(bare / "weights.safetensors", num_heads=HEADS)
    assert again.id2label is None
    target = keras_segformer.build_segformer(3, decoder_hidden_size=16, **TINY)
    assert load_weights(target, tmp_path / "hf").format == "hf"
    for a, b, c in zip(again.weights, target.weights, model.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(c))
        np.testing.assert_array_equal(to_numpy(b), to_numpy(c))


# ---------------------------------------------------------------------------
# Format detection and errors


def test_detect_format(checkpoints):
    nv = read_state_dict(checkpoints["nvlabs"]["path"])
    assert detect_format(nv).format == "nvlabs"
    assert (
        detect_format(read_state_dict(checkpoints["mit"]["path"])).format
        == "mit"
    )
    mm = read_state_dict(checkpoints["mmseg"]["path"])
    assert detect_format(mm) == type(detect_format(mm))("mmseg", "backbone.")
    hf_5x = {"segformer.stages.0.patch_embeddings.proj.weight": np.zeros(1)}
    assert detect_format(hf_5x).format == "hf"
    with pytest.raises(CheckpointError, match="Unknown checkpoint layout"):
        detect_format({"conv1.weight": np.zeros(1), "fc.bias": np.zeros(1)})


def test_dataparallel_prefix_is_stripped(checkpoints, tmp_path):
    state = {f"module.{k}": v for k, v in checkpoints["mit"]["state"].items()}
    path = save_pth({"model": state}, tmp_path / "wrapped.pth")
    model = load_checkpoint(path, num_heads=HEADS)
    assert model.load_report.format == "mit"


def test_format_given_must_match_names(checkpoints):
    with pytest.raises(CheckpointError, match="nvlabs"):
        load_checkpoint(checkpoints["nvlabs"]["path"], format="mmseg")


def _write_variant(checkpoints, tmp_path, edit):
    state = dict(checkpoints["nvlabs"]["state"])
    edit(state)
    return save_pth({"state_dict": state}, tmp_path / "edited.pth")


def test_missing_tensor_is_named(checkpoints, tmp_path):
    def drop(state):
        del state["backbone.block2.0.attn.kv.weight"]

    path = _write_variant(checkpoints, tmp_path, drop)
    with pytest.raises(
        CheckpointError, match=r"missing.*block2\.0\.attn\.kv\.weight\[key\]"
    ):
        load_checkpoint(path, num_heads=HEADS)


def test_unexpected_tensor_is_named(checkpoints, tmp_path):
    def add(state):
        state["backbone.block1.0.attn.extra.weight"] = torch.zeros(3)

    path = _write_variant(checkpoints, tmp_path, add)
    with pytest.raises(
        CheckpointError, match=r"unexpected.*attn\.extra\.weight"
    ):
        load_checkpoint(path, num_heads=HEADS)


def test_wrong_shape_fails_and_assigns_nothing(checkpoints, tmp_path):
    def widen(state):
        w = state["backbone.block1.0.mlp.fc2.weight"]
        state["backbone.block1.0.mlp.fc2.weight"] = torch.zeros(
            w.shape[0], w.shape[1] + 1
        )

    path = _write_variant(checkpoints, tmp_path, widen)
    model = keras_segformer.build_segformer(7, decoder_hidden_size=16, **TINY)
    before = [to_numpy(w) for w in model.weights]
    with pytest.raises(
        CheckpointError, match=r"shape mismatch.*block1\.0\.mlp\.fc2\.weight"
    ):
        load_weights(model, path)
    for w, ref in zip(model.weights, before):
        np.testing.assert_array_equal(to_numpy(w), ref)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_refused(checkpoints, tmp_path, bad):
    key = "backbone.block2.0.mlp.dwconv.dwconv.weight"

    def poison(state):
        w = state[key].clone()
        w.view(-1)[3] = bad
        state[key] = w

    path = _write_variant(checkpoints, tmp_path, poison)
    model = keras_segformer.build_segformer(7, decoder_hidden_size=16, **TINY)
    before = [to_numpy(w) for w in model.weights]
    with pytest.raises(
        CheckpointError, match=r"non-finite.*block2\.0\.mlp\.dwconv"
    ):
        load_weights(model, path)
    for w, ref in zip(model.weights, before):
        np.testing.assert_array_equal(to_numpy(w), ref)
    with pytest.raises(CheckpointError, match="NaN or inf"):
        load_checkpoint(path, num_heads=HEADS)


def test_fused_tensor_that_does_not_split(checkpoints, tmp_path):
    def odd(state):
        kv = state["backbone.block1.0.attn.kv.bias"]
        state["backbone.block1.0.attn.kv.bias"] = torch.cat([kv, kv[:1]])

    path = _write_variant(checkpoints, tmp_path, odd)
    with pytest.raises(CheckpointError, match="2 equal parts"):
        load_checkpoint(path, num_heads=HEADS)


def test_heads_needed_for_unknown_widths(checkpoints):
    with pytest.raises(ValueError, match="num_heads"):
        load_checkpoint(checkpoints["nvlabs"]["path"])


def test_new_head_needs_backbone_only(checkpoints):
    with pytest.raises(ValueError, match="backbone_only=True"):
        load_checkpoint(
            checkpoints["nvlabs"]["path"], num_heads=HEADS, num_classes=3
        )


# ---------------------------------------------------------------------------
# Safe reading of .pth files


class _Payload:
    """Runs a shell command when unpickled by a trusting reader."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    zip_path = tmp_path / "evil.pth"
    torch.save(
        {"state_dict": {"w": torch.zeros(2)}, "x": _Payload(marker)}, zip_path
    )
    raw_path = tmp_path / "evil_raw.pth"
    raw_path.write_bytes(pickle.dumps(_Payload(marker), protocol=2))
    for path in (zip_path, raw_path):
        with pytest.raises(CheckpointError, match="system"):
            load_torch_file(path)
        with pytest.raises(CheckpointError):
            read_state_dict(path)  # torch.load(weights_only=True)
        with pytest.raises(CheckpointError):
            load_checkpoint(path)
    assert not marker.exists()


def test_truncated_and_corrupt_files(checkpoints, tmp_path):
    data = open(checkpoints["mit"]["path"], "rb").read()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    legacy = save_pth(
        checkpoints["mit"]["state"], tmp_path / "legacy.pth", legacy=True
    )
    legacy_cut = tmp_path / "legacy_cut.pth"
    legacy_cut.write_bytes(open(legacy, "rb").read()[:-100])
    for path in (cut, legacy_cut):
        with pytest.raises(CheckpointError):
            load_torch_file(path)
        with pytest.raises(CheckpointError):
            load_checkpoint(path, num_heads=HEADS)
    # A storage entry shorter than its tensors claim.
    short = tmp_path / "short.pth"
    with (
        zipfile.ZipFile(checkpoints["mit"]["path"]) as src,
        zipfile.ZipFile(short, "w") as dst,
    ):
        for info in src.infolist():
            body = src.read(info)
            if info.filename.endswith("/data/0"):
                body = body[:-4]
            dst.writestr(info, body)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_torch_file(short)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError):
        load_torch_file(garbage)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_restricted_reader_equals_torch_load(tmp_path, legacy):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state = {
        "f32": torch.randn(3, 5),
        "transposed": base.t(),  # non-contiguous
        "view": base[1:3, 2:],  # offset into a shared storage
        "f16": torch.randn(4).half(),
        "bf16": torch.randn(2, 3).bfloat16(),
        "i64": torch.arange(5),
        "bool": torch.tensor([True, False]),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
        "param": torch.nn.Parameter(torch.randn(2, 2)),
    }
    obj = {"state_dict": state, "meta": {"CLASSES": ("a", "b"), "iter": 3}}
    path = save_pth(obj, tmp_path / "all.pth", legacy=legacy)
    got = load_torch_file(path)
    assert got["meta"] == {"CLASSES": ("a", "b"), "iter": 3}
    for key, tensor in state.items():
        ref = tensor.detach()
        ref = (ref.float() if ref.dtype == torch.bfloat16 else ref).numpy()
        assert got["state_dict"][key].dtype == ref.dtype, key
        np.testing.assert_array_equal(got["state_dict"][key], ref)


def test_read_state_dict_without_torch(checkpoints, monkeypatch):
    """TensorFlow-only installs read .pth through the restricted reader."""
    path = checkpoints["mmseg"]["path"]
    with_torch = read_state_dict(path)
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch fails
    without = read_state_dict(path)
    assert sorted(without) == sorted(with_torch)
    for key, value in with_torch.items():
        np.testing.assert_array_equal(without[key], value)


# ---------------------------------------------------------------------------
# Class names and the mmseg head model


def test_resolve_labels(tmp_path):
    ade = resolve_labels("ade20k", 150)
    assert len(ade) == 150 and ade[0] == "wall"
    assert resolve_labels("Cityscapes", 19)[0] == "road"
    (tmp_path / "names.json").write_text('["cat", "dog"]')
    assert resolve_labels(str(tmp_path / "names.json"), 2) == {
        0: "cat",
        1: "dog",
    }
    (tmp_path / "config.json").write_text('{"id2label": {"1": "b", "0": "a"}}')
    assert resolve_labels(str(tmp_path / "config.json")) == {0: "a", 1: "b"}
    with pytest.raises(ValueError, match="names 19 classes"):
        resolve_labels("cityscapes", 7)
    with pytest.raises(ValueError, match="no such file"):
        resolve_labels("pascal")
    with pytest.raises(ValueError, match="without gaps"):
        resolve_labels({0: "a", 2: "c"})


def test_mmseg_head_model_saves_and_loads(tmp_path):
    model = keras_segformer.build_segformer(
        4, decoder_hidden_size=8, head="mmseg", **TINY
    )
    x = images((40, 52), batch=1)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.head == "mmseg"
    # model(x) without training= must run in inference mode.
    np.testing.assert_allclose(
        to_numpy(loaded.predict_on_batch(x)), to_numpy(model(x)), atol=1e-5
    )
    with pytest.raises(ValueError, match="head"):
        keras_segformer.build_segformer(
            4, decoder_hidden_size=8, head="fpn", **TINY
        )


# ------------------------------------------- corrupt or hostile files


def legacy_pth_claiming(path, numel, real=4):
    """A legacy (torch < 1.6) torch.save file of one float tensor 'w' whose
    size claims ``numel`` elements while ``real`` are stored."""
    import collections
    import struct

    storage = object()

    class Writer(pickle.Pickler):
        def persistent_id(self, obj):
            if obj is storage:
                return ("storage", torch.FloatStorage, "0", "cpu", numel, None)
            return None

    class Tensor:
        def __reduce__(self):
            args = (
                storage,
                0,
                (numel,),
                (1,),
                False,
                collections.OrderedDict(),
            )
            return (torch._utils._rebuild_tensor_v2, args)

    sys_info = {"protocol_version": 1001, "little_endian": True}
    with open(path, "wb") as f:
        for header in (0x1950A86A20F9469CFC6C, 1001, sys_info):
            pickle.dump(header, f, protocol=2)
        Writer(f, protocol=2).dump({"w": Tensor()})
        pickle.dump(["0"], f, protocol=2)
        f.write(struct.pack("<q", numel))
        f.write(b"\0" * 4 * real)
    return str(path)


def test_legacy_file_claiming_a_huge_tensor_is_refused(tmp_path):
    from keras_segformer.convert.pickle_reader import load_torch_file

    ok = legacy_pth_claiming(tmp_path / "ok.pth", 4)
    np.testing.assert_array_equal(read_state_dict(ok)["w"], np.zeros(4))
    np.testing.assert_array_equal(load_torch_file(ok)["w"], np.zeros(4))
    huge = legacy_pth_claiming(tmp_path / "huge.pth", 2**40)
    # torch.load would try to allocate 4 TiB; the restricted reader too.
    for read in (read_state_dict, load_torch_file):
        with pytest.raises(CheckpointError) as info:
            read(huge)
        message = str(info.value)
        assert repr(huge) in message and "'w'" in message
        assert str(2**40) in message and "corrupt" in message


def test_not_a_torch_file(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        read_state_dict(str(text))


def test_shard_index_must_stay_in_its_folder(tmp_path):
    import json

    from safetensors.numpy import save_file

    outside = tmp_path / "x.safetensors"
    save_file({"a": np.zeros(2, np.float32)}, str(outside))
    folder = tmp_path / "model"
    folder.mkdir()
    save_file({"b": np.ones(2, np.float32)}, str(folder / "s1.safetensors"))
    index = folder / "model.safetensors.index.json"
    for shard in ("../x.safetensors", str(outside)):
        weight_map = {"b": "s1.safetensors", "a": shard}
        index.write_text(json.dumps({"weight_map": weight_map}))
        with pytest.raises(CheckpointError, match="outside") as info:
            read_state_dict(str(index))
        assert repr(str(index)) in str(info.value)
        assert "'a'" in str(info.value) and repr(shard) in str(info.value)
    os.symlink(outside, folder / "link.safetensors")
    index.write_text(json.dumps({"weight_map": {"a": "link.safetensors"}}))
    with pytest.raises(CheckpointError, match="outside"):
        read_state_dict(str(index))
    for bad, match in (
        ({"weight_map": {"a": "gone.safetensors"}}, "no such shard"),
        ({"weight_map": {"a": "model.safetensors.index.json"}}, "shard"),
        ({"weight_map": []}, "weight_map"),
        ([1, 2], "weight_map"),
    ):
        index.write_text(json.dumps(bad))
        with pytest.raises(CheckpointError, match=match):
            read_state_dict(str(index))
    index.write_text(json.dumps({"weight_map": {"b": "s1.safetensors"}}))
    assert list(read_state_dict(str(index))) == ["b"]


def test_config_json_of_the_wrong_shape(tmp_path):
    import json

    from hf_utils import save_hf_model

    save_hf_model(tmp_path, task="segmentation", num_labels=3, **HF_TINY)
    config_path = tmp_path / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="JSON list"):
        keras_segformer.from_pretrained(str(tmp_path))
    with pytest.raises(CheckpointError, match="JSON list"):
        load_checkpoint(str(tmp_path))
    for field, value in (
        ("depths", "1111"),
        ("hidden_sizes", [8, 16, 24]),
        ("num_labels", "3"),
        ("id2label", ["a", "b", "c"]),
    ):
        config_path.write_text(json.dumps({**config, field: value}))
        with pytest.raises(CheckpointError, match=field):
            keras_segformer.from_pretrained(str(tmp_path))
