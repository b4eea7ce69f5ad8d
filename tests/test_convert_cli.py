"""``keras-segformer convert``: files written, report printed, errors."""

import os
import pickle

import keras
import numpy as np
import pytest
import torch
from conftest import TINY
from hf_utils import HF_TINY, hf_forward, make_hf_model
from test_convert_formats import (
    HEADS,
    canonical_state,
    images,
    mmseg_head_state,
    mmseg_reference,
    nvlabs_reference,
    run_reference,
    save_pth,
    to_mmseg_backbone,
    to_numpy,
    to_nvlabs,
)

import keras_segformer
from keras_segformer.cli import build_parser, main

TOL = 1e-4


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    x = images()
    out = {"x": x}
    seg = make_hf_model("segmentation", num_labels=19, **HF_TINY)
    state = to_nvlabs(canonical_state(seg, root / "hf_seg"))
    out["nvlabs"] = save_pth({"state_dict": state}, root / "nv.pth")
    out["nvlabs_ref"], _ = run_reference(
        nvlabs_reference, state, x, num_heads=HEADS
    )
    out["hf_seg"] = seg

    backbone = make_hf_model("backbone", seed=3, **HF_TINY)
    state = to_mmseg_backbone(canonical_state(backbone, root / "hf_bb"))
    state.update(mmseg_head_state(HF_TINY["hidden_sizes"], 8, 3))
    out["mmseg"] = save_pth({"state_dict": state}, root / "mm.pth")
    out["mmseg_ref"], _ = run_reference(
        mmseg_reference, state, x, num_heads=HEADS
    )

    cls = make_hf_model("classification", num_labels=5, seed=2, **HF_TINY)
    out["mit"] = save_pth(
        to_nvlabs(canonical_state(cls, root / "hf_cls"), prefix=""),
        root / "mit.pth",
    )
    return out


def run_cli(*argv):
    return main(["convert", *map(str, argv)])


def test_convert_is_registered():
    parser = build_parser()
    args = parser.parse_args(["convert", "a.pth", "--out", "b.keras"])
    assert args.format == "auto" and callable(args.func)


