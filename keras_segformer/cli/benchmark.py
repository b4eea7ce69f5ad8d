"""``keras-segformer benchmark``: speed and memory side by side with
transformers and keras-hub (see ``keras_segformer.benchmark``)."""


def add_parser(subparsers):
    from keras_segformer.benchmark import add_arguments

    p = subparsers.add_parser(
        "benchmark",
        help="latency, GFLOP/s and memory of this project vs transformers "
        "and keras-hub, one worker process per implementation and case",
    )
    add_arguments(p)
    p.set_defaults(func=run)


def run(args):
    from keras_segformer.benchmark import run as run_benchmark

    return run_benchmark(args)
