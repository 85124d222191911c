"""Run by tests/test_sharding.py in a subprocess with 8 forced CPU devices.

Runs a few distiller steps through the shared driver on a 1-device mesh and on two
8-device meshes, and prints the max abs difference of the final synthetic images.
"""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd.run import driver
from jaxdd.run.mesh import make_mesh


def mtt_case():
    from jaxdd.methods.mtt import ExpertSegment, MTTConfig, make_mtt
    from jaxdd.models import get_model
    m = get_model("convnet_d2_w4", 4, (8, 8, 1))
    apply_fn = lambda p, x: m.apply({"params": p}, x)
    t0 = m.init(jax.random.key(0))["params"]
    t1 = jax.tree.map(lambda a: a * 0.9, t0)
    # image_chunks=2: the chunked student (the CPU default on one device) on sharded images too
    cfg = MTTConfig(syn_steps=3, expert_epochs=1, max_start=1, lr_img=10.0, unroll=True, image_chunks=2)
    d = make_mtt(cfg, apply_fn)
    x = np.asarray(jax.random.normal(jax.random.key(1), (16, 8, 8, 1)))
    state = d.init(jax.random.key(2), x, jnp.arange(16) % 4)
    batch_fn = lambda consts, k, t: ExpertSegment(*consts)
    return d, state, batch_fn, (t0, t1)


def dm_case():
    from jaxdd.methods.dm import DMConfig, make_dm
    from jaxdd.models import get_model
    m = get_model("convnet_d2_w4", 4, (8, 8, 1))
    d = make_dm(DMConfig(batch_real=4, dsa_strategy="crop"), m, 4)
    x = np.asarray(jax.random.normal(jax.random.key(1), (16, 8, 8, 1)))
    state = d.init(jax.random.key(2), x, jnp.arange(16) // 4)
    real = np.asarray(jax.random.normal(jax.random.key(3), (4, 4, 8, 8, 1)))
    return d, state, lambda consts, k, t: consts, real


def recover_case():
    from jaxdd.methods.statistics.recover import RecoverConfig, make_recover
    from jaxdd.models import get_model
    m = get_model("convnet_d2_w4_bn", 4, (8, 8, 1))
    v = m.init(jax.random.key(0))
    _, v = m.apply_train(v, jax.random.normal(jax.random.key(4), (16, 8, 8, 1)) * 2 + 0.5)
    d = make_recover(RecoverConfig(iterations=3, lr=0.1, init="real"), m, v)
    x = np.asarray(jax.random.normal(jax.random.key(1), (8, 8, 8, 1)))
    state = d.init(jax.random.key(2), x, jnp.arange(8) % 4)
    return d, state, lambda consts, k, t: None, None


CASES = {"mtt": mtt_case, "dm": dm_case, "recover": recover_case}


def evaluate_check(meshes):
    """evaluate_set with 8 seeds: seeds split over the 8-device mesh vs one device; and the
    trained variables of train_seeds, 8 and 5 seeds (5: padded rounds / replicated vmap), under
    each seed mode, against the same seeds on one device."""
    from jaxdd.evaluate import EvalData, evaluate_set, get_protocol, train_seeds
    from jaxdd.models import get_model
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 8, 8, 1)).astype(np.float32)
    y = np.arange(12) % 4
    xt = rng.normal(size=(40, 8, 8, 1)).astype(np.float32)
    data = EvalData(xt[:8], np.arange(8) % 4, xt, np.arange(40) % 4, 4, (8, 8, 1))
    proto = get_protocol("smoke", epochs=3)
    res = {m: evaluate_set(jax.random.key(0), x, y, data, proto, 8, model_name="convnet_d2_w4",
                           mesh=mesh) for m, mesh in meshes.items()}
    ref = np.asarray(res["1"]["accuracies"])
    out = {m: {"maxdiff": float(np.abs(np.asarray(r["accuracies"]) - ref).max()),
               "spread": float(ref.max() - ref.min())} for m, r in res.items()}
    model = get_model("convnet_d2_w4", 4, (8, 8, 1))
    target = np.eye(4, dtype=np.float32)[y]
    for mode in ("rounds", "vmap"):
        for seeds in (8, 5):
            keys = jax.random.split(jax.random.key(1), seeds)
            got = {m: train_seeds(keys, model, proto.train, x, target, mesh=mesh, seed_mode=mode)
                   for m, mesh in meshes.items()}
            for m, v in got.items():
                out[f"{m}_{mode}_{seeds}"] = {"maxdiff": max(
                    float(np.abs(np.asarray(a) - np.asarray(b)).max())
                    for a, b in zip(jax.tree.leaves(v), jax.tree.leaves(got["1"]), strict=True))}
    return out


