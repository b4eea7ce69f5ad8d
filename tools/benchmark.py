"""Benchmark this project against transformers and keras-hub.

Runs the harness of ``benchmarks/`` (its ``__init__`` says what is
measured and how); ``--help`` lists the options.

    python tools/benchmark.py --quick          # one-minute smoke run
    python tools/benchmark.py                  # every case and column
    python tools/benchmark.py --cases b0-512x512-b1 \\
        --impls ours-tensorflow,transformers
    python tools/benchmark.py --device gpu     # every column on the GPU

The parent process imports no framework (the harness imports only the
standard library at the top); each worker imports what its column needs.
"""

import os
import sys

if __name__ == "__main__":
    sys.path.insert(
        0, os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    )
    from benchmarks.cli import main

    sys.exit(main())
