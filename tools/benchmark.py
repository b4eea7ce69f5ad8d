"""Benchmark this project against transformers and keras-hub.

Same as ``keras-segformer benchmark``; ``--help`` lists the options and
``keras_segformer/benchmark.py`` says what is measured and how.

    python tools/benchmark.py --quick          # one-minute smoke run
    python tools/benchmark.py                  # every case and column
    python tools/benchmark.py --cases b0-512x512-b1 \\
        --impls ours-tensorflow,transformers
"""

import os
import sys

# Run from a checkout without installing the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from keras_segformer.benchmark import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
