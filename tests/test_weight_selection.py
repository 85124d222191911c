"""Weight selection (jaxdd.evaluate.weight_selection): a small ConvNet initialised from a
larger one by first-N layer selection and uniform, consistent channel selection."""

import json

import jax
import numpy as np
import pytest

from jaxdd.evaluate.weight_selection import (parse_init, select_weights, uniform_indices)
from jaxdd.models import get_model

SHAPE = (8, 8, 1)


def _m(name):
    return get_model(name, 3, SHAPE)


def _shapes(v):
    return jax.tree.map(np.shape, v)


@pytest.mark.parametrize("name", ["convnet_d2_w4", "convnet_d2_w4_bn", "convnet_d2_w4_none"])
def test_same_shape_teacher_is_the_identity(name):
    m = _m(name)
    tv = m.init(jax.random.key(1))
    if "batch_stats" in tv:
        tv["batch_stats"] = jax.tree.map(lambda a: a + 0.5, tv["batch_stats"])
    sel, head = select_weights(m, tv, m, m.init(jax.random.key(2)))
    assert head == "teacher" and _shapes(sel) == _shapes(tv)
    for a, b in zip(jax.tree.leaves(sel), jax.tree.leaves(tv)):
        np.testing.assert_array_equal(a, b)


def test_wider_and_deeper_teacher_shapes_and_values():
    t, s = _m("convnet_d3_w8_bn"), _m("convnet_d2_w4_bn")
    tv = t.init(jax.random.key(1))
    sv0 = s.init(jax.random.key(2))
    sel, head = select_weights(t, tv, s, sv0)
    assert _shapes(sel) == _shapes(sv0) and head == "fresh"     # depth 3 -> 2: own classifier
    idx = uniform_indices(8, 4)
    assert idx.tolist() == [0, 2, 4, 6]
    np.testing.assert_array_equal(sel["params"]["Conv3x3_1"]["kernel"],
                                  np.asarray(tv["params"]["Conv3x3_1"]["kernel"])[:, :, idx][..., idx])
    np.testing.assert_array_equal(sel["batch_stats"]["BatchNorm_1"]["var"],
                                  np.asarray(tv["batch_stats"]["BatchNorm_1"]["var"])[idx])
    np.testing.assert_array_equal(sel["params"]["TorchDense_0"]["Dense_0"]["kernel"],
                                  sv0["params"]["TorchDense_0"]["Dense_0"]["kernel"])
    # same depth, wider teacher: the classifier's input channels are selected consistently
    t2 = _m("convnet_d2_w8_bn")
    tv2 = t2.init(jax.random.key(3))
    sel2, head2 = select_weights(t2, tv2, s, sv0)
    k = np.asarray(tv2["params"]["TorchDense_0"]["Dense_0"]["kernel"]).reshape(4, 8, 3)[:, idx]
    assert head2 == "teacher"
    np.testing.assert_array_equal(sel2["params"]["TorchDense_0"]["Dense_0"]["kernel"],
                                  k.reshape(16, 3))
    # the selected net computes: a narrow copy of a wide net whose extra channels are zero
    x = jax.random.normal(jax.random.key(0), (5, *SHAPE))
    assert np.isfinite(np.asarray(s.apply(sel2, x))).all()


@pytest.mark.parametrize("teacher,student,needle", [
    ("convnet_d2_w4", "convnet_d2_w8", "teacher width 4 < student width 8"),
    ("convnet_d2_w8", "convnet_d3_w4", "teacher depth 2 < student depth 3"),
    ("convnet_d2_w8_bn", "convnet_d2_w4", "norm batch != student norm instance"),
    ("mlp_w16", "convnet_d2_w4", "supports the ConvNet family"),
])
def test_unsupported_pairs_are_one_line_errors(teacher, student, needle):
    t, s = _m(teacher), _m(student)
    with pytest.raises(ValueError, match=needle) as e:
        select_weights(t, t.init(jax.random.key(0)), s, s.init(jax.random.key(0)))
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="weight-selection:TEACHER_DIR"):
        parse_init("weights:foo")


def test_evaluation_runs_from_the_selected_init(tiny_npz, tmp_path, capsys):
    """lr 0 (weight decay is scaled by lr too): every student stays at the selected init, so
    its test accuracy is the init's; then the CLI path with a stored teacher."""
    from conftest import snapshot
    from jaxdd.cli import main
    from jaxdd.data import apply, fit_preprocess, load_dataset
    from jaxdd.evaluate import eval_data, evaluate_set, get_protocol
    from jaxdd.population.teachers import save_teacher
    from jaxdd.train import accuracy
    ds = load_dataset(f"npz:{tiny_npz}")
    pre = fit_preprocess("normalize", ds.x_train)
    t, s = _m("convnet_d2_w8"), _m("convnet_d2_w4")
    sel, _ = select_weights(t, t.init(jax.random.key(1)), s, s.init(jax.random.key(2)))
    data = eval_data(ds, pre)
    res = evaluate_set(jax.random.key(0), apply(pre, ds.x_train[:12]), ds.y_train[:12], data,
                       get_protocol("smoke", epochs=2), seeds=2, lr=0.0,
                       model_name="convnet_d2_w4", init_variables=sel, init_name="ws")
    want = float(accuracy(s, sel, data.x_test, data.y_test))
    assert res["accuracies"] == pytest.approx([want, want]) and res["init"] == "ws"
    with pytest.raises(ValueError, match="do not fit student"):
        evaluate_set(jax.random.key(0), apply(pre, ds.x_train[:12]), ds.y_train[:12], data,
                     get_protocol("smoke", epochs=1), seeds=1, model_name="convnet_d2_w8",
                     init_variables=sel)

    teacher_dir = str(tmp_path / "teacher")
    tb = _m("convnet_d2_w8_bn")
    save_teacher(teacher_dir, tb.name, tb.init(jax.random.key(5)), dataset=ds.name,
                 num_classes=3, input_shape=SHAPE, preprocess=pre, source="test")
    art = str(tmp_path / "rand")
    assert main(["baseline", "random", "--dataset", f"npz:{tiny_npz}", "--ipc", "3", "--out",
                 art, "--quiet"]) == 0
    capsys.readouterr()
    before = snapshot(art)
    argv = ["evaluate", art, "--protocol", "smoke", "--seeds", "2", "--epochs", "2", "--quiet"]
    for bad, needle in ((["--init", f"weight-selection:{teacher_dir}"], "norm batch != student"),
                        (["--init", "kaiming"], "unknown --init"),
                        (["--init", f"weight-selection:{tmp_path}/none"], "no teacher")):
        assert main([*argv, "--model", "convnet_d2_w4", *bad]) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1, err
    assert snapshot(art) == before
    assert main([*argv, "--model", "convnet_d2_w4_bn", "--init", f"weight-selection:{teacher_dir}",
                 "--soup", "uniform", "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["init"] == f"weight-selection:{teacher_dir}" and "soup" in res
    assert res["init_selection"]["head"] == "teacher" and len(res["accuracies"]) == 2
