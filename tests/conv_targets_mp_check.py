"""One process of tests/test_conv_targets_multiprocess.py: joins jax.distributed at
127.0.0.1:PORT and calls `conv_targets.load_or_compute` on a shared cache directory with a
compute function that counts its calls. Prints one JSON line.

    python tests/conv_targets_mp_check.py CACHE_DIR NUM_PROCESSES PROCESS_ID PORT
"""

import json
import os
import sys


def main(cache: str, procs: int, pid: int, port: int) -> None:
    os.environ.update(JAXDD_COORDINATOR=f"127.0.0.1:{port}", JAXDD_NUM_PROCESSES=str(procs),
                      JAXDD_PROCESS_ID=str(pid))
    from jaxdd.run.mesh import maybe_initialize_distributed
    maybe_initialize_distributed()
    import jax
    import jax.numpy as jnp

    from jaxdd.methods.statistics.capture import ConvStat
    from jaxdd.population import conv_targets as ct

    key = ct.make_key(teacher_sha256="t", model="m", dataset="d", dataset_fingerprint="f",
                      preprocess_sha256="p", patch_size=4, per_channel=False, batch_size=8,
                      pad=0, flip=False, seed=0)
    calls = []

    def compute():  # every process computes the same values (as a collective pass would)
        calls.append(1)
        v = jnp.arange(6.0).reshape(2, 3)
        return [ConvStat(v, v + 1, v + 2, v + 3)], ["conv0"]

    path = os.path.join(cache, ct.key_hash(key))
    runs = [ct.load_or_compute(path, key, compute)[1] for _ in range(2)]
    targets, _ = ct.load_or_compute(path, key, compute)
    print(json.dumps({"process_index": jax.process_index(), "computed": runs,
                      "calls": len(calls), "sum": float(sum(float(a.sum()) for a in targets[0])),
                      "files": sorted(os.listdir(path)),
                      "entries": sorted(os.listdir(cache))}), flush=True)


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], *(int(v) for v in a[1:4]))
