"""Benchmark this project against transformers and keras-hub.

Same as ``keras-segformer benchmark``; ``--help`` lists the options and
``keras_segformer/benchmark.py`` says what is measured and how.

    python tools/benchmark.py --quick          # one-minute smoke run
    python tools/benchmark.py                  # every case and column
    python tools/benchmark.py --cases b0-512x512-b1 \\
        --impls ours-tensorflow,transformers
    python tools/benchmark.py --device gpu     # every column on the GPU

The harness is run by path, without importing the package (whose import
loads Keras and its backend): the parent process stays small and starts
no framework; each worker imports what its column needs.
"""

import os
import runpy

if __name__ == "__main__":
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    runpy.run_path(
        os.path.join(root, "keras_segformer", "benchmark.py"),
        run_name="__main__",
    )
