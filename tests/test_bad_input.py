"""Inputs that used to give silently wrong results: each is an error now
(or, where a conversion is documented, converted), on every backend and
on every call, eager or compiled."""

import keras
import numpy as np
import pytest
from conftest import BACKEND, TINY, TINY_DECODER, tiny_segformer
from PIL import Image

import keras_segformer
from keras_segformer import inference
from keras_segformer.data import make_dataset
from keras_segformer.data.loading import read_image, read_mask

MIN = 29  # tiny_segformer().backbone.min_input_size


def _errors():
    """What a too-small or empty batch raises: ValueError, or on
    TensorFlow, from a graph traced with unknown sizes, the in-graph
    assertion's InvalidArgumentError."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return (ValueError, tf.errors.InvalidArgumentError)
    return ValueError


def _keras_predict_ds(model, x):
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensors(x)
    return keras.Model.predict(model, ds, verbose=0)


ENTRY_POINTS = {
    "call": lambda m, x: m(x),
    "predict": lambda m, x: m.predict(x, verbose=0),
    "predict_on_batch": lambda m, x: m.predict_on_batch(x),
    "evaluate": lambda m, x: m.evaluate(
        x, np.zeros(x.shape[:3], "int32"), verbose=0
    ),
    "keras_predict_dataset": _keras_predict_ds,
}


def _warm(model, run):
    """Two sizes through one entry point: TensorFlow then traces it again
    with unknown batch, height and width and reuses that graph."""
    for h, w in ((64, 64), (96, 48)):
        run(model, np.zeros((1, h, w, 3), "float32"))


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_too_small_or_empty_batch_fails_after_other_sizes(entry):
    model = tiny_segformer()
    model.compile()
    run = ENTRY_POINTS[entry]
    _warm(model, run)
    for size in ((9, 9), (MIN - 1, 64), (64, MIN - 1)):
        with pytest.raises(_errors(), match=f"too small.*{MIN}x{MIN}"):
            run(model, np.zeros((1, *size, 3), "float32"))
        if BACKEND == "jax" and entry == "keras_predict_dataset":
            # Keras' JAX trainer leaves the model's variables purged when
            # an error stops predict on a dataset: the model is unusable
            # after the first error. The project's own fit, evaluate and
            # predict put them back (the other entry points go on below).
            return
    if entry != "evaluate":  # Keras' evaluate never calls on no data
        with pytest.raises(_errors(), match="no images"):
            run(model, np.zeros((0, 64, 64, 3), "float32"))
    # The smallest accepted size still runs.
    run(model, np.zeros((1, MIN, MIN, 3), "float32"))


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's XLA")
def test_too_small_image_fails_under_tensorflow_xla():
    import tensorflow as tf

    model = tiny_segformer()
    model.compile(jit_compile=True)
    _warm(model, _keras_predict_ds)
    # XLA drops assertions: the error is TensorFlow's own, from the
    # input check's guard slice.
    with pytest.raises(tf.errors.InvalidArgumentError, match="input_check"):
        _keras_predict_ds(model, np.zeros((1, 9, 9, 3), "float32"))


@pytest.mark.parametrize("entry", ["call", "predict", "predict_on_batch"])
def test_integer_pixels_need_preprocessing(entry):
    model = tiny_segformer()
    for dtype in ("uint8", "int32", "bool"):
        x = np.full((1, 64, 64, 3), 200).astype(dtype)
        with pytest.raises(TypeError, match="include_preprocessing=True"):
            ENTRY_POINTS[entry](model, x)


@pytest.mark.parametrize("entry", ["call", "predict", "predict_on_batch"])
def test_preprocessing_model_takes_uint8_like_floats(entry):
    model = tiny_segformer(include_preprocessing=True)
    x = np.random.default_rng(0).integers(0, 256, (1, 64, 64, 3))
    as_uint8 = ENTRY_POINTS[entry](model, x.astype("uint8"))
    as_float = ENTRY_POINTS[entry](model, x.astype("float32"))
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(as_uint8),
        keras.ops.convert_to_numpy(as_float),
    )
    with pytest.raises(TypeError, match="bool"):
        ENTRY_POINTS[entry](model, x.astype("bool"))


def test_float64_is_converted():
    model = tiny_segformer()
    x = np.random.default_rng(0).standard_normal((1, 64, 64, 3))
    np.testing.assert_allclose(
        model.predict(x, verbose=0),
        model.predict(x.astype("float32"), verbose=0),
        atol=1e-6,
    )


@pytest.mark.parametrize("entry", ["call", "predict", "predict_on_batch"])
def test_wrong_channels_or_rank(entry):
    model = tiny_segformer()
    for shape, match in (
        ((1, 64, 64, 1), "3 channels"),
        ((1, 64, 64, 4), "shape"),
        ((64, 64, 3), "batch of images"),
        ((1, 64, 64, 3, 1), "batch of images"),
    ):
        with pytest.raises(ValueError, match=match):
            ENTRY_POINTS[entry](model, np.zeros(shape, "float32"))


# ------------------------------------------------------------- builder args


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"num_classes": 2.5}, TypeError, "`num_classes` must be a positive"),
        ({"num_classes": True}, TypeError, "`num_classes` must be a positive"),
        ({"num_classes": 0}, ValueError, "`num_classes` must be a positive"),
        (
            {"drop_path_rate": 1.5},
            ValueError,
            r"`drop_path_rate` must be in \[0, 1\). Received: 1.5",
        ),
        ({"dropout": 1.0}, ValueError, r"`dropout` must be in \[0, 1\)"),
        (
            {"attention_dropout": -0.1},
            ValueError,
            r"`attention_dropout` must be in \[0, 1\)",
        ),
        (
            {"hidden_dropout": 2.0},
            ValueError,
            r"`hidden_dropout` must be in \[0, 1\)",
        ),
        ({"layer_norm_epsilon": -1}, ValueError, "`layer_norm_epsilon`"),
        ({"decoder_hidden_size": 0}, ValueError, "`decoder_hidden_size`"),
        ({"decoder_hidden_size": 2.5}, TypeError, "`decoder_hidden_size`"),
        ({"include_preprocessing": "no"}, TypeError, "include_preprocessing"),
        (
            {"include_preprocessing": True, "input_shape": (64, 64, 4)},
            ValueError,
            "3 channels",
        ),
        ({"input_shape": (64, 0, 3)}, ValueError, "`input_shape` entries"),
        ({"input_shape": (64, 64)}, ValueError, "`input_shape` must be"),
        ({"mlp_ratios": [0.01, 4, 4, 4]}, ValueError, "mlp_ratios"),
        ({"num_heads": [3, 2, 3, 4]}, ValueError, "divisible"),
        ({"depths": [1, 1, 1]}, ValueError, "same length"),
        ({"hidden_sizes": [8, -16, 24, 32]}, ValueError, "hidden_sizes"),
    ],
)
def test_bad_builder_arguments(kwargs, error, match):
    args = {
        **TINY,
        "num_classes": 5,
        "decoder_hidden_size": TINY_DECODER,
        **kwargs,
    }
    with pytest.raises(error, match=match):
        keras_segformer.build_segformer(**args)


@pytest.mark.parametrize("num_classes", [2.5, True, 0])
def test_bad_num_classes_everywhere(num_classes):
    with pytest.raises((TypeError, ValueError), match="num_classes"):
        keras_segformer.build_classifier(num_classes, **TINY)
    backbone = keras_segformer.build_mit(**TINY)
    with pytest.raises((TypeError, ValueError), match="num_classes"):
        keras_segformer.SegFormer(backbone, num_classes)


# ---------------------------------------------------------------- Segmenter


def test_segmenter_scale_too_small():
    segmenter = inference.Segmenter(tiny_segformer(), scales=(1.0, 0.25))
    image = np.zeros((64, 80, 3), "uint8")
    with pytest.raises(ValueError, match=f"scale 0.25.*16x20.*{MIN}x{MIN}"):
        segmenter(image)
    with pytest.raises(ValueError, match="scale 1.0.*20x20"):
        inference.Segmenter(tiny_segformer(), size=(20, 20))(image)


def test_segmenter_crop_too_small():
    with pytest.raises(ValueError, match=f"`crop_size`.*{MIN}x{MIN}"):
        inference.Segmenter(tiny_segformer(), mode="slide", crop_size=16)
    # Views below the crop are padded to it: a small scale is fine there.
    segmenter = inference.Segmenter(
        tiny_segformer(), mode="slide", crop_size=32, scales=(0.25,)
    )
    assert segmenter(np.zeros((64, 80, 3), "uint8")).shape == (64, 80)


@pytest.mark.parametrize("method", ["predict_mask", "predict_logits"])
def test_segmenter_without_images(method):
    segmenter = inference.Segmenter(tiny_segformer())
    for empty in ([], np.zeros((0, 64, 64, 3), "uint8")):
        with pytest.raises(ValueError, match="`images` is empty"):
            getattr(segmenter, method)(empty)


# ------------------------------------------------------ one image decoder


def _gray16(path, h=24, w=40):
    values = np.arange(h * w, dtype=np.int64).reshape(h, w) * 68 % 65536
    Image.fromarray(values.astype(np.uint16)).save(path)
    return values


def _exif_jpeg(path, orientation=6, h=64, w=96):
    """A JPEG stored ``h x w`` whose EXIF says to rotate it (6: 90 deg)."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, exif=exif, quality=95)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_image_is_scaled_to_8bit(tmp_path, suffix):
    path = tmp_path / f"gray16{suffix}"
    values = _gray16(path)
    expected = np.repeat((values >> 8).astype(np.uint8)[..., None], 3, -1)
    np.testing.assert_array_equal(read_image(path), expected)
    np.testing.assert_array_equal(inference.load_image(path), expected)
    np.testing.assert_array_equal(
        inference.load_image(Image.open(path)), expected
    )
    Image.fromarray(np.zeros(values.shape, np.uint8)).save(
        tmp_path / "mask.png"
    )
    ds = make_dataset(
        [path],
        [tmp_path / "mask.png"],
        batch_size=1,
        training=False,
        mean=None,
        std=None,
    )
    image, _ = next(iter(ds))
    np.testing.assert_array_equal(np.asarray(image)[0], expected)