def experts_check():
    """Expert buffers of 8 experts: one at a time on one device vs groups of 8 (over the 8
    devices) and 4 (over 4), unrolled and vmapped; every trajectory checkpoint compared."""
    import dataclasses
    import tempfile
    from jaxdd.population import experts as ex
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (48, 8, 8, 1)).astype(np.uint8)
    y = (np.arange(48) % 3).astype(np.int32)
    cfg = ex.ExpertConfig(num_experts=8, epochs=2, batch_size=16, dsa="crop")
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        ex.build_buffer(f"{tmp}/one", (x, y), "convnet_d2_w4", cfg, 0)
        ref = [[ex.load_expert_epoch(f"{tmp}/one", e, t) for t in range(3)] for e in range(8)]
        for size in (8, 4):
            for mode in ("unroll", "vmap"):
                d = f"{tmp}/{size}{mode}"
                ex.build_buffer(d, (x, y), "convnet_d2_w4", dataclasses.replace(
                    cfg, experts_per_program=size, group_mode=mode), 0)
                got = [[ex.load_expert_epoch(d, e, t) for t in range(3)] for e in range(8)]
                diff = max(float(np.abs(a - b).max()) for a, b in
                           zip(jax.tree.leaves(got), jax.tree.leaves(ref), strict=True))
                out[f"{size}_{mode}"] = {"maxdiff": diff}
        # Where a group of 8 lives: the stacked state split over all 8 devices.
        from jaxdd.train.loop import train_init
        model, epoch_fn, _ = ex._compiled("convnet_d2_w4", 3, (8, 8, 1), cfg)
        states = [train_init(jax.random.key(i), model, cfg.train_config(), 48) for i in range(8)]
        _, _, fns = ex._group_layout(states, (jnp.zeros(1), jnp.zeros(1)), epoch_fn, "unroll")
        leaf = jax.tree.leaves(fns["stack"](states).variables)[0]
        out["placement"] = {"spec": str(leaf.sharding.spec), "devices": len(leaf.devices())}
    return out


