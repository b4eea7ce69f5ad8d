"""Every Python example of README.md and docs/*.md runs as written.

The ```` ```python ```` blocks of a page run in order, in a fresh folder
and namespace (README.md in a process of its own, the docs pages in a
second one; PyTorch backend: quickest to start). The folder
holds small generated images and masks (``photo.jpg``, ``a.jpg``,
``b.png``, ``data/images``, ``data/masks``) and a local Hugging Face cache
(``HF_HUB_OFFLINE=1``) in which the Hub ids the pages name are tiny random
transformers models (a keras-hub preset folder that one page reads is
written first). A block preceded by ``<!-- not-tested: reason -->``
is left out; a block whose code is already run on an earlier page is run
once. ``docs/cli.md`` must equal what ``tools/gen_cli_docs.py`` writes.
"""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ["README.md"] + sorted(
    os.path.join("docs", name)
    for name in os.listdir(os.path.join(ROOT, "docs"))
    if name.endswith(".md")
)
FENCE = re.compile(r"^(\s*)```python\s*$")
SKIP = re.compile(r"^\s*<!--\s*not-tested:(.*?)-->\s*$")
HUB_ID = re.compile(r"""from_pretrained\(\s*["']([\w.-]+/[\w.-]+)["']""")
# Hub ids the pages may name: each is a tiny random transformers model in
# the local cache (task, number of classes, class names).
HUB_MODELS = {
    "nvidia/segformer-b0-finetuned-ade-512-512": ("segmentation", "ade20k"),
}
# Inputs a page reads that are made first, in the page's folder: a
# keras-hub preset folder, written by our own save_to_preset.
PRESET_ID = "nvidia/segformer-b0-finetuned-ade-512-512"
PRELUDES = {
    "segformer_b0_ade20k_512/": (
        "import keras_segformer\n"
        f"keras_segformer.from_pretrained({PRESET_ID!r}).save_to_preset(\n"
        "    'segformer_b0_ade20k_512', image_size=512\n"
        ")\n"
    ),
}
TIMEOUT_S = 600


def extract_blocks(path):
    """The Python blocks of a Markdown file.

    Returns:
        list of dicts: ``line`` (1-based line of the fence), ``code``
        (dedented source), ``skip`` (the not-tested reason, or None).
    """
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        lines = f.read().split("\n")
    blocks, i = [], 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, start = match.group(1), i
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        if end == len(lines):
            raise AssertionError(f"{path}:{start + 1}: unclosed ```python")
        body = [line[len(indent) :] for line in lines[start + 1 : end]]
        before = start - 1
        while before >= 0 and not lines[before].strip():
            before -= 1
        skip = SKIP.match(lines[before]) if before >= 0 else None
        blocks.append(
            {
                "line": start + 1,
                "code": "\n".join(body) + "\n",
                "skip": skip.group(1).strip() if skip else None,
            }
        )
        i = end + 1
    return blocks


def runnable_pages():
    """``(page, blocks to run)`` for the pages with a block to run; a block
    whose code an earlier page runs is left to that page."""
    seen, pages = set(), []
    for page in PAGES:
        blocks = []
        for block in extract_blocks(page):
            if block["skip"] is None and block["code"] not in seen:
                seen.add(block["code"])
                blocks.append(block)
        if blocks:
            pages.append((page, blocks))
    return pages


RUNNABLE = runnable_pages()


def _write_hub_cache(cache, hub_ids):
    """Save a tiny random transformers model under each Hub id, in the
    cache layout ``huggingface_hub`` reads offline."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    from keras_segformer.classes import resolve_labels

    # Other "org/name" arguments are folders the examples write (an unknown
    # Hub id fails offline, naming itself).
    for n, hub_id in enumerate(sorted(set(hub_ids) & set(HUB_MODELS))):
        _, labels = HUB_MODELS[hub_id]
        id2label = resolve_labels(labels)
        config = SegformerConfig(
            depths=[1, 1, 1, 1],
            hidden_sizes=[8, 16, 24, 32],
            num_attention_heads=[1, 2, 3, 4],
            decoder_hidden_size=16,
            num_labels=len(id2label),
            id2label={int(k): v for k, v in id2label.items()},
        )
        config.architectures = ["SegformerForSemanticSegmentation"]
        revision = f"{n:040x}"
        repo = os.path.join(cache, "models--" + hub_id.replace("/", "--"))
        os.makedirs(os.path.join(repo, "refs"))
        with open(os.path.join(repo, "refs", "main"), "w") as f:
            f.write(revision)
        model = SegformerForSemanticSegmentation(config).eval()
        model.save_pretrained(os.path.join(repo, "snapshots", revision))


def _write_data(folder):
    """Small images and masks of 3 classes the examples read."""
    rng = np.random.default_rng(0)

    def pair(height, width):
        mask = np.zeros((height, width), np.uint8)
        mask[height // 5 : height // 2, width // 4 : 3 * width // 4] = 1
        mask[height // 2 :, : width // 3] = 2
        noise = rng.integers(0, 60, (height, width, 3))
        image = (noise + 70 * mask[..., None]).astype(np.uint8)
        return image, mask

    for split, count in (("train", 4), ("val", 2)):
        for sub in ("images", "masks"):
            os.makedirs(os.path.join(folder, "data", sub, split))
        for i in range(count):
            image, mask = pair(72 + 8 * i, 96)
            stem = f"{split}_{i}"
            Image.fromarray(image).save(
                os.path.join(folder, "data", "images", split, stem + ".jpg")
            )
            Image.fromarray(mask).save(
                os.path.join(folder, "data", "masks", split, stem + ".png")
            )
    photos = (("photo.jpg", (90, 120)), ("a.jpg", (64, 80)))
    for name, size in photos + (("street.jpg", (60, 100)),):
        Image.fromarray(pair(*size)[0]).save(os.path.join(folder, name))
    Image.fromarray(pair(70, 50)[0]).save(os.path.join(folder, "b.png"))


RUNNER = """\
import json, os, sys
pages = json.load(open(sys.argv[1]))
for page in pages:
    os.chdir(page["folder"])
    namespace = {"__name__": "__main__"}
    for block in page["blocks"]:
        print(f"--- {block['where']}", flush=True)
        exec(compile(block["code"], block["where"], "exec"), namespace)
