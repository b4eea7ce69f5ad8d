"""``keras-segformer export``: write a SavedModel, TFLite or ONNX file.

Example:
    keras-segformer export --model segformer.keras --format onnx \\
        --out out/segformer.onnx
    keras-segformer export --model hf-b0/ --format tflite \\
        --out out/b0_int8.tflite --raw-input --argmax --input-size 512 512 \\
        --quantize int8 --calibration val_images/
"""

from keras_segformer.cli.common import add_model_arguments
from keras_segformer.export.api import FORMATS, QUANTIZATIONS


def add_parser(subparsers):
    """Register ``export`` (see ``keras_segformer.cli``)."""
    parser = subparsers.add_parser(
        "export",
        help="export a model to SavedModel, TFLite or ONNX",
        description=(
            "Export a model for inference. The artifact takes images "
            "(batch, height, width, 3) and returns logits at 1/4 "
            "resolution, or with --argmax a class-index mask at the input "
            "size. Height and width stay dynamic unless --input-size fixes "
            "them. Written from a TensorFlow graph on every Keras backend."
        ),
    )
    add_model_arguments(parser)
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument(
        "--out",
        required=True,
        help="output directory (saved_model) or file (.tflite, .onnx)",
    )
    parser.add_argument(
        "--raw-input",
        action="store_true",
        help="take raw uint8 RGB pixels (0-255) and normalize them in the "
        "graph",
    )
    parser.add_argument(
        "--argmax",
        action="store_true",
        help="resize the logits to the input size in the graph and return "
        "the int32 class mask",
    )
    parser.add_argument(
        "--input-size",
        nargs=2,
        type=int,
        metavar=("H", "W"),
        help="fix the input height and width (e.g. for TFLite on mobile "
        "delegates); dynamic by default",
    )
    parser.add_argument(
        "--quantize",
        choices=QUANTIZATIONS,
        help="TFLite only: float16 weights, or int8 weights and activations",
    )
    parser.add_argument(
        "--calibration",
        metavar="DIR",
        help="int8 calibration images (a folder); default: built-in "
        "synthetic images",
    )
    parser.set_defaults(func=run)
    return parser


def run(args):
    """Run ``export`` with parsed arguments.

    Args:
        args: ``argparse.Namespace`` from the ``export`` parser.
    """
    from keras_segformer.export import export_model, load_model

    if args.calibration is not None and args.quantize != "int8":
        raise ValueError("--calibration is only used with --quantize int8.")
    model = load_model(args.model, args.variant, args.num_classes)
    path = export_model(
        model,
        args.out,
        args.format,
        include_preprocessing=args.raw_input,
        include_postprocessing=args.argmax,
        input_size=args.input_size,
        quantization=args.quantize,
        representative_images=args.calibration,
    )
    print(f"Exported {args.format} to {path}")
    return 0