def test_16bit_mask_keeps_its_ids(tmp_path):
    ids = np.array([[0, 1], [254, 255]], np.uint16)
    Image.fromarray(ids).save(tmp_path / "m.png")
    assert Image.open(tmp_path / "m.png").mode.startswith("I")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png"), ids)
    np.testing.assert_array_equal(inference.load_label(tmp_path / "m.png"), ids)


def test_mask_ids_above_255_are_an_error(tmp_path):
    Image.fromarray(np.full((32, 32), 300, np.uint16)).save(tmp_path / "m.png")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "i.png")
    with pytest.raises(Exception, match=r"m\.png.*\[300\]"):
        make_dataset(
            [tmp_path / "i.png"],
            [tmp_path / "m.png"],
            batch_size=1,
            training=False,
        )
    ds = make_dataset(
        [tmp_path / "i.png"],
        [tmp_path / "m.png"],
        batch_size=1,
        training=False,
        validate=False,
    )
    with pytest.raises(Exception, match=r"m\.png.*\[300\]"):
        next(iter(ds))
    # A label_map can bring them down.
    ds = make_dataset(
        [tmp_path / "i.png"],
        [tmp_path / "m.png"],
        batch_size=1,
        training=False,
        label_map={300: 1},
    )
    assert (np.asarray(next(iter(ds))[1]) == 1).all()


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_same_in_training_and_inference(tmp_path, orientation):
    path = tmp_path / "photo.jpg"
    _exif_jpeg(path, orientation)
    upright = inference.load_image(path)
    assert upright.shape == ((64, 96, 3) if orientation == 3 else (96, 64, 3))
    np.testing.assert_array_equal(read_image(path), upright)
    # The mask is drawn on the upright photo.
    mask = np.zeros(upright.shape[:2], np.uint8)
    mask[: upright.shape[0] // 2] = 1
    Image.fromarray(mask).save(tmp_path / "photo.png")
    ds = make_dataset(
        [path],
        [tmp_path / "photo.png"],
        batch_size=1,
        training=False,
        mean=None,
        std=None,
        validate=True,
    )
    image, label = next(iter(ds))
    np.testing.assert_array_equal(np.asarray(image)[0], upright)
    np.testing.assert_array_equal(np.asarray(label)[0], mask)
    model = tiny_segformer()
    assert inference.Segmenter(model)(path).shape == upright.shape[:2]


def test_mask_exif_orientation_is_applied(tmp_path):
    mask = np.zeros((16, 24), np.uint8)
    mask[0, 0] = 1
    image = Image.fromarray(mask)
    exif = image.getexif()
    exif[0x0112] = 6
    image.save(tmp_path / "m.png", exif=exif)
    assert read_mask(tmp_path / "m.png").shape == (24, 16)
    np.testing.assert_array_equal(
        read_mask(tmp_path / "m.png"), inference.load_label(tmp_path / "m.png")
    )


@pytest.mark.parametrize("content", [b"", b"not an image", b"\x89PNG\r\n"])
def test_unreadable_file_is_named(tmp_path, content):
    path = tmp_path / "broken.png"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="broken.png"):
        read_image(path)
    with pytest.raises(ValueError, match="broken.png"):
        inference.load_image(path)