"""
# README.md runs in a process of its own, as a new user runs it; the docs
# pages share one process (a fresh folder and namespace each), which saves
# a start-up of TensorFlow, PyTorch and Keras per page.
GROUPS = {
    "README.md": [p for p, _ in RUNNABLE if p == "README.md"],
    "docs": [p for p, _ in RUNNABLE if p != "README.md"],
}


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_python_examples_run_as_written(group, tmp_path):
    pages = GROUPS[group]
    blocks = {page: dict(RUNNABLE)[page] for page in pages}
    preludes = {
        page: [
            {"where": f"{page}:prelude {name}", "code": code}
            for name, code in PRELUDES.items()
            if any(name in b["code"] for b in blocks[page])
        ]
        for page in pages
    }
    hub_ids = {
        i
        for bs in blocks.values()
        for b in bs
        for i in HUB_ID.findall(b["code"])
    }
    if any(preludes.values()):
        hub_ids.add(PRESET_ID)
    cache = tmp_path / "hf" / "hub"
    _write_hub_cache(str(cache), hub_ids)
    spec = []
    for n, page in enumerate(pages):
        folder = tmp_path / f"page{n}"
        folder.mkdir()
        _write_data(str(folder))
        spec.append(
            {
                "folder": str(folder),
                "blocks": preludes[page]
                + [
                    {"where": f"{page}:{b['line']}", "code": b["code"]}
                    for b in blocks[page]
                ],
            }
        )
    (tmp_path / "blocks.json").write_text(json.dumps(spec))
    (tmp_path / "runner.py").write_text(RUNNER)
    env = dict(
        os.environ,
        KERAS_BACKEND="torch",
        HF_HOME=str(tmp_path / "hf"),
        HF_HUB_CACHE=str(cache),
        HF_HUB_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        # One thread: `make test` runs two test parts side by side on CI.
        OMP_NUM_THREADS="1",
        PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    result = subprocess.run(
        [
            sys.executable,
            str(tmp_path / "runner.py"),
            str(tmp_path / "blocks.json"),
        ],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert result.returncode == 0, (
        "An example failed (the block after the last '---' line; mark a "
        "block that cannot run here with '<!-- not-tested: reason -->'):\n"
        + result.stdout[-2000:]
        + result.stderr[-4000:]
    )
    if group == "README.md":
        out = tmp_path / "page0"
        mask = np.array(Image.open(out / "out" / "photo_mask.png"))
        assert mask.shape == (90, 120)  # the photo's own size
        assert (out / "out" / "photo_overlay.png").is_file()
        assert (out / "my_segformer.keras").is_file()


def test_not_tested_marks_give_a_reason():
    for page in PAGES:
        with open(os.path.join(ROOT, page), encoding="utf-8") as f:
            lines = f.read().split("\n")
        marks = [x for x in lines if re.match(r"^\s*<!--\s*not-tested", x)]
        for mark in marks:
            match = SKIP.match(mark)
            assert match and match.group(1).strip(), (
                f"{page}: {mark.strip()!r} gives no reason"
            )
        skipped = [b for b in extract_blocks(page) if b["skip"] is not None]
        assert len(marks) == len(skipped), (
            f"{page}: a not-tested mark stands before no python block"
        )


def test_readme_opens_with_a_pretrained_model_on_a_photo():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        assert len(f.read().splitlines()) <= 250
    first = extract_blocks("README.md")[0]
    assert first["skip"] is None
    assert HUB_ID.search(first["code"])
    assert "save_prediction" in first["code"]


def test_cli_page_equals_the_parsers():
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    try:
        import gen_cli_docs
    finally:
        sys.path.remove(os.path.join(ROOT, "tools"))
    with open(gen_cli_docs.PAGE, encoding="utf-8") as f:
        committed = f.read()
    assert committed == gen_cli_docs.render(), (
        "docs/cli.md differs from the parsers: run "
        "`python tools/gen_cli_docs.py` and commit docs/cli.md"
    )
