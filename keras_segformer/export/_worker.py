"""Worker process of ``export_model`` under the JAX and PyTorch backends.

``python -m keras_segformer.export._worker JOBS.json`` with
``KERAS_BACKEND=tensorflow``: loads the ``.keras`` copy of the model that
the parent process saved and writes every artifact listed in the file.
"""

import json
import sys


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit("usage: python -m keras_segformer.export._worker JOBS")
    import keras

    if keras.backend.backend() != "tensorflow":
        raise SystemExit(
            "The export worker needs KERAS_BACKEND=tensorflow; running on "
            f"{keras.backend.backend()!r}."
        )
    import numpy as np

    import keras_segformer  # noqa: F401  (registers the custom layers)
    from keras_segformer.export.tf_export import export_job

    with open(argv[0]) as f:
        spec = json.load(f)
    # compile=False: the export needs the layers and weights only, not
    # the loss, metrics and optimizer the model was compiled with.
    model = keras.saving.load_model(spec["model"], compile=False)
    cache = {}
    for job in spec["jobs"]:
        if job["representative_images"] is not None:
            with np.load(job["representative_images"]) as data:
                job["representative_images"] = [
                    data[f"arr_{i}"] for i in range(len(data.files))
                ]
        export_job(model, job, cache)


if __name__ == "__main__":
    main()
