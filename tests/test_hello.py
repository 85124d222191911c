"""Label-light soft labels (HeLlO, `jaxdd.labels.projector`): a projector fitted to a teacher
that IS extractor + linear head recovers its logits; projector labels are a pure function of
(params, augmented batch) (online == stored, bit for bit); the reported bytes are the stored
arrays' sizes; `relabel --labels projector` end to end on generated data."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd.cli import main
from jaxdd.labels import projector as jp
from jaxdd.labels import relabel as jr
from jaxdd.models import embed, get_model
from jaxdd.train.loop import TrainConfig

K, SHAPE = 3, (8, 8, 1)
RCFG = jr.RelabelConfig(cutmix_alpha=0.0, crop_min_scale=0.5)  # crops + flips, no mixing


def _setup(n=6):
    model = get_model("convnet_d2_w4", K, SHAPE)
    variables = model.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (n, *SHAPE))
    y = jnp.arange(n) % K
    return model, variables, x, y


def _linear_teacher(model, variables, d):
    """A teacher that is the extractor's features times a random head (+ bias)."""
    w = 2.0 * jax.random.normal(jax.random.key(5), (d, K))
    b = jnp.array([0.5, -0.5, 0.0])
    return lambda xb: embed(model, variables, xb).reshape(xb.shape[0], -1) @ w + b[None, :]


def test_projector_recovers_extractor_plus_linear_teacher():
    model, variables, x, y = _setup()
    d = embed(model, variables, x[:1]).reshape(1, -1).shape[1]
    teacher = _linear_teacher(model, variables, d)
    x_test = jax.random.normal(jax.random.key(7), (32, *SHAPE))
    t_test = teacher(x_test)

    def fitted_error(rank, fit_loss, epochs=600):
        pcfg = jp.ProjectorConfig(rank=rank, init="zero", fit_epochs=epochs, fit_lr=1e-1,
                                  fit_loss=fit_loss, dtype="float32")
        ext = jp.make_extractor(pcfg, model, variables, x, y)
        params, curve = jax.jit(lambda: jp.fitted_projector(
            jax.random.key(2), pcfg, ext, teacher, x, 6, RCFG))()
        p_test = jp.projector_logits(params, ext, x_test)
        return float(jnp.square(p_test - t_test).mean()), np.asarray(curve), p_test

    mse, curve, p_test = fitted_error(K, "mse")       # rank K: the head is representable
    var = float(jnp.var(t_test))
    assert curve[-1] < 1e-3 * curve[0], curve[[0, -1]]
    assert mse < 5e-3 * var, (mse, var)               # on images it was never fitted on
    np.testing.assert_array_equal(np.asarray(p_test.argmax(-1)), np.asarray(t_test.argmax(-1)))
    mse1, _, _ = fitted_error(1, "mse", 200)               # rank 1 cannot hold a rank-3 head
    assert mse1 > 10 * mse
    _, kd_curve, p_kd = fitted_error(K, "kd", 200)         # the KL fit matches the soft labels
    assert kd_curve[-1] < 0.05 * kd_curve[0]
    kl = jr.kd_loss(p_kd, t_test, RCFG.temperature).mean()
    assert float(kl) < 1e-3, float(kl)


def test_projector_labels_pure_online_equals_stored():
    model, variables, x, y = _setup(7)
    pcfg = jp.ProjectorConfig(rank=2, body_rank=1, fit_epochs=2)
    ext = jp.make_extractor(pcfg, model, variables, x, y)
    params = jp.quantise(jp.init_projector(jax.random.key(3), pcfg, ext), "float16")
    # make B and the body's V non-zero so every factor matters
    params = jax.tree.map(lambda a: a + jnp.asarray(0.1, a.dtype), params)
    fn = jp.label_fn(params, ext)
    xb = jr.apply_aug(x, jr.aug_params(jax.random.key(4), 0, 0, 7, 3, SHAPE[:2], RCFG), RCFG)
    a = np.asarray(jax.jit(lambda p, xb: jp.projector_logits(p, ext, xb))(params, xb))
    np.testing.assert_allclose(np.asarray(fn(xb)), a, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(jax.jit(fn)(xb)), np.asarray(jax.jit(fn)(xb)))
    other = dict(params, b_K=params["b_K"] + jnp.asarray(1.0, jnp.float16))  # params matter
    assert not np.allclose(np.asarray(jp.projector_logits(other, ext, xb)), a)
    body = dict(params, body=jax.tree.map(lambda v: v * 0, params["body"]))   # the LoRA too
    assert not np.allclose(np.asarray(jp.projector_logits(body, ext, xb)), a)

    # the student trained from projector labels on the fly == from the same labels stored
    student = get_model("convnet_d2_w4", K, SHAPE)
    cfg = TrainConfig(epochs=2, batch_size=3, lr=1e-2, optimizer="adamw", weight_decay=0.0,
                      schedule="cosine", dsa="")
    key, ak = jax.random.key(8), jax.random.key(9)

    @jax.jit
    def both(params):
        f = jp.label_fn(params, ext)
        online = jr.train_student(key, student, cfg, RCFG, x, teacher_fn=f, aug_key=ak)
        stored = jr.generate_labels(f, x, ak, cfg.epochs, 3, RCFG)
        return online, jr.train_student(key, student, cfg, RCFG, x, stored=stored, aug_key=ak)

    online, stored = both(params)
    jax.tree.map(np.testing.assert_array_equal, online, stored)


