"""One process of the multi-host test (tests/test_multihost.py), or its single-process reference.

    python tests/multihost_worker.py NUM_PROCESSES PROCESS_ID PORT RUN_DIR OUT_DIR

With NUM_PROCESSES > 1 it joins `jax.distributed` at 127.0.0.1:PORT through
`jaxdd.run.mesh.maybe_initialize_distributed` (JAXDD_COORDINATOR/...; multi-process CPU
collectives: Gloo, jax's default `jax_cpu_collectives_implementation`). It runs the tiny
MTT distiller of tests/sharding_check.py through the shared driver on one global mesh over
every device of every process, in two calls: 3 steps (checkpoint at 2, all processes save),
then a resume from that checkpoint to step 4. It gathers the final synthetic images on
every process and writes them to OUT_DIR/x_<process_id>.npy plus one JSON line on stdout.
"""

import json
import os
import sys

import jax

HERE = os.path.dirname(os.path.abspath(__file__))
ITERATIONS, STOP_AFTER, CKPT_EVERY = 4, 3, 2


def main(num_processes: int, process_id: int, port: int, run_dir: str, out_dir: str) -> None:
    if num_processes > 1:   # the CLI's own path: jax.distributed.initialize from JAXDD_* env
        os.environ.update(JAXDD_COORDINATOR=f"127.0.0.1:{port}",
                          JAXDD_NUM_PROCESSES=str(num_processes), JAXDD_PROCESS_ID=str(process_id))
        from jaxdd.run.mesh import maybe_initialize_distributed
        maybe_initialize_distributed()
    import numpy as np
    from jax.experimental import multihost_utils

    sys.path.insert(0, HERE)
    from sharding_check import mtt_case

    from jaxdd.run import driver
    from jaxdd.run.mesh import make_mesh

    mesh = make_mesh()   # all devices of all processes: one global mesh
    config = {"case": "mtt", "iterations": ITERATIONS}
    d, state, batch_fn, consts = mtt_case()
    _, first = driver.run(d, state, batch_fn, jax.random.key(5), ITERATIONS, consts=consts,
                          mesh=mesh, run_dir=run_dir, config=config, ckpt_every=CKPT_EVERY,
                          log_every=1, stop_after=STOP_AFTER)
    d, state, batch_fn, consts = mtt_case()   # a fresh state: the resume must come from disk
    final, second = driver.run(d, state, batch_fn, jax.random.key(5), ITERATIONS, consts=consts,
                               mesh=mesh, run_dir=run_dir, config=config, ckpt_every=CKPT_EVERY,
                               log_every=1)
    x_NHWC = np.asarray(multihost_utils.process_allgather(final.syn.x_syn_NHWC, tiled=True))
    np.save(os.path.join(out_dir, f"x_{process_id}.npy"), x_NHWC)
    print(json.dumps({
        "process_index": jax.process_index(), "process_count": jax.process_count(),
        "global_devices": jax.device_count(), "local_devices": jax.local_device_count(),
        "mesh": dict(mesh.shape), "spec": str(final.syn.x_syn_NHWC.sharding.spec),
        "checksum": float(np.sum(x_NHWC.astype(np.float64))),
        "abs_checksum": float(np.sum(np.abs(x_NHWC.astype(np.float64)))),
        "iterations_logged": [m["iteration"] for m in first + second],
        "collectives": jax.config.jax_cpu_collectives_implementation,
    }), flush=True)


if __name__ == "__main__":
    n, i, port, run_dir, out_dir = sys.argv[1:6]
    main(int(n), int(i), int(port), run_dir, out_dir)
