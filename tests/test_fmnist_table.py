"""benchmarks/fmnist_table.py: queue order, skip of finished cells, artefact reuse across
protocols, and the table made from cell JSONs (fake cells: the table logic, not accuracy)."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import fmnist_table as ft  # noqa: E402


def _cell(method, ipc, protocol, acc, **kw):
    c = {"method": method, "ipc": ipc, "protocol": protocol, "accuracy_mean": acc,
         "accuracy_std": 0.004, "seeds": ft.SEEDS[protocol], "distill_seconds": 1234.4,
         "eval_seconds": 56.0, "distill_wall_seconds": 1300.0, "budget": {"model": "convnet", "iterations": 20000,
                                          "batch_real": 256},
         "overrides": [], "timed_under_load": False, "preset": "configs/x.py"}
    c.update(kw)
    return c


def _write(d, c):
    with open(ft.cell_path(str(d), c["method"], c["ipc"], c["protocol"]), "w") as f:
        json.dump(c, f)


def test_queue_is_cheapest_first():
    q = ft.queue(["dm", "mtt"], [10, 1], ["cpu", "mtt"])
    assert q[:4] == [("dm", 1, "cpu"), ("mtt", 1, "cpu"), ("dm", 1, "mtt"), ("mtt", 1, "mtt")]
    assert q[4] == ("dm", 10, "cpu") and len(q) == 8
    q = ft.queue(["dm", "mtt"], [10, 1], ["cpu", "mtt"], per_method=True)
    assert q[:4] == [("dm", 1, "cpu"), ("dm", 1, "mtt"), ("mtt", 1, "cpu"), ("mtt", 1, "mtt")]
    assert q[4] == ("dm", 10, "cpu") and len(q) == 8


def test_method_sets_apply_to_all_or_to_one_method():
    sets = ["iterations=2", "mtt:experts.epochs=1", "dm:dm.batch_real=8", "x=a:b"]
    assert ft.method_sets(sets, "mtt") == ["iterations=2", "experts.epochs=1", "x=a:b"]
    assert ft.method_sets(sets, "dm") == ["iterations=2", "dm.batch_real=8", "x=a:b"]


def test_collect_skips_incomplete_files_and_table_shows_every_field(tmp_path):
    _write(tmp_path, _cell("dm", 1, "mtt", 0.712, timed_under_load=True))
    _write(tmp_path, _cell("dm", 10, "cpu", 0.801, overrides=["iterations=5"], distill_attempts=3))
    _write(tmp_path, _cell("dsa", 1, "mtt", 0.731))
    _write(tmp_path, _cell("random", 1, "mtt", 0.9))                   # the reference: no goal row
    (tmp_path / "fmnist_dc_ipc1_mtt.json").write_text('{"method": "dc"}')    # incomplete
    (tmp_path / "fmnist_dc_ipc10_mtt.json").write_text("{not json")
    cells = ft.collect_cells(str(tmp_path))
    assert set(cells) == {("dm", 1, "mtt"), ("dm", 10, "cpu"), ("dsa", 1, "mtt"), ("random", 1, "mtt")}
    md = ft.markdown(cells, {("dm", 1): {"accuracy_mean": 0.712, "accuracy_std": 0.003,
                                         "distill_seconds": 271, "eval_seconds": 29}},
                     old_published={"dm": ("70.0 ± 0.1", "", "")})
    rows = {tuple(r.split(" | ")[:2]): r for r in md.splitlines() if r.startswith("| ")}
    dm_mtt = rows[("| dm", "mtt")]
    assert "**71.2 ± 0.4**" in dm_mtt and "5 seeds, mtt" in dm_mtt
    assert "20000 it, convnet, real 256/class" in dm_mtt and "distill 1234 s (wall 1300 s), eval 56 s" in dm_mtt
    assert "timed under load" in dm_mtt and dm_mtt.count("| –") == 3   # IPC 10, 50, published
    assert "reduced: iterations=5" in rows[("| dm", "cpu")]
    assert "distilled in 3 attempts: wall seconds summed" in rows[("| dm", "cpu")]
    assert "attempts" not in dm_mtt
    assert "70.6 / 84.6 / 88.7" in rows[("| dsa", "mtt")]              # published, same row
    assert "≥ 80.0" in md and "≥ 88.0" in md and "≥ 90.5" in md
    assert "IPC 1: goal ≥ 80.0: best `mtt` row dsa 73.1 (missed by 6.9)" in md
    assert "dsa IPC 1: published 70.6, jaxdd `mtt` 73.1 (met)" in md
    assert "IPC 10: goal ≥ 88.0: no `mtt` cell yet" in md             # the reduced cpu cell is no goal
    assert "| dm (reduced) | 71.2 ± 0.3 | – | – | 271 / – / – | 29 / – / – | 70.0 ± 0.1 / – / – |" in md


def test_run_queue_skips_finished_cells_and_reuses_the_artefact(tmp_path, monkeypatch):
    calls = []

    def fake_distill(method, ipc, results_dir, sets, log):
        calls.append(("distill", method, ipc))
        return {"method": method, "ipc": ipc, "preset": "p.py", "overrides": sets, "budget": {},
                "distill_seconds": 1.0, "distill_wall_seconds": 1.0,
                "distill_load": {"under_load": False}, "run_dir": "r"}

    def fake_evaluate(method, ipc, protocol, rec, results_dir, log, seeds=None):
        calls.append(("evaluate", method, ipc, protocol))
        _write(results_dir, _cell(method, ipc, protocol, 0.5))
        return _cell(method, ipc, protocol, 0.5)

    monkeypatch.setattr(ft, "distill", fake_distill)
    monkeypatch.setattr(ft, "evaluate", fake_evaluate)
    _write(tmp_path, _cell("dm", 1, "cpu", 0.7))                       # already finished
    done = ft.run_queue(ft.queue(["dm"], [1], ["cpu", "mtt"]), str(tmp_path), [])
    assert done == ["fmnist_dm_ipc1_mtt.json"]
    assert calls == [("distill", "dm", 1), ("evaluate", "dm", 1, "mtt")]
    assert ft.run_queue(ft.queue(["dm"], [1], ["cpu", "mtt"]), str(tmp_path), []) == []


def test_distill_record_is_reused_without_running(tmp_path, monkeypatch):
    run = tmp_path / "runs" / "dm-ipc1"
    run.mkdir(parents=True)
    rec = {"method": "dm", "ipc": 1, "run_dir": str(run)}
    (run / "fmnist_distill.json").write_text(json.dumps(rec))
    monkeypatch.setattr(ft, "_run", lambda *a: pytest.fail("must not re-distil"))
    assert ft.distill("dm", 1, str(tmp_path), [], str(tmp_path / "log")) == rec


def test_queue_lock_refuses_a_second_queue(tmp_path):
    (tmp_path / ".queue.pid").write_text(str(os.getppid()))   # a live process
    with pytest.raises(SystemExit, match="already runs"):
        with ft.QueueLock(str(tmp_path)):
            pass
    (tmp_path / ".queue.pid").write_text("999999999")          # stale: taken over
    with ft.QueueLock(str(tmp_path)):
        assert (tmp_path / ".queue.pid").read_text() == str(os.getpid())
    assert not (tmp_path / ".queue.pid").exists()


def test_random_row_has_no_preset_and_refuses_preset_overrides(tmp_path):
    with pytest.raises(SystemExit, match="no preset"):
        ft.distill("random", 1, str(tmp_path), ["iterations=2"], str(tmp_path / "log"))
    assert not (tmp_path / "runs" / "random-ipc1").exists()                 # nothing touched
    assert ft.budget_text({"selection": "random", "seed": 0}) == "random real subset, seed 0"
    assert ft.queue(ft.QUEUE_ORDER, [1], ["cpu"])[0] == ("random", 1, "cpu")  # the cheapest


def test_distill_records_attempts_and_an_unrecorded_resume(tmp_path, monkeypatch):
    load = {"load_max": 1.0, "load_mean": 1.0, "cores": 2, "under_load": False}
    monkeypatch.setattr(ft, "_run", lambda *a: (0, '{"distill_seconds": 5.0}\n', 7.0, load))
    (tmp_path / "runs" / "dm-ipc1" / "run" / "checkpoints" / "50").mkdir(parents=True)
    rec = ft.distill("dm", 1, str(tmp_path), ["iterations=60"], str(tmp_path / "log"))
    assert rec["distill_resumed_unrecorded"] and rec["distill_attempts"] == 1
    assert rec["budget"]["iterations"] == 60 and rec["overrides"] == ["iterations=60"]
    assert json.loads((tmp_path / "runs" / "dm-ipc1.attempts.json").read_text())["attempts"][0]["resumed"]
    (tmp_path / "runs" / "dm-ipc1" / "fmnist_distill.json").unlink()   # a second attempt
    rec = ft.distill("dm", 1, str(tmp_path), ["iterations=60"], str(tmp_path / "log"))
    assert rec["distill_attempts"] == 2 and rec["distill_wall_seconds"] == 14.0
    assert not rec["distill_resumed_unrecorded"]


def test_frepo_cells_take_its_own_protocols_and_count_for_the_goals(tmp_path):
    q = ft.queue(["dm", "frepo"], [1], ["cpu", "mtt"])
    assert q == [("dm", 1, "cpu"), ("frepo", 1, "frepo_cpu"), ("dm", 1, "mtt"), ("frepo", 1, "frepo")]
    assert ft.SEEDS["frepo"] == 5 and ft.SEEDS["frepo_cpu"] == 3
    _write(tmp_path, _cell("dm", 1, "mtt", 0.712))
    _write(tmp_path, _cell("frepo", 1, "frepo", 0.765, budget={
        "model": "convnet_d3_w128_bn", "iterations": 500, "batch_real": 1024, "pool_size": 10}))
    _write(tmp_path, _cell("frepo", 1, "frepo_cpu", 0.99, seeds=3))   # reduced: no goal
    md = ft.markdown(ft.collect_cells(str(tmp_path)))
    rows = {tuple(r.split(" | ")[:2]): r for r in md.splitlines() if r.startswith("| ")}
    assert "500 it, convnet_d3_w128_bn, real batch 1024, pool 10" in rows[("| frepo", "frepo")]
    assert "75.6 / 86.2 / 89.6" in rows[("| frepo", "frepo")]
    assert "IPC 1: goal ≥ 80.0: best `frepo` row frepo 76.5 (missed by 3.5)" in md
    assert "frepo IPC 1: published 75.6, jaxdd `frepo` 76.5 (met)" in md
    # the preset resolves and its budget is what the table prints
    from jaxdd.configs import load_config
    cfg = load_config(os.path.join(ft.ROOT, ft.METHODS["frepo"][0]), 10, [])
    assert ft.budget_of(cfg, "frepo") == {"model": "convnet_d3_w128_bn", "iterations": 3000,
                                          "batch_real": 1024, "pool_size": 10, "lr_syn": 3e-3}
    assert ft.budget_text(ft.budget_of(cfg, "frepo")) == \
        "3000 it, convnet_d3_w128_bn, real batch 1024, pool 10, lr_syn 0.003"


def test_evaluation_is_resumable_and_its_attempts_are_summed(tmp_path, monkeypatch):
    """The cell's evaluation runs with --checkpoint-dir in the run directory; a second attempt
    (the first killed) sums both attempts' wall seconds and says so in the table."""
    load = {"load_max": 1.0, "load_mean": 1.0, "cores": 2, "under_load": False}
    cmds, rcs = [], iter([137, 0])

    def fake_run(cmd, log, cwd):
        cmds.append(cmd)
        return next(rcs), '{"accuracy_mean": 0.8, "accuracy_std": 0.01, "seconds": 30.0}\n', 40.0, load

    monkeypatch.setattr(ft, "_run", fake_run)
    run = tmp_path / "runs" / "dm-ipc1"
    rec = {"method": "dm", "ipc": 1, "preset": "p.py", "overrides": [], "budget": {},
           "distill_seconds": 1.0, "distill_wall_seconds": 1.0, "run_dir": str(run),
           "distill_load": {"under_load": False, "load_max": 1.0}}
    assert ft.evaluate("dm", 1, "mtt", rec, str(tmp_path), str(tmp_path / "log")) is None
    ck = cmds[0][cmds[0].index("--checkpoint-dir") + 1]
    assert ck == str(run / "eval-mtt-s5")
    (run / "eval-mtt-s5" / "checkpoints" / "300").mkdir(parents=True)   # the killed one's
    cell = ft.evaluate("dm", 1, "mtt", rec, str(tmp_path), str(tmp_path / "log"))
    assert cmds[1] == cmds[0]
    assert cell["eval_attempts"] == 2 and cell["eval_seconds"] == 80.0
    assert cell["eval_wall_seconds"] == 80.0 and not cell["eval_resumed_unrecorded"]
    assert "evaluated in 2 attempts: wall seconds summed" in ft.format_cell(cell)
    # RDED's KD students (`jaxdd relabel`) are checkpointed the same way
    rded = {**rec, "method": "rded", "run_dir": str(tmp_path / "runs" / "rded-ipc1")}
    rcs = iter([0])
    assert ft.evaluate("rded", 1, "cpu", rded, str(tmp_path), str(tmp_path / "log"))
    assert cmds[2][3:5] == ["relabel", rded["run_dir"]]
    assert cmds[2][cmds[2].index("--checkpoint-dir") + 1] == str(tmp_path / "runs" / "rded-ipc1"
                                                                  / "eval-cpu-s3")


def test_cells_from_an_earlier_preset_budget_are_marked():
    """A cell whose budget is not what its preset gives today says so and names the current
    budget; a cell at the preset's budget, a reduced cell and the random row carry no mark."""
    now = ft.preset_budget("dm", 10)
    assert now["iterations"] == 20000 and ft.preset_budget("random", 10) is None
    assert "earlier budget" not in ft.format_cell(_cell("dm", 10, "mtt", 0.8, budget=now))
    old = ft.format_cell(_cell("dm", 10, "mtt", 0.8, budget={**now, "iterations": 6000}))
    assert "6000 it" in old and f"the preset's earlier budget; now {ft.budget_text(now)}" in old
    assert "earlier budget" not in ft.format_cell(_cell("dm", 10, "mtt", 0.8,
                                                        overrides=["iterations=5"]))
    assert "earlier budget" not in ft.format_cell(_cell("random", 10, "mtt", 0.7,
                                                        budget={"selection": "random", "seed": 0}))