def test_nvlabs_to_keras_with_cityscapes_labels(files, tmp_path, capsys):
    out = tmp_path / "model.keras"
    rc = run_cli(
        files["nvlabs"],
        "--out",
        out,
        "--num-heads",
        "1,2,3,4",
        "--labels",
        "cityscapes",
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "(nvlabs)" in printed
    assert "skipped 3 source tensors" in printed
    assert "decode_head.conv_seg.weight" in printed
    assert f"wrote {out}" in printed
    assert sorted(os.listdir(tmp_path)) == ["model.keras"]
    model = keras.saving.load_model(out)
    assert model.id2label[0] == "road" and model.num_classes == 19
    logits = to_numpy(model.predict_on_batch(files["x"]))
    assert np.max(np.abs(logits - files["nvlabs_ref"])) <= TOL


def test_mmseg_to_weights_h5_verbose(files, tmp_path, capsys):
    out = tmp_path / "mm.weights.h5"
    assert run_cli(files["mmseg"], "--out", out, "--variant", "b0") == 2
    assert "--variant b0 has hidden_sizes" in capsys.readouterr().err
    rc = run_cli(
        files["mmseg"], "--out", out, "--num-heads", "1,2,3,4", "--verbose"
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "backbone.layers.0.1.0.attn.attn.in_proj_weight[q] ->" in printed
    assert "head=mmseg" in printed
    model = keras_segformer.build_segformer(
        3, decoder_hidden_size=8, head="mmseg", layer_norm_epsilon=1e-6, **TINY
    )
    model.load_weights(out)
    logits = to_numpy(model.predict_on_batch(files["x"]))
    assert np.max(np.abs(logits - files["mmseg_ref"])) <= TOL


def test_imagenet_backbone_under_new_head(files, tmp_path, capsys):
    out = tmp_path / "ft.keras"
    rc = run_cli(
        files["mit"],
        "--out",
        out,
        "--num-heads",
        "1,2,3,4",
        "--num-classes",
        "3",
        "--backbone-only",
        "--decoder-hidden-size",
        "8",
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "skipped 2 source tensors on purpose: head.bias, head.weight" in (
        printed
    )
    assert "keep their initial values (new head)" in printed
    model = keras.saving.load_model(out)
    assert isinstance(model, keras_segformer.SegFormer)
    assert model.num_classes == 3


def test_labels_of_a_dataset_give_an_imagenet_encoder_a_new_head(
    files, tmp_path, capsys
):
    # The README's `convert mit_b0.pth --out b0.keras --labels ade20k`
    # (here a tiny MiT, which names no variant: heads and decoder given).
    out = tmp_path / "city.keras"
    tiny = ["--num-heads", "1,2,3,4", "--decoder-hidden-size", "8"]
    rc = run_cli(files["mit"], "--out", out, "--labels", "cityscapes", *tiny)
    assert rc == 0
    printed = capsys.readouterr().out
    assert "ImageNet classifier (5 classes); --labels cityscapes names 19" in (
        printed
    )
    assert "new 19-class head" in printed
    model = keras.saving.load_model(out)
    assert isinstance(model, keras_segformer.SegFormer)
    assert model.num_classes == 19 and model.id2label[0] == "road"
    # The encoder is the checkpoint's: as --backbone-only gives it.
    same = tmp_path / "same.keras"
    argv = ["--backbone-only", "--num-classes", "19", *tiny]
    assert run_cli(files["mit"], "--out", same, *argv) == 0
    reference = keras.saving.load_model(same).backbone.get_weights()
    for a, b in zip(model.backbone.get_weights(), reference, strict=True):
        np.testing.assert_array_equal(a, b)


def test_errors_name_the_flags(files, tmp_path, capsys):
    out = tmp_path / "x.keras"
    cases = [
        # (arguments, what the message says)
        ((), "Pass --num-heads (one value per stage) or --variant."),
        (
            ("--num-heads", "1,2,3,4", "--num-classes", "7"),
            "--num-classes 7 was asked for: pass --backbone-only",
        ),
        (
            ("--num-heads", "1,2,3,4", "--task", "classification"),
            "--task classification was asked for: pass --backbone-only",
        ),
        (
            ("--num-heads", "1,2,3,4", "--labels", "ade20k"),
            "--labels ade20k names 150 classes; the checkpoint's head has 19: "
            "add --backbone-only --num-classes 150",
        ),
        (("--format", "mmseg"), "--format mmseg was asked for"),
    ]
    for argv, message in cases:
        assert run_cli(files["nvlabs"], "--out", out, *argv) == 2
        err = capsys.readouterr().err
        assert message in err, (argv, err)
        assert not any(
            name in err
            for name in ("backbone_only", "num_classes", "num_heads", "`")
        ), err
    assert not out.exists()


def test_nvlabs_to_transformers_directory(files, tmp_path, capsys):
    from transformers import SegformerForSemanticSegmentation

    out = tmp_path / "hf"
    capsys.readouterr()
    assert run_cli(files["nvlabs"], "--out", out, "--num-heads", "1,2,3,4") == 0
    # The package's warnings print as one CLI line (not Python's format).
    warned = [
        line
        for line in capsys.readouterr().err.splitlines()
        if line.startswith("keras-segformer convert: warning: ")
    ]
    assert len(warned) == 1 and "eps" in warned[0], warned
    hf = SegformerForSemanticSegmentation.from_pretrained(out).eval()
    logits, _ = hf_forward(hf, files["x"])
    # transformers' eps 1e-5 vs NVlabs' 1e-6 in the block norms.
    assert np.max(np.abs(logits - files["nvlabs_ref"])) <= TOL
    ref, _ = hf_forward(files["hf_seg"], files["x"])
    np.testing.assert_allclose(logits, ref, atol=1e-6)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_errors_leave_nothing_behind(files, tmp_path, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save(
        {"state_dict": {"a": torch.zeros(1)}, "p": _Payload(marker)}, evil
    )
    raw = tmp_path / "raw.pth"
    raw.write_bytes(pickle.dumps(_Payload(marker), protocol=2))
    cut = tmp_path / "cut.pth"
    cut.write_bytes(open(files["nvlabs"], "rb").read()[:5000])
    junk = tmp_path / "junk.pth"
    torch.save({"conv1.weight": torch.zeros(2, 3, 3, 3)}, junk)
    cases = [
        (evil, "weights_only"),
        (raw, "weights_only"),
        (cut, "PyTorch checkpoint"),
        (junk, "Unknown checkpoint layout"),
    ]
    out = tmp_path / "out" / "model.keras"
    for src, message in cases:
        assert run_cli(src, "--out", out) == 2
        err = capsys.readouterr().err
        assert "keras-segformer convert: error:" in err and message in err
    assert not marker.exists()
    assert not out.parent.exists()

    # mmseg head -> transformers directory: refused before writing.
    hf_out = tmp_path / "hf_out"
    assert (
        run_cli(files["mmseg"], "--out", hf_out, "--num-heads", "1,2,3,4") == 2
    )
    assert "SegformerHead" in capsys.readouterr().err
    assert not hf_out.exists()
    assert run_cli(files["mmseg"], "--out", tmp_path / "m.h5") == 2
    assert "--out" in capsys.readouterr().err
