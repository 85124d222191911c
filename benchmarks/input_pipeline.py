#!/usr/bin/env python
"""Memory, throughput and training-step cost of the streamed input pipeline (jaxdd.data.stream).

Data: for each size in --images, that many variable-size JPEGs (128-256 px a side, smooth
random content, 10 classes; plus a 1,000-image test split) written once as a TFDS ArrayRecord
dataset under --data (default /tmp/jaxdd_bench_stream, never in git) and opened as
`tfds_dir:PATH`, the way a prepared ImageNet is read (records random-accessed, images left
encoded and decoded in the pipeline); `--format folder` writes the same images as a
`folder:` tree instead.

Measured, each in a fresh child process (so that its peak RSS is its own):
- `epoch`: one full train epoch of the loader at each dataset size (decode +
  random-resized-crop 224 + flip, host batches of --batch, --epoch-workers workers):
  seconds, images/s and peak RSS of the process and of its worker processes. The goal
  (issue #13): peak RSS flat in the dataset size and <= 2 GB.
- `throughput`: train-pipeline images/s for each worker count in --workers (0: decode
  threads of the process), on the largest dataset.
- `teacher`: the ResNet-18 teacher's jitted data-parallel SGD step (`jaxdd teacher` on
  streamed data: ImageNet stem, BatchNorm, --teacher-size px, batch --teacher-batch) fed by
  the pipeline vs fed by batches already in device memory, over --steps steps; goal: the
  step is never input-bound (ratio <= 1.1). Peak RSS of that run too.
- `cnn`: the same comparison for a deliberately tiny CNN step (2 convs, --cnn-size px): a
  stress case whose step costs about as much as decoding its batch.
- `teacher_rss`: the teacher step at batch --rss-batch (5 steps) on every dataset size (one
  JSON key per batch): its
  peak RSS, flat in the dataset size (the network's activations scale with the batch).
--parts runs some of these and merges them into the existing --out JSON.
On this 2-core CPU the pipeline's decoding and the step share the same two cores, so every
ratio above 1 is decode time taken from the step; on a GPU/TPU host the step runs on the
accelerator and the host cores only decode.

Usage:
  python benchmarks/input_pipeline.py                        # 20k and 200k images (~25 min)
  python benchmarks/input_pipeline.py --images 2000 --steps 5 --out /tmp/ip.json   # smoke
  python benchmarks/input_pipeline.py --parts teacher_rss                # add one part
Prints one JSON line and writes it to --out (default benchmarks/results/input_pipeline_cpu.json).
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import RESULTS, environment, write  # noqa: E402

CLASSES = 10
TEST_IMAGES = 1000
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------------------
# Data


def jpeg(i: int) -> tuple[bytes, int]:
    """Image i: 128-256 px a side, upsampled noise (compresses like a photo), JPEG q90."""
    from PIL import Image
    rng = np.random.default_rng(i)
    w, h = (int(v) for v in rng.integers(128, 257, 2))
    small = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(small).resize((w, h), Image.BILINEAR).save(buf, "JPEG", quality=90)
    return buf.getvalue(), i % CLASSES


def _jpegs(indices) -> object:
    with multiprocessing.Pool(os.cpu_count()) as pool:
        yield from pool.imap(jpeg, indices, chunksize=256)


def make_arrayrecord(root: str, n: int) -> str:
    """The version folder of a TFDS ArrayRecord dataset of n train + TEST_IMAGES test JPEGs."""
    import tensorflow_datasets as tfds

    class BenchJpegs(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self, supervised_keys=("image", "label"), disable_shuffling=True,
                features=tfds.features.FeaturesDict({
                    "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                    "label": tfds.features.ClassLabel(num_classes=CLASSES)}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(range(n)),
                    "test": self._generate_examples(range(10**9, 10**9 + TEST_IMAGES))}

        def _generate_examples(self, indices):
            for i, (data, label) in zip(indices, _jpegs(indices)):
                yield i, {"image": data, "label": label}

    # TFDS's writer spills a split larger than 1 GB to temporary files through tf.io.gfile,
    # i.e. it needs TensorFlow (not a jaxdd dependency): keep the split in memory instead.
    from tensorflow_datasets.core import shuffle
    shuffle.MAX_MEM_BUFFER_SIZE = max(shuffle.MAX_MEM_BUFFER_SIZE, 16 << 30)
    builder = BenchJpegs(data_dir=root, file_format="array_record")
    builder.download_and_prepare()  # a no-op once prepared
    return builder.data_dir


def make_folder(root: str, n: int) -> str:
    """The same images as a `folder:` tree (train/<class>/, test/<class>/)."""
    done = os.path.join(root, "done")
    if not os.path.exists(done):
        for split, indices in (("train", range(n)),
                               ("test", range(10**9, 10**9 + TEST_IMAGES))):
            for i, (data, label) in zip(indices, _jpegs(indices)):
                d = os.path.join(root, split, f"c{label}")
                os.makedirs(d, exist_ok=True)
                with open(os.path.join(d, f"{i:010d}.jpg"), "wb") as f:
                    f.write(data)
        open(done, "w").close()
    return root


def dataset_name(fmt: str, root: str, n: int) -> str:
    if fmt == "arrayrecord":
        return "tfds_dir:" + make_arrayrecord(os.path.join(root, f"ar{n}"), n)
    return "folder:" + make_folder(os.path.join(root, f"folder{n}"), n)


def disk_mib(path: str) -> float:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path)
               for f in fs) / 2**20


# ---------------------------------------------------------------------------------------
# Child measurements (each in a fresh process)


def peak_rss_mib() -> dict:
    """Peak RSS of this process and of its largest finished child (Linux: KiB units)."""
    return {"rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "rss_mib_worker": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
                                    / 1024, 1)}


def child_epoch(name: str, batch: int, workers: int) -> dict:
    from jaxdd.data import stream
    src = stream.open_source(name, "train")
    before = peak_rss_mib()["rss_mib"]
    t = time.perf_counter()
    loader = stream.make_loader(src, batch_size=batch, seed=0, image_size=224, num_epochs=1,
                                worker_count=workers)
    n = sum(len(b["index"]) for b in loader.host_batches())
    s = time.perf_counter() - t
    return {"images": n, "seconds": round(s, 1), "images_per_s": round(n / s, 1),
            "rss_mib_before_epoch": before, **peak_rss_mib()}


def child_throughput(name: str, batch: int, steps: int, workers: int) -> dict:
    from jaxdd.data import stream
    src = stream.open_source(name, "train")
    loader = stream.make_loader(src, batch_size=batch, seed=0, image_size=224,
                                worker_count=workers)
    it = loader.host_batches()
    next(it)  # warm-up: worker start, first batch
    t = time.perf_counter()
    for _ in range(steps):
        next(it)
    dt = time.perf_counter() - t
    it.close()
    return {"images_per_s": round(steps * batch / dt, 1)}


def _compare(step, state, loader, steps: int) -> dict:
    """Mean seconds per step fed by `loader` vs fed by 4 of its batches kept in memory."""
    import jax
    it = iter(loader)
    cached = [next(it) for _ in range(4)]
    state = step(state, cached[0])  # compile
    jax.block_until_ready(state)
    for b in cached[1:]:  # warm
        state = step(state, b)
    jax.block_until_ready(state)
    t = time.perf_counter()
    for _ in range(steps):
        state = step(state, next(it))
    jax.block_until_ready(state)
    fed = (time.perf_counter() - t) / steps
    t = time.perf_counter()
    for i in range(steps):
        state = step(state, cached[i % len(cached)])
    jax.block_until_ready(state)
    mem = (time.perf_counter() - t) / steps
    return {"pipeline_step_s": round(fed, 4), "in_memory_step_s": round(mem, 4),
            "ratio": round(fed / mem, 3), "pipeline_images_per_s_needed":
            round(loader.global_batch / mem, 1)}


def child_teacher(name: str, size: int, batch: int, steps: int, workers: int) -> dict:
    """The `jaxdd teacher` streamed step (ResNet-18, ImageNet stem) on pipeline batches."""
    import jax
    from jaxdd.data import preprocess as jpre
    from jaxdd.data import stream
    from jaxdd.models import get_model
    from jaxdd.population.teachers import TeacherConfig, _StreamedTeacher
    from jaxdd.train.loop import train_init
    data = stream.open_streamed(name, size, workers=workers, val_per_class=0)
    pre = jpre.fit_preprocess("normalize", np.zeros((1, size, size, 3), np.uint8),
                              mean=IMAGENET_MEAN, std=IMAGENET_STD)
    model = get_model("resnet18_imagenet", CLASSES, (size, size, 3))
    cfg = TeacherConfig(epochs=1, batch_size=batch, lr=0.1)
    run = _StreamedTeacher(model, cfg, data, pre, None)
    st = run.place(train_init(jax.random.key(0), model, cfg.train_config(), run.n_schedule))
    loader = data.loader("train", batch_size=batch, train=True, seed=0,
                         sharding=run.batch_sharding, preprocess=pre)

    def step(state, b):
        return run.step(*state, b["image"], b["label"], b["mask"])

    return {"model": "resnet18_imagenet", "size": size, "batch": batch, "workers": workers,
            **_compare(step, (st.variables, st.opt_state), loader, steps), **peak_rss_mib()}


def child_cnn(name: str, size: int, batch: int, steps: int, workers: int) -> dict:
    """A tiny CNN (2 strided convs + dense) SGD step: a stress case for the pipeline."""
    import jax
    import jax.numpy as jnp
    from jaxdd.data import stream
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    params = {"c1": jax.random.normal(k1, (3, 3, 3, 16)) * 0.1,
              "c2": jax.random.normal(k2, (3, 3, 16, 32)) * 0.05,
              "d": jax.random.normal(k3, (32, CLASSES)) * 0.05}

    def loss(p, x_NHWC, y_N):
        x = x_NHWC.astype(jnp.float32) / 255.0
        for k in ("c1", "c2"):
            x = jax.nn.relu(jax.lax.conv_general_dilated(
                x, p[k], (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
        logits = x.mean(axis=(1, 2)) @ p["d"]
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(len(y_N)), y_N])

    @jax.jit
    def step(p, b):
        g = jax.grad(loss)(p, b["image"], b["label"])
        return jax.tree.map(lambda a, d: a - 0.01 * d, p, g)

    loader = stream.make_loader(stream.open_source(name, "train"), batch_size=batch, seed=0,
                                image_size=size, worker_count=workers)
    return {"model": "tiny_cnn", "size": size, "batch": batch, "workers": workers,
            **_compare(step, params, loader, steps)}


PARTS = ("epoch", "throughput", "teacher", "cnn", "teacher_rss")
CHILDREN = {"epoch": child_epoch, "throughput": child_throughput, "teacher": child_teacher,
            "cnn": child_cnn}


def in_child(kind: str, *args) -> dict:
    """Run CHILDREN[kind](*args) in a fresh interpreter; its JSON result."""
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", kind,
                          json.dumps(args)], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"input_pipeline: child {kind} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", default="20000,200000", help="dataset sizes (comma list)")
    ap.add_argument("--format", choices=("arrayrecord", "folder"), default="arrayrecord")
    ap.add_argument("--data", default="/tmp/jaxdd_bench_stream")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--epoch-workers", type=int, default=0)
    ap.add_argument("--step-workers", type=int, default=0)
    ap.add_argument("--teacher-size", type=int, default=224)
    ap.add_argument("--teacher-batch", type=int, default=64)
    ap.add_argument("--cnn-size", type=int, default=112)
    ap.add_argument("--rss-batch", type=int, default=16)
    ap.add_argument("--parts", default=",".join(PARTS), help="comma list of " + ",".join(PARTS))
    ap.add_argument("--out", default=os.path.join(RESULTS, "input_pipeline_cpu.json"))
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("child_args", nargs="?", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(CHILDREN[a.child](*json.loads(a.child_args))))
        return
    sizes = [int(s) for s in a.images.split(",")]
    parts = [p for p in a.parts.split(",") if p]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise SystemExit(f"input_pipeline: error: unknown part(s) {unknown}; use {PARTS}")
    old = {}
    if set(parts) != set(PARTS) and os.path.exists(a.out):
        with open(a.out) as f:
            old = json.load(f)
    datasets = {}
    for n in sizes:
        t = time.perf_counter()
        name = dataset_name(a.format, a.data, n)
        datasets[n] = {"name": name, "generate_s": round(time.perf_counter() - t, 1),
                       "mib_on_disk": round(disk_mib(name.split(":", 1)[1]), 1)}
    big = datasets[max(sizes)]["name"]
    out = {"benchmark": "input_pipeline", "format": a.format, "image_px": "128-256 jpeg",
           "batch": a.batch, "crop": 224, "timed_steps": a.steps,
           "datasets": {str(n): {"source": d["name"].split(":", 1)[0] + ":" + d["name"].split(
               ":", 1)[1].replace(a.data, "<data>"), "mib_on_disk": d["mib_on_disk"]}
               for n, d in datasets.items()}}
    if "epoch" in parts:
        rss = []
        for n in sizes:
            out["datasets"][str(n)]["epoch"] = in_child("epoch", datasets[n]["name"], a.batch,
                                                        a.epoch_workers)
            rss.append(out["datasets"][str(n)]["epoch"]["rss_mib"])
        out["epoch_peak_rss_mib_by_images"] = {str(n): r for n, r in zip(sizes, rss)}
        out["epoch_rss_growth_mib"] = round(rss[-1] - rss[0], 1)
    if "throughput" in parts:
        out["images_per_s_by_workers"] = {
            w: in_child("throughput", big, a.batch, a.steps, int(w))["images_per_s"]
            for w in a.workers.split(",")}
    if "teacher" in parts:
        out["teacher_step"] = in_child("teacher", big, a.teacher_size, a.teacher_batch,
                                       a.steps, a.step_workers)
    if "cnn" in parts:
        out["tiny_cnn_step"] = in_child("cnn", big, a.cnn_size, a.batch // 2, a.steps,
                                        a.step_workers)
    if "teacher_rss" in parts:
        out[f"teacher_rss_by_images_batch{a.rss_batch}"] = {
            str(n): in_child("teacher", datasets[n]["name"], a.teacher_size, a.rss_batch, 5,
                             a.step_workers) for n in sizes}
    merged = {**old, **{k: v for k, v in out.items() if k != "datasets"}}
    merged["datasets"] = {n: {**old.get("datasets", {}).get(n, {}), **d}
                          for n, d in out["datasets"].items()}
    epoch_rss = merged.get("epoch_peak_rss_mib_by_images", {})
    by_batch = [[r["rss_mib"] for r in v.values()] for k, v in merged.items()
                if k.startswith("teacher_rss_by_images_batch")]
    merged["goals"] = {
        "epoch_rss_le_2gb": max(epoch_rss.values()) <= 2048 if epoch_rss else None,
        "teacher_rss_flat_within_5pct": (all(max(r) <= 1.05 * min(r) for r in by_batch)
                                         if by_batch else None),
        "teacher_step_ratio_le_1.1": (merged["teacher_step"]["ratio"] <= 1.1
                                      if "teacher_step" in merged else None)}
    merged["note"] = "one 2-core CPU: the pipeline and the step share the cores"
    merged["env"] = environment()
    write(os.path.splitext(os.path.basename(a.out))[0], merged, a.out)


if __name__ == "__main__":
    main()
