"""Side-by-side speed and memory benchmark: this project, transformers and
keras-hub, in one run, on one machine, with the same inputs.

Run it from a checkout as ``python tools/benchmark.py`` (or ``python -m
benchmarks``, or ``keras-segformer benchmark`` where the package runs
from this checkout); ``--help`` lists the options; ``--quick`` is a smoke
run of tiny models at 64x64 that checks the harness, not the speed. It is
not part of the installed package.

Modules: ``cases`` (rows, columns, model configs, inputs), ``workers``
(the per-column jobs, each in a fresh process), ``deploy`` (the
deployed columns' export and runtime jobs), ``deploy_runs`` (their
side in the parent), ``deploy_quality`` (mIoU of a trained model's
artifacts), ``deploy_report`` (their tables), ``reference`` (matmul
peak and FLOP count), ``probes`` (timing, memory and device helpers the
workers share), ``machine`` (CPU, bf16 units, versions), ``runner``
(worker processes and the run's plan), ``report`` (tables, notes, chart)
and ``cli`` (options).

What is compared (the columns)
    ``ours-tensorflow``, ``ours-jax``, ``ours-torch``: this project's
    ``build_segformer`` (random init, 150 classes) on each Keras backend.
    ``transformers``: ``SegformerForSemanticSegmentation`` (PyTorch eager,
    random init), input NCHW. ``keras-hub-<backend>``: keras-hub's
    ``SegFormerImageSegmenter`` (``MiTBackbone`` + ``SegFormerBackbone``),
    rebuilt per case (it needs a fixed ``image_shape``) on the backend
    that was fastest on the first case (``--hub-backend`` forces one).
    ``ours-<backend>-bf16``: this project with ``dtype="mixed_bfloat16"``
    on the backend where it was fastest on the first case
    (``--bf16-backend`` forces one); inference with the weights of a
    float32 model, whose argmax it is compared with. ``transformers-bf16``:
    transformers under ``torch.autocast(device, dtype=torch.bfloat16)``
    for the forward pass (and the loss, in a training step; backward and
    the AdamW step outside it, as autocast's recipe). On a CPU without
    bfloat16 matrix units (x86 ``avx512_bf16`` / ``amx_bf16``, Arm
    ``bf16``) the bf16 columns are not run and their cells say so
    (``--bf16-anyway`` runs them).
    Deployed artifacts (``deploy``; inference cases only), each exported
    in one worker and timed in a fresh one in its own runtime:
    ``ours-onnx`` / ``ours-onnx-int8`` (``export_model(format="onnx")``,
    ONNX Runtime), ``ours-litert`` / ``ours-litert-float16`` /
    ``ours-litert-int8`` (``format="litert"`` at the case's fixed size,
    LiteRT Interpreter, all cores, XNNPACK) and ``transformers-onnx``
    (``torch.onnx.export`` of the transformers model, opset 17, ONNX
    Runtime); ``--impls deployed`` names all six. Beside each: the share
    of pixels whose argmax equals the float32 model's, and with
    ``--quant-model`` / ``--quant-data`` the mIoU of each of our artifacts
    of a trained model (``deploy_quality``). An exporter that lacks an
    option (int8 ONNX before it exists) leaves "unavailable" and its
    reason.

What is measured (the rows)
    Cases are named ``[train-]<variant>-<H>x<W>-b<batch>``; variants are
    ``b0``-``b5``, ``tiny`` (the per-call overhead model: depths 1-1-1-1,
    hidden 16/32/40/64, decoder 32) and ``smoke`` (the test suite's tiny
    model, used by ``--quick``). Inference: Keras ``model.predict(x,
    verbose=0)`` (``predict_on_batch(x)`` second), transformers
    ``model(pixel_values=x)`` under ``torch.inference_mode()``. On the
    ``tiny`` cases the headline is ``predict_on_batch`` and ``model(x)``
    (eager; ``torch.no_grad`` on PyTorch) is timed too: arithmetic is
    negligible there, so they time the framework around the kernels.
    Training: one optimizer step on integer labels ``(B, H, W)``: ours
    ``compile_for_training`` then ``train_on_batch``; keras-hub AdamW +
    sparse cross-entropy; transformers ``zero_grad``, ``loss.backward()``,
    ``AdamW.step()``.

How
    Every (column, case) runs in a fresh worker process
    (``python -c ... benchmarks.workers``; the transformers worker never
    imports Keras) with ``KERAS_BACKEND`` set for it. ``--device cpu``
    hides GPUs; ``--device gpu`` runs every column on the first GPU (host
    in, host out) and fails a column whose library sees none. Warm-up
    calls are untimed, then 3 to ``--repeats`` timed calls within
    ``--budget`` seconds; reported: median and interquartile range in ms.
    Memory: the worker's ``VmHWM`` and what the calls added. FLOPs: the
    transformers model counted by ``torch.utils.flop_counter`` (eager
    attention); ``% peak`` divides GFLOP/s by the machine's float32 matmul
    rate. ``time vs transformers`` is a column's median over transformers'
    (x0.50: twice as fast); for a bf16 column, over transformers-bf16's
    where that ran.

Outputs (under ``--out``): ``benchmark.txt``, ``benchmark.md``,
``benchmark.json`` (every raw figure), ``benchmark.png`` (with
matplotlib, the ``bench`` extra) and ``logs/``. A failing worker shows
``error`` / ``timeout`` / ``not installed`` in its cell; the run goes on.

Every module imports only the standard library at the top: workers import
what their column needs.
"""