def test_saved_model_with_non_finite_weights_is_refused(tmp_path):
    from keras_segformer.convert import CheckpointError
    from keras_segformer.export import load_model

    model = keras_segformer.SegFormerB0(num_classes=2)
    variable = model.get_layer("decode_head").trainable_variables[0]
    value = keras.ops.convert_to_numpy(variable.value).copy()
    value.flat[0] = np.nan
    variable.assign(value)
    model.save(tmp_path / "m.keras")
    model.save_weights(tmp_path / "m.weights.h5")
    with pytest.raises(CheckpointError, match="NaN or infinite.*decode_head"):
        load_model(tmp_path / "m.keras")
    with pytest.raises(CheckpointError, match="NaN or infinite.*decode_head"):
        load_model(tmp_path / "m.weights.h5", variant="b0", num_classes=2)


@pytest.mark.parametrize("entry", ["fit", "evaluate"])
def test_float_labels_with_fractions_are_a_type_error(entry):
    model = tiny_segformer(3)
    x = np.zeros((2, 32, 32, 3), np.float32)
    y = np.zeros((2, 32, 32), np.float32)
    y[0, 0, 0] = 0.5  # a probability, not a class index
    with pytest.raises(TypeError, match="fractional part.*0.5"):
        getattr(model, entry)(x, y, verbose=0)
    from keras_segformer.training.losses import check_integer_labels

    check_integer_labels(np.round(y))  # whole floats are class indices


def test_config_that_contradicts_the_weights_names_both(tmp_path):
    import zipfile

    from keras_segformer.export import load_model

    tiny_segformer(4).save(tmp_path / "m4.keras")
    # The same file with a config.json that says 3 classes.
    with zipfile.ZipFile(tmp_path / "m4.keras") as src:
        with zipfile.ZipFile(tmp_path / "m3.keras", "w") as dst:
            for item in src.infolist():
                data = src.read(item.filename)
                if item.filename == "config.json":
                    config = data.decode()
                    data = config.replace(
                        '"num_classes": 4', '"num_classes": 3'
                    )
                    assert data != config
                dst.writestr(item, data)
    with pytest.raises(ValueError) as info:
        load_model(tmp_path / "m3.keras")
    message = str(info.value)
    assert "config.json" in message and "classifier/kernel" in message
    assert "(16, 3) in this model and (16, 4) in the file" in message
    assert "\n" not in message  # not Keras' dump of the variable