def test_projector_bytes_are_the_stored_arrays(tmp_path):
    model, variables, x, y = _setup()
    for body_rank, dtype in ((0, "float16"), (2, "float32")):
        pcfg = jp.ProjectorConfig(rank=3, body_rank=body_rank, dtype=dtype)
        ext = jp.make_extractor(pcfg, model, variables, x, y)
        params = jp.quantise(jp.init_projector(jax.random.key(0), pcfg, ext), dtype)
        path = str(tmp_path / f"p{body_rank}.npz")
        jp.save_projector(path, params, rank=3)
        with np.load(path) as f:
            on_disk = sum(f[k].nbytes for k in f.files if k.startswith("p:"))
            assert f["meta_rank"] == 3
        d = ext.w0_DxK.shape[0]
        item = np.dtype(dtype).itemsize
        expect = (d * 3 + 3 * K + K + 1) * item
        kernels = jp._lora_targets(variables)
        expect += sum(body_rank * (i + o) for i, o in kernels.values()) * item
        assert len(kernels) == 3 and jp.projector_bytes(params) == on_disk == expect
        loaded, meta = jp.load_projector(path)
        assert meta == {"rank": 3}
        jax.tree.map(np.testing.assert_array_equal, loaded, params)
    # stored labels of the same run would take epochs * N * K fp16 values
    assert jr.estimate_label_bytes(6, 300, K) == 300 * 6 * K * 2
    with pytest.raises(ValueError, match="extractor"):
        jp.ProjectorConfig(extractor="clip")
    with pytest.raises(ValueError, match="rank"):
        jp.ProjectorConfig(rank=0)


def _run(capsys, argv):
    code = main(argv + ["--quiet", "--json"])
    o, e = capsys.readouterr()
    assert code == 0, e
    return json.loads(o.strip().splitlines()[-1])


def test_cli_relabel_projector_end_to_end(tiny_npz, tmp_path, capsys):
    config = os.path.join(os.path.dirname(__file__), "..", "configs", "sre2l",
                          "rded_fashion_mnist_cpu.py")
    tdir, out = str(tmp_path / "teacher"), str(tmp_path / "run")
    sets = [f"dataset=npz:{tiny_npz}", "teacher.model=convnet_d2_w4_bn", f"teacher.dir={tdir}",
            "teacher.epochs=1", "teacher.batch_size=64", "rded.mipc=8", "rded.num_crop=1",
            "rded.class_batch=3", "relabel.epochs=3", "relabel.seeds=1",
            "relabel.model=convnet_d2_w4", "relabel.batch_size=6"]
    _run(capsys, ["recover", "--config", config, "--ipc", "2", "--out", out]
         + sum((["--set", s] for s in sets), []))
    r = _run(capsys, ["relabel", out, "--labels", "projector", "--rank", "2",
                      "--fit-epochs", "5", "--extractor", "random"])
    p = r["projector"]
    path = os.path.join(out, "artefact", "projector.npz")
    assert r["labels"] == "projector" and r["labels_file"] == path and os.path.exists(path)
    loaded, meta = jp.load_projector(path)
    assert r["label_bytes"] == p["bytes"] == jp.projector_bytes(loaded)
    assert str(meta["extractor"]) == "random" and int(meta["rank"]) == 2
    assert p["extractor_bytes_extra"] == 0 and 0.0 <= p["top1_agreement"] <= 1.0
    assert r["label_bytes_if_stored"] == 3 * 6 * 3 * 2 and 0.0 <= r["accuracy_mean"] <= 1.0
    assert not [f for f in os.listdir(os.path.dirname(path)) if f.startswith(".tmp-")]

    code = main(["relabel", out, "--labels", "projector", "--mode", "stored", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "drop --mode stored" in err[0]