def stages_check(meshes):
    """The streamed teacher (data-parallel, BatchNorm statistics over the mesh) and the
    relabel student (batches split over the devices) on 1 device vs 8: max differences of
    every variable, relative to its largest magnitude."""
    import tempfile
    from jax.sharding import NamedSharding, PartitionSpec as P
    from jaxdd.data import stream
    from jaxdd.labels import relabel
    from jaxdd.models import get_model
    from jaxdd.population import teachers
    from jaxdd.train.loop import TrainConfig
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 8, 8, 1)).astype(np.uint8)
    y = (np.arange(64) % 4).astype(np.int32)
    names = [str(k) for k in range(4)]
    data = stream.StreamedDataset("tiny", stream.ArraySource(x, y, "tiny", names),
                                  stream.ArraySource(x[:16], y[:16], "tiny", names),
                                  (8, 8, 1), names, val_per_class=0)
    rel = lambda a, b: max(float(np.abs(u - v).max() / (np.abs(u).max() + 1e-12))
                           for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
    out, tv = {}, {}
    cfg = teachers.TeacherConfig(epochs=2, batch_size=16, lr=0.05)
    with tempfile.TemporaryDirectory() as tmp:
        for m in ("1", "8"):
            teachers.train_teachers(f"{tmp}/{m}", data, "convnet_d2_w4_bn", cfg, 0,
                                    mesh=meshes[m])
            tv[m] = teachers.load_teacher(f"{tmp}/{m}")[1]
    out["teacher"] = {"maxdiff": rel(tv["1"], tv["8"]),
                      "changed": rel(tv["1"], get_model("convnet_d2_w4_bn", 4, (8, 8, 1)).init(
                          jax.random.key(0)))}
    model = get_model("convnet_d2_w4_bn", 4, (8, 8, 1))
    xs = jnp.asarray(rng.normal(size=(32, 8, 8, 1)), jnp.float32)
    # SGD: with AdamW the same 1e-7 differences of cross-device sums reach 2e-4 after 4
    # steps (Adam divides near-zero gradient entries by their own tiny scale)
    tcfg = TrainConfig(epochs=2, batch_size=16, lr=0.01, momentum=0.9, dsa="")
    rcfg = relabel.RelabelConfig(cutmix_alpha=1.0)
    teacher = lambda xb: model.apply(tv["1"], xb)
    students = {}
    for m in ("1", "8"):
        sh = NamedSharding(meshes[m], P("data")) if m == "8" else None
        fn = jax.jit(lambda k: relabel.train_student(k, model, tcfg, rcfg, xs, teacher_fn=teacher,
                                                     batch_sharding=sh))
        students[m] = fn(jax.random.key(3))
    out["relabel"] = {"maxdiff": rel(students["1"], students["8"]),
                      "changed": rel(students["1"], model.init(jax.random.fold_in(
                          jax.random.key(3), 0)))}
    return out


def bnmask_check(meshes):
    """One masked update of a BN ConvNet (16 rows, the last 5 padding: devices 6 and 7 hold
    padding only) on 1 device vs split over 8; and on 8, junk in the padded rows."""
    from jax.sharding import NamedSharding, PartitionSpec as P
    from jaxdd.models import get_model
    from jaxdd.train.loop import TrainConfig, make_optimizer, make_update, soft_cross_entropy
    model = get_model("convnet_d2_w4_bn", 4, (8, 8, 1))
    v = model.init(jax.random.key(0))
    tx = make_optimizer(TrainConfig(epochs=1, batch_size=16, lr=0.05), 1)
    opt = tx.init(v["params"])
    update = jax.jit(make_update(model.apply_train, soft_cross_entropy, tx))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(16, 8, 8, 1)), jnp.float32)
    t = jax.nn.one_hot(jnp.arange(16) % 4, 4)
    mask = (jnp.arange(16) < 11).astype(jnp.float32)
    one = update(v, opt, x, t, mask)[0]
    sh = NamedSharding(meshes["8"], P("data"))
    rep = NamedSharding(meshes["8"], P())
    put = lambda a, s: jax.device_put(a, s)  # noqa: E731
    v8, opt8 = put(v, rep), put(opt, rep)
    xs = put(x, sh)
    eight = update(v8, opt8, xs, put(t, sh), put(mask, sh))[0]
    junk = update(v8, opt8, put(x.at[11:].set(100.0), sh), put(t, sh), put(mask, sh))[0]
    diff = lambda a, b: max(float(np.abs(np.asarray(u) - np.asarray(w)).max())  # noqa: E731
                            for u, w in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
    return {"maxdiff": diff(one, eight), "padding_matters": diff(eight, junk),
            "spec": str(xs.sharding.spec)}


def main(names):
    out = {}
    devs = jax.devices()
    assert len(devs) == 8, devs
    meshes = {"1": make_mesh(devices=devs[:1]), "8": make_mesh((8,)),
              "4x2": make_mesh((4, 2), ("data", "pool"))}
    for name in names:
        if name == "evaluate":
            out[name] = evaluate_check(meshes)
            continue
        if name == "experts":
            out[name] = experts_check()
            continue
        if name == "stages":
            out[name] = stages_check(meshes)
            continue
        if name == "bnmask":
            out[name] = bnmask_check(meshes)
            continue
        results = {}
        for mname, mesh in meshes.items():
            d, state, batch_fn, consts = CASES[name]()
            final, _ = driver.run(d, state, batch_fn, jax.random.key(5), 3, consts=consts, mesh=mesh)
            results[mname] = (np.asarray(final.syn.x_syn_NHWC), str(final.syn.x_syn_NHWC.sharding.spec))
        ref = results["1"][0]
        out[name] = {m: {"maxdiff": float(np.abs(r - ref).max()), "spec": spec,
                         "changed": float(np.abs(r - np.asarray(CASES[name]()[1].syn.x_syn_NHWC)).max())}
                     for m, (r, spec) in results.items()}
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:] or list(CASES))
