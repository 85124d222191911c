"""A mocked imagenet2012 (tfds.testing.mock_data: 1000 classes, variable-size images)
through teacher -> recover -> relabel on whatever devices this process has; driven by
tests/test_imagenet_scale.py, which runs it on 1 and 8 forced CPU devices and as two
`jax.distributed` processes.

    python tests/imagenet_check.py OUT MODEL [NUM_PROCESSES PROCESS_ID PORT TEACHER_DIR]

Single process: trains the streamed teacher (data-parallel over every device) into
OUT/teacher, recovers IPC 1 from noise into OUT/run (SRe2L, streamed at 16 px) and
relabels it with stored labels. With NUM_PROCESSES > 1 it joins jax.distributed at
127.0.0.1:PORT (jaxdd's JAXDD_* path) and runs recover + relabel with the ready teacher
TEACHER_DIR: batches split over the processes, students data-parallel over both.
Prints one JSON line (process, devices, seconds, final ce, accuracies).
"""

import json
import os
import sys
import time

IMAGE_SIZE = 16
NUM_EXAMPLES = 64   # per split of the mock


def main(out: str, model: str, procs: int = 1, pid: int = 0, port: int = 0,
         teacher: str | None = None) -> None:
    if procs > 1:
        os.environ.update(JAXDD_COORDINATOR=f"127.0.0.1:{port}", JAXDD_NUM_PROCESSES=str(procs),
                          JAXDD_PROCESS_ID=str(pid))
        from jaxdd.run.mesh import maybe_initialize_distributed
        maybe_initialize_distributed()
    import jax
    import tensorflow_datasets as tfds

    from jaxdd.configs import load_config
    from jaxdd.pipelines import sre2l

    os.environ["TFDS_DATA_DIR"] = os.path.join(out, f"tfds{pid}")
    sets = [f"image_size={IMAGE_SIZE}", f"teacher.dir={teacher or os.path.join(out, 'teacher')!r}",
            f"teacher.model={model!r}", "teacher.train_if_missing=True", "teacher.epochs=1",
            "teacher.batch_size=16", "teacher.lr=0.01", "recover.iterations=2",
            "recover.batch_size=500", "relabel.epochs=1", "relabel.batch_size=200",
            "relabel.seeds=2", f"relabel.model={model!r}", "relabel.mode='stored'"]
    with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
        cfg = load_config("configs/sre2l/sre2l_imagenet1k.py", 1, sets)
        t0 = time.time()
        rec = sre2l.recover(cfg, os.path.join(out, "run"), quiet=True)
        t1 = time.time()
        rel = sre2l.relabel(os.path.join(out, "run"), None, {}, quiet=True)
    print(json.dumps({
        "process_index": jax.process_index(), "process_count": jax.process_count(),
        "devices": jax.device_count(), "recover_seconds": round(t1 - t0, 1),
        "relabel_seconds": round(time.time() - t1, 1), "batches_here": rec["batches_here"],
        "final_ce": rec.get("final_ce"), "accuracies": rel["accuracies"],
        "val_accuracy_mean": rel["val_accuracy_mean"]}), flush=True)


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], a[1], *(int(v) for v in a[2:5]), *a[5:6])
