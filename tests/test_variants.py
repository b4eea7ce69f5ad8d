"""The named variants: written-out functions with filled-in docstrings."""

import inspect
import pydoc

import pytest
from conftest import TINY

import keras_segformer
from keras_segformer.configs import VARIANTS

FAMILIES = {
    "SegFormer{V}": ("build_segformer", "(num_classes=150, **kwargs)"),
    "MiT{V}": ("build_mit", "(**kwargs)"),
    "MiT{V}Classifier": ("build_classifier", "(num_classes=1000, **kwargs)"),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_variant_functions_are_documented(family, variant):
    name = family.format(V=variant.upper())
    function = getattr(keras_segformer, name)
    builder, signature = FAMILIES[family]
    assert function.__name__ == function.__qualname__ == name
    assert str(inspect.signature(function)) == signature
    # A plain function of its own, calling the one builder with its row.
    source = inspect.getsource(function)
    assert f"{builder}(" in source and f'"{variant}"' in source
    text = pydoc.render_doc(function, renderer=pydoc.plaintext)
    row = VARIANTS[variant]
    assert str(list(row["depths"])) in text
    assert str(list(row["hidden_sizes"])) in text
    for argument in ("include_preprocessing", "input_shape", "dtype"):
        assert argument in text, argument
    assert "Example:" in text and f"keras_segformer.{name}(" in text
    flat = " ".join(text.split())
    if family.startswith("SegFormer"):
        decoder = row["decoder_hidden_size"]
        assert f"Decoder channels (default {decoder})" in flat
        # `dropout` here is the classifier's; the encoder's has its own name.
        assert "dropout: float. Dropout before the classifier only" in flat
        assert "hidden_dropout: float" in flat


def test_variant_function_builds_its_row():
    model = keras_segformer.SegFormerB2(3, **TINY)
    assert model.decoder_hidden_size == 768  # B2's row, from the function
    assert model.backbone.hidden_sizes == TINY["hidden_sizes"]
