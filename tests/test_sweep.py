"""Sweeps: grid expansion and its errors, the SQLite store, the local pool (a failing cell,
a killed worker), resume after a real SIGKILL and a Ctrl-C, and the phase-diagram figures
built from a small database."""

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from interp import cli
from interp.sweep_report import cell_table, phase_table, progress_table, sweep_sections
from interp.sweep import mechanism, run_cell, run_sweep
from models.sweep import Cell, SweepSpec, SweepStore, check_database, results

REPO = Path(__file__).resolve().parents[1]
# Tiny cells: a 16-wide model, a few steps, one evaluation.
TINY = ["d_model=16", "d_head=8", "d_mlp=32", "max_steps=8", "warmup_steps=1", "batch_size=32", "eval_every=8", "early_stop=False"]


def tiny_spec(*grid: str, steps: int = 8) -> SweepSpec:
    return SweepSpec.parse(list(grid), [*TINY[:3], f"max_steps={steps}", *TINY[4:6], f"eval_every={steps}", TINY[7]])


def rows(db: Path) -> dict[int, dict]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        return {r["id"]: dict(r) for r in con.execute("SELECT * FROM cells")}
    finally:
        con.close()


# ---- the grid ---------------------------------------------------------------------------
def test_grid_expands_as_a_product_with_the_first_axis_outermost():
    spec = SweepSpec.parse(["seeds=0,1", "layers=2,3", "gamma=0.3,1"], ["lr=1e-3", "d_model=32", "d_head=16"])
    cells = spec.cells()
    assert spec.grid == {"seed": (0, 1), "n_layers": (2, 3), "gamma": (0.3, 1.0)}  # aliases resolved, 1 -> 1.0
    assert [c.id for c in cells] == list(range(8))
    assert [c.params for c in cells[:3]] == [{"seed": 0, "n_layers": 2, "gamma": 0.3}, {"seed": 0, "n_layers": 2, "gamma": 1.0}, {"seed": 0, "n_layers": 3, "gamma": 0.3}]
    last = cells[-1].config
    assert (last.seed, last.n_layers, last.gamma, last.lr) == (1, 3, 1.0, 1e-3)
    assert last.arch == {"d_model": 32, "d_head": 16}  # architecture names go to TrainConfig.arch
    assert last.max_steps == 3000 and last.weight_decay == 1.5  # the rest: TrainConfig defaults


def test_a_toml_file_and_flags_give_the_same_spec(tmp_path):
    toml = tmp_path / "grid.toml"
    toml.write_text('[grid]\ngamma = [0.3, 0.8]\nn_layers = [2, 3]\n\n[fixed]\nlr = 0.001\nd_model = 32\nd_head = 16\n')
    from_file = SweepSpec.from_toml(toml)
    assert from_file == SweepSpec.parse(["gamma=0.3,0.8", "n_layers=2,3"], ["lr=1e-3", "d_model=32", "d_head=16"])
    # A flag replaces the file's entry, in place; a fixed setting can become an axis.
    over = SweepSpec.parse(["gamma=0.5,0.6,0.7", "lr=1e-3,3e-4"], ["n_layers=4"], base=from_file)
    assert list(over.grid) == ["gamma", "lr"] and over.grid["gamma"] == (0.5, 0.6, 0.7)
    assert over.fixed == {"n_layers": 4, "d_model": 32, "d_head": 16}


def test_the_old_recipe_grid():
    spec = SweepSpec.from_toml("old_recipe")
    cells = spec.cells()
    assert list(spec.grid)[0] == "seed"  # seeds outermost: a half-done sweep is a whole diagram
    assert set(spec.grid["gamma"]) >= {0.3, 0.8} and len(spec.grid["n_layers"]) >= 2
    assert len(cells) == 42  # sized to about an hour on 2 cores
    assert spec.fixed == {"lr": 3e-4, "weight_decay": 0.1, "decay_norms": True, "max_steps": 1500, "precision": "fp32"}


def test_the_phase_and_lr_wd_grids_on_the_shipped_recipe():
    from models.sweep import config_json
    from models.train import TrainConfig

    from models.sweep import DEFAULT_SPEC

    phase = SweepSpec.from_toml("phase")
    assert DEFAULT_SPEC == "phase"  # the default phase diagram
    assert list(phase.grid) == ["seed", "n_layers", "gamma"]  # seeds outermost: a partial run holds whole diagrams
    assert len(phase.grid["seed"]) == 5 and phase.grid["n_layers"] == (2, 3, 4)
    assert phase.grid["gamma"] == pytest.approx([0.1 * i for i in range(1, 11)])
    assert phase.fixed == {}  # the recipe is TrainConfig's defaults
    cells = phase.cells()
    assert len(cells) == 150 and config_json(cells[-1].config) == config_json(TrainConfig(seed=14, n_layers=4, gamma=1.0))

    lr_wd = SweepSpec.from_toml("lr_wd")
    assert list(lr_wd.grid)[0] == "seed" and len(lr_wd.grid["seed"]) == 2 and lr_wd.fixed == {"n_layers": 3}
    assert lr_wd.grid["gamma"] == (0.3, 0.8)  # one on each side of the boundary
    assert lr_wd.grid["lr"] == (3e-4, 1e-3, 3e-3) and lr_wd.grid["weight_decay"] == (0.3, 1.0, 1.5, 3.0)
    assert len(lr_wd.cells()) == 48


SHIPPED_DB = Path(__file__).parents[1] / "models" / "sweeps" / "old_recipe.db"


@pytest.mark.parametrize("db", sorted(SHIPPED_DB.parent.glob("*.db")), ids=lambda p: p.name)
def test_every_shipped_database_holds_exactly_its_spec(db):
    """Each models/sweeps/NAME.db holds the cells of NAME.toml, each with its full recipe."""
    check_database(db, db.with_suffix(".toml"))


def test_a_database_that_is_not_its_spec_is_refused_with_the_difference(tmp_path):
    import shutil

    other = SweepSpec.parse(["seed=0,1,2", "n_layers=2,3", "gamma=0.2,0.3"], ["lr=3e-4", "weight_decay=0.1", "decay_norms=True", "max_steps=1500"])
    with pytest.raises(ValueError, match=r"does not hold the sweep 12 cells: .*grid gamma: \[0.2, 0.3, 0.4"):
        check_database(SHIPPED_DB, other)
    db = tmp_path / "copy.db"
    shutil.copy(SHIPPED_DB, db)
    con = sqlite3.connect(db)
    with con:  # one cell trained with another lr
        config = json.loads(con.execute("SELECT config FROM cells WHERE id=5").fetchone()[0])
        config["recipe"]["lr"] = 1e-3
        con.execute("UPDATE cells SET config=? WHERE id=5", (json.dumps(config),))
    con.close()
    with pytest.raises(ValueError, match=r"cell 5: lr 0.001 -> 0.0003"):
        check_database(db, "old_recipe")
    con = sqlite3.connect(db)
    with con:
        con.execute("DELETE FROM cells WHERE id=41")
    con.close()
    with pytest.raises(ValueError, match="it holds 41 cells, the spec has 42"):
        check_database(db, "old_recipe")




def test_the_old_recipe_phase_diagram_holds_its_grid_and_shows_the_papers_result():
    """models/sweeps/old_recipe.db was made by `anchor-interp sweep` on old_recipe.toml (same grid,
    every cell done) and shows, in seed means at depth 2: symmetric at the smallest gamma
    that fits, inferential at the largest."""
    meta, rows = results(SHIPPED_DB)
    assert SweepSpec.from_dict(meta["spec"]) == SweepSpec.from_toml("old_recipe")
    assert {r["status"] for r in rows} == {"done"} and len(rows) == len(SweepSpec.from_toml("old_recipe").cells())
    cells = cell_table(meta, rows)
    assert cells["route"].isna().all() and cells["composition_score"].isna().all()  # made before mechanism recording: None
    phase = phase_table(cells, []).query("n_layers == 2").sort_values("gamma")
    fitted = phase[phase["seen_test_keys"] >= 0.9]
    smallest, largest = fitted.iloc[0], fitted.iloc[-1]
    assert smallest["gamma"] < largest["gamma"]
    assert smallest["symmetric_test_keys"] > smallest["inferential_test_keys"], smallest.to_dict()
    assert largest["inferential_test_keys"] > largest["symmetric_test_keys"], largest.to_dict()


PHASE_DB = REPO / "models" / "sweeps" / "phase.db"


def test_the_default_phase_database_holds_its_grid_with_mechanism_and_the_papers_result():
    """models/sweeps/phase.db (README "Phase diagrams"): every cell of phase.toml done on the
    shipped recipe, each with its mechanism. At every depth the seeds' majority is symmetric
    at the large inits (gamma <= 0.4) and inferential at gamma 0.6-0.7; the smallest init
    (gamma 1.0) is symmetric again, in the position-6 form. Clean phases (>= 80% of seeds at
    >= 0.9 on (4,3)) and the mechanism agreement as the README reports them."""
    from interp.sweep_report import agreement, cell_table

    check_database(PHASE_DB, "phase")
    meta, rows = results(PHASE_DB)
    assert len(rows) == 150 and {r["status"] for r in rows} == {"done"}
    assert all({"route", "route_by_position", "composition_score", "wq_groups", "mean_stable_rank"} <= set(r["metrics"]) for r in rows)

    def runs(depth, gamma):
        return [r for r in rows if r["n_layers"] == depth and r["gamma"] == gamma]

    def share(depth, gamma, label, at_least=0.0):
        cell = runs(depth, gamma)
        return sum(r["label"] == label and r["metrics"][f"{label}_test_keys"] >= at_least for r in cell) / len(cell)

    for depth in (2, 3, 4):
        assert all(share(depth, g, "symmetric") > 0.5 for g in (0.1, 0.2, 0.3, 0.4)), depth
        assert all(share(depth, g, "inferential") > 0.5 for g in (0.6, 0.7)), depth
        assert share(depth, 1.0, "symmetric") > 0.5
        assert all(r["metrics"]["symmetric_by_position"][6] < 0.1 for r in runs(depth, 1.0))  # position 6 composes
    clean_phases = {depth: {label: [g for g in meta["spec"]["grid"]["gamma"] if share(depth, g, label, 0.9) >= 0.8]
                            for label in ("symmetric", "inferential")} for depth in (2, 3, 4)}
    assert clean_phases == {2: {"symmetric": [0.1], "inferential": [0.8]},
                            3: {"symmetric": [0.3, 0.4], "inferential": []},  # inferential 5/5 at 0.6-0.7, 3 of them >= 0.9
                            4: {"symmetric": [0.4], "inferential": [0.5, 0.6, 0.7]}}
    cells = cell_table(meta, rows)
    (agree, judged), (composed, scored) = agreement(cells), agreement(cells, "composition")
    # The composition test meets the 90%; the route rule (built on 2-layer models) does
    # not at depth 4, where composing models also read both anchors at the answer position.
    assert (composed, scored) == (72, 73) and (agree, judged) == (62, 73)


LR_WD_DB = REPO / "models" / "sweeps" / "lr_wd.db"


def test_the_shipped_lr_wd_map_holds_its_grid_with_mechanism_and_the_readme_prints_it():
    """models/sweeps/lr_wd.db (README "The lr x weight-decay map"): all 48 runs of lr_wd.toml
    done with their mechanism. At lr 3e-3 gamma 0.8 takes the position-6 mode every time; at
    lr 3e-4 it composes every time; at the shipped lr 1e-3 gamma picks the label in 15 of
    16; weight decay 3.0 makes gamma 0.3 a clean lookup at every lr. The README's map is the
    report's, verbatim."""
    from interp.sweep_report import phase_markdown

    check_database(LR_WD_DB, "lr_wd")
    _, rows = results(LR_WD_DB)
    assert len(rows) == 48 and {r["status"] for r in rows} == {"done"}
    assert all({"route", "route_by_position", "composition_score"} <= set(r["metrics"]) for r in rows)

    def runs(gamma, lr=None, wd=None):
        return [r for r in rows if r["gamma"] == gamma and lr in (None, r["lr"]) and wd in (None, r["params"]["weight_decay"])]

    assert all(r["label"] == "symmetric" and r["metrics"]["symmetric_by_position"][6] < 0.3 for r in runs(0.8, lr=3e-3))
    assert all(r["label"] == "inferential" for r in runs(0.8, lr=3e-4))
    expected = [r["label"] == ("symmetric" if r["gamma"] == 0.3 else "inferential") for g in (0.3, 0.8) for r in runs(g, lr=1e-3)]
    assert (sum(expected), len(expected)) == (15, 16)
    assert all(r["label"] == "symmetric" and r["symmetric_test_keys"] >= 0.95 for r in runs(0.3, wd=3.0))

    begin = "<!-- generated by: anchor-interp report models/sweeps/lr_wd.db --no-models --markdown (its last two tables) -->\n"
    readme = (REPO / "README.md").read_text()
    block = readme.split(begin, 1)[1].split("<!-- end of generated map -->", 1)[0].strip()
    assert block.startswith("gamma 0.3, 3 layers") and phase_markdown(LR_WD_DB).endswith(block), "rerun the command above"


@pytest.mark.parametrize(
    "grid, fixed, message",
    [
        ([], ["gamma=0.5"], "empty grid: give at least one axis"),
        (["gamma="], [], "empty grid: axis gamma has no values"),
        (["gamma=0.3,0.5,0.3"], [], "axis gamma repeats 0.3"),
        (["gamma=0.3,0.5"], ["gamma=0.8"], "gamma given to --grid and --set"),
        (["layers=2", "n_layers=3"], [], "n_layers given twice to --grid"),
        (["gamma=0.3", "warmup_steps=200"], ["max_steps=100"], "invalid training settings: warmup_steps=200"),
        (["gamma=0.3,7"], [], "gamma must be a number in [0.05, 3.0]"),
        (["max_steps=10.5"], [], "max_steps must be int"),
        (["gama=0.3"], [], "unknown parameter 'gama' (did you mean gamma?); valid: the TrainConfig fields gamma, n_layers"),
        (["n_ctx=5"], [], "'n_ctx' cannot be swept"),
        (["gamma"], [], "--grid takes NAME=VALUE"),
    ],
)
def test_bad_grids_are_refused_with_the_reason(grid, fixed, message):
    with pytest.raises(ValueError) as err:
        SweepSpec.parse(grid, fixed)
    assert message in str(err.value)


def test_a_toml_file_with_unknown_tables_is_refused(tmp_path):
    toml = tmp_path / "bad.toml"
    toml.write_text("[grid]\ngamma = [0.5]\n[fixd]\nlr = 0.001\n")
    with pytest.raises(ValueError, match=r"unknown tables/keys \['fixd'\]"):
        SweepSpec.from_toml(toml)
    with pytest.raises(FileNotFoundError, match="shipped: .*phase"):
        SweepSpec.from_toml(tmp_path / "missing.toml")


# ---- running ----------------------------------------------------------------------------
def test_local_sweep_runs_every_cell_once_in_workers_and_resume_does_nothing(tmp_path):
    import models
    import probes

    db = tmp_path / "s.db"
    spec = tiny_spec("gamma=0.3,0.8", "seed=0,1")
    summary = run_sweep(spec, db, workers=2, threads=1, keep_checkpoints=True, progress=False)
    assert (summary.total, summary.done, summary.failed, summary.ran) == (4, 4, 0, 4)
    got = rows(db)
    assert sorted(got) == [0, 1, 2, 3] and {r["status"] for r in got.values()} == {"done"}
    assert {r["attempts"] for r in got.values()} == {1} and {r["threads"] for r in got.values()} == {1}
    assert all(int(r["worker"].rsplit(":", 1)[1]) != os.getpid() for r in got.values())  # ran in the pool
    metrics = json.loads(got[3]["metrics"])
    assert metrics["label"] == got[3]["label"] and 0 <= metrics["seen_test_keys"] <= 1 and len(metrics["inferential_by_position"]) == 7
    assert got[3]["steps"] == 8 and Path(got[3]["checkpoint"]) == tmp_path / "s.checkpoints" / "cell-3"
    kept = models.load(got[3]["checkpoint"])  # the kept model is the one measured, behaviour and mechanism
    assert {**probes.classify(kept).to_dict(), **mechanism(kept)} == metrics
    assert metrics["route"] in ("inferential", "symmetric", "mixed", "other") and len(metrics["route_by_position"]) == 7
    assert metrics["route_by_position"][6] is None  # the second anchor is the last token there: no route
    assert metrics["wq_neurons"] == 8 and 1 <= metrics["wq_groups"] <= 8 and metrics["mean_stable_rank"] >= 1
    assert set(metrics) >= {"composition_site", "composition_score"}

    # The same cell run here, on one thread, gives the same result: workers change nothing.
    threads = torch.get_num_threads()
    try:
        here = run_cell(spec.cells()[3], threads=1)
    finally:
        torch.set_num_threads(threads)
    assert here["metrics"] == metrics
    def course(history):  # the live evaluations but their wall-clock times
        return [{k: v for k, v in row.items() if k != "seconds"} for row in history]

    stored, kept_card = json.loads(got[3]["history"]), json.loads((tmp_path / "s.checkpoints" / "cell-3" / "card.json").read_text())
    assert stored == kept_card["history"] and course(stored) == course(here["history"]) and stored[-1]["step"] == 8

    again = run_sweep(None, db, resume=True, progress=False)
    assert again.ran == 0 and again.done == 4
    assert rows(db) == got  # nothing rerun, nothing rewritten


def test_a_database_made_before_the_history_column_reads_as_it_is_and_gets_it_on_a_write(tmp_path, monkeypatch):
    import models.sweep

    db = tmp_path / "old.db"
    spec = tiny_spec("seed=0,1")
    old_schema = re.sub(r"checkpoint TEXT,(.*)\n\s*history TEXT[^\n]*", r"checkpoint TEXT \1", models.sweep.SCHEMA)  # before 2026-12-01
    assert "history" not in old_schema
    monkeypatch.setattr(models.sweep, "SCHEMA", old_schema)
    SweepStore.create(db, spec, spec.cells()).close()
    monkeypatch.undo()
    before = db.read_bytes()
    assert [r["history"] for r in results(db)[1]] == [None, None]
    assert db.read_bytes() == before  # reading changed nothing
    store = SweepStore(db)
    try:
        outcome = run_cell(spec.cells()[0], threads=1)
        store.record_done(0, {**outcome, "worker": "test"})
        store.record_history(1, [{"step": 8}])  # cell 1 is not done: left alone
    finally:
        store.close()
    got = {r["id"]: r for r in results(db)[1]}
    assert got[0]["history"] == outcome["history"] and got[0]["history"][-1]["step"] == 8 and got[1]["history"] is None


def flaky_cell(cell: Cell, threads: int, checkpoint: str | None) -> dict:
    """A cell function for the pool: gamma 0.5 raises, gamma 0.7 kills its own worker."""
    if cell.config.gamma == 0.5:
        raise ValueError("this cell is broken on purpose")
    if cell.config.gamma == 0.7:
        os.kill(os.getpid(), signal.SIGKILL)
    return run_cell(cell, threads, checkpoint)


def test_a_failing_cell_and_a_killed_worker_are_recorded_and_the_sweep_goes_on(tmp_path):
    db = tmp_path / "f.db"
    summary = run_sweep(tiny_spec("gamma=0.3,0.5,0.7,0.8,0.9"), db, workers=2, threads=1, progress=False, cell_fn=flaky_cell)
    assert (summary.done, summary.failed) == (3, 2)
    got = rows(db)
    assert [got[i]["status"] for i in range(5)] == ["done", "failed", "failed", "done", "done"]
    assert "ValueError: this cell is broken on purpose" in got[1]["error"]
    assert "worker process died" in got[2]["error"]
    assert got[1]["metrics"] is None and got[0]["error"] is None

    # Resume retries the failed cells (here with a function that works) and only them.
    again = run_sweep(None, db, resume=True, workers=2, threads=1, progress=False)
    assert (again.ran, again.done, again.failed) == (2, 5, 0)
    final = rows(db)
    assert {i: r["attempts"] for i, r in final.items()} == {0: 1, 1: 2, 2: 2, 3: 1, 4: 1}
    assert all(final[i] == got[i] for i in (0, 3, 4))


def _wait_for(db: Path, done: int, proc: subprocess.Popen, limit: float = 240) -> dict[int, dict]:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if db.exists():
            got = rows(db)
            if sum(r["status"] == "done" for r in got.values()) >= done:
                return got
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"fewer than {done} cells finished in {limit} s")


def _gone(pid: int, limit: float = 30) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


def test_an_interrupted_sweep_resumes_without_redoing_or_losing_a_cell(tmp_path):
    db = tmp_path / "k.db"
    grid = ["--grid", "gamma=0.4,0.8", "--grid", "seed=0,1,2,3,4"]
    fixed = [a for s in [*TINY[:3], "max_steps=200", *TINY[4:6], "eval_every=200", TINY[7]] for a in ("--set", s)]
    args = ["sweep", "--db", str(db), *grid, *fixed, "--workers", "2", "--threads", "1", "--quiet"]
    # The child gets Ctrl-C's default action even when this test runs as a background job,
    # which inherits SIGINT ignored (and a sweep started that way rightly ignores Ctrl-C).
    start = lambda extra=(): subprocess.Popen([sys.executable, "-m", "interp.cli", *args, *extra], cwd=REPO,  # noqa: E731
                                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    # 1. Ctrl-C: the sweep stops its workers, puts running cells back, says how to resume.
    proc = start()
    _wait_for(db, 1, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "--resume" in err, err
    after_ctrl_c = rows(db)
    assert "running" not in {r["status"] for r in after_ctrl_c.values()}

    # 2. SIGKILL mid-run: nothing can clean up; the workers die with the sweep.
    proc = start(["--resume"])
    before = {i for i, r in after_ctrl_c.items() if r["status"] == "done"}
    got = _wait_for(db, len(before) + 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done_at_kill = {i: r for i, r in rows(db).items() if r["status"] == "done"}
    workers = {int(r["worker"].rsplit(":", 1)[1]) for r in done_at_kill.values()}
    assert all(_gone(pid) for pid in workers), "pool workers outlived the killed sweep"
    assert len(done_at_kill) < 10, "the sweep finished before it was killed: make its cells longer"

    # 3. Resume: only unfinished cells run, finished ones are untouched, each cell done once.
    assert cli.main(["sweep", "--db", str(db), "--resume", "--workers", "2", "--threads", "1", "--quiet"]) == 0
    final = rows(db)
    assert sorted(final) == list(range(10)) and {r["status"] for r in final.values()} == {"done"}
    assert all(final[i] == r for i, r in done_at_kill.items())
    assert all(final[i]["attempts"] == 1 for i in before)
    con = sqlite3.connect(db)
    assert con.execute("SELECT value FROM meta WHERE key='runner'").fetchone() is None  # released
    con.close()


# ---- bad input on the command line ------------------------------------------------------
def test_cli_refuses_bad_input_in_one_line(tmp_path, capsys, monkeypatch):
    db = tmp_path / "c.db"
    assert cli.main(["sweep", "--db", str(db), "--grid", "gamma=0.3,0.8", *[a for s in TINY for a in ("--set", s)], "--quiet"]) == 0
    capsys.readouterr()

    def error(*argv: str) -> str:
        assert cli.main(["sweep", "--db", str(db), *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        return err

    assert "unknown parameter 'bogus'" in error("--grid", "bogus=1,2")
    assert "already exists: pass --resume" in error("--grid", "gamma=0.3,0.8", *[a for s in TINY for a in ("--set", s)])
    why = error("--resume", "--grid", "gamma=0.3,0.5", *[a for s in TINY for a in ("--set", s)])
    assert "holds a different sweep (grid gamma: [0.3, 0.8] in the database, [0.3, 0.5] now)" in why
    assert "max_steps: 8 in the database, unset now" in error("--resume", "--grid", "gamma=0.3,0.8")
    not_ours = tmp_path / "other.db"
    sqlite3.connect(not_ours).execute("CREATE TABLE t (x)").connection.close()
    assert "is not a sweep database" in cli_error(capsys, "--db", str(not_ours), "--resume")
    assert "no sweep database at" in cli_error(capsys, "--db", str(tmp_path / "none.db"), "--resume")

    assert cli.main(["sweep", "--spec", "old_recipe", "--db", str(tmp_path / "d.db"), "--dry-run"]) == 0
    assert "42 cells: seed [0, 1, 2] x n_layers [2, 3]" in capsys.readouterr().out and not (tmp_path / "d.db").exists()

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    assert "pip install 'anchor-interp[ray]'" in cli_error(capsys, "--db", str(tmp_path / "r.db"), "--executor", "ray", "--grid", "gamma=0.5", *[a for s in TINY for a in ("--set", s)])
    assert not (tmp_path / "r.db").exists()  # refused before anything was written


def test_a_sweep_whose_cells_fail_exits_non_zero_in_one_line(tmp_path, capsys):
    db = tmp_path / "f.db"
    (tmp_path / "f.checkpoints").write_text("a file where the checkpoints folder goes: every cell fails to save")
    code = cli.main(["sweep", "--db", str(db), "--grid", "gamma=0.5,0.8", *[a for s in TINY for a in ("--set", s)],
                     "--keep-checkpoints", "--workers", "2", "--threads", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 1, err
    # Two workers: either cell may fail first.
    assert err.count("\n") == 1 and re.match(r"anchor-interp sweep: error: 2 of 2 cells failed \(first: cell [01]: ", err), err
    assert f"retry them with: anchor-interp sweep --db {db} --resume" in err
    assert {r["status"] for r in rows(db).values()} == {"failed"}


def test_dry_run_of_a_new_database_describes_the_default_spec(tmp_path, capsys):
    db = tmp_path / "new.db"
    assert cli.main(["sweep", "--db", str(db), "--dry-run"]) == 0  # --spec defaults to the shipped phase.toml
    assert capsys.readouterr().out.startswith("150 cells: seed [10, 11, 12, 13, 14] x n_layers [2, 3, 4]") and not db.exists()
    assert cli.main(["sweep", "--db", str(db), "--dry-run", "--set", "max_steps=1000"]) == 0  # --set over the default
    assert "fixed max_steps=1000" in capsys.readouterr().out and not db.exists()


def cli_error(capsys, *argv: str) -> str:
    assert cli.main(["sweep", *argv]) == 2
    return capsys.readouterr().err


def test_resume_refuses_a_database_made_with_other_training_defaults(tmp_path):
    import dataclasses

    db = tmp_path / "old.db"
    spec = tiny_spec("gamma=0.3,0.8")
    # As if TrainConfig's default lr had been 3e-4 when this sweep started.
    old_cells = [dataclasses.replace(c, config=dataclasses.replace(c.config, lr=3e-4)) for c in spec.cells()]
    SweepStore.create(db, spec, old_cells).close()
    with pytest.raises(ValueError, match=r"the training defaults changed since it started \(cell 0: lr 0.0003 -> 0.001\)"):
        run_sweep(spec, db, resume=True, progress=False)
    assert [c.config.lr for c in SweepStore(db).cells()] == [3e-4, 3e-4]  # resuming without a grid keeps its own


def test_a_second_live_sweep_on_the_same_database_is_refused(tmp_path):
    db = tmp_path / "two.db"
    spec = tiny_spec("gamma=0.5")
    store = SweepStore.create(db, spec, spec.cells())
    store.set_meta("runner", {"host": socket.gethostname(), "pid": os.getppid(), "since": "now"})  # a live process
    store.close()
    with pytest.raises(ValueError, match=f"being run by process {os.getppid()}"):
        run_sweep(None, db, resume=True, progress=False)


# ---- figures ----------------------------------------------------------------------------
def fake_outcome(seen: float, inferential: float, symmetric: float, **mechanism) -> dict:
    from probes.solution import label_of

    metrics = dict(label=label_of(seen, inferential, symmetric), seen_test_keys=seen, inferential_test_keys=inferential, symmetric_test_keys=symmetric,
                   inferential_by_position=[inferential] * 7, symmetric_by_position=[symmetric] * 7, **mechanism)
    return dict(metrics=metrics, steps=1, stopped_early=False, train_seconds=1.0, wall_seconds=2.0, threads=1, worker="h:1", versions={}, checkpoint=None)


def test_phase_diagram_from_a_small_database(tmp_path):
    """gamma 0.3 is unfit, 0.5 symmetric, 0.8 inferential; lr 1e-3 fits worse than 3e-4
    at gamma 0.8 only, so that cell shows lr 3e-4; depth 3 at gamma 0.8 is not run yet."""
    db = tmp_path / "fig.db"
    spec = SweepSpec.parse(["gamma=0.3,0.5,0.8", "n_layers=2,3", "seed=0,1", "lr=3e-4,1e-3"], ["d_model=64", "d_head=32"])
    store = SweepStore.create(db, spec, spec.cells())
    for cell in spec.cells():
        p = cell.params
        if p["gamma"] == 0.8 and p["n_layers"] == 3:
            continue
        if p["gamma"] == 0.3:
            outcome = fake_outcome(0.2, 0.0, 0.0)
        elif p["gamma"] == 0.5:
            outcome = fake_outcome(1.0, 0.1, 0.8 + 0.1 * p["seed"])
        else:
            outcome = fake_outcome(0.95 if p["lr"] == 1e-3 else 1.0, 0.9 - 0.2 * p["seed"], 0.05)
        store.record_done(cell.id, outcome)
    store.record_failed(0, "Traceback...\nRuntimeError: out of memory")
    store.close()

    from models.sweep import results

    meta, all_rows = results(db)
    cells = cell_table(meta, all_rows)
    assert len(cells) == 19  # 24 cells, 4 not run, 1 failed
    phase = phase_table(cells, []).set_index(["gamma", "n_layers"])
    assert phase.loc[(0.3, 2), "label"] == "unfit"
    assert phase.loc[(0.5, 3), "label"] == "symmetric" and phase.loc[(0.5, 3), "symmetric_test_keys"] == pytest.approx(0.85)
    assert phase.loc[(0.8, 2), "lr"] == 3e-4 and phase.loc[(0.8, 2), "inferential_test_keys"] == pytest.approx(0.8)
    assert phase.loc[(0.8, 2), "seed_labels"] == "inferential 2" and (0.8, 3) not in phase.index
    assert phase.loc[(0.5, 2), "init_std"] == pytest.approx(64 ** -0.5)

    sections = sweep_sections(db)
    titles = [t for t, _ in sections]
    assert titles == ["Sweep", "Phase diagram", "Accuracy vs gamma"]
    status = sections[0][1].data[0].cells.values
    assert "19 done, 1 failed, 0 running, 4 pending of 24" in status[1] and any("out of memory" in v for v in status[1])
    assert "not recorded in this database" in status[1]  # no route in these outcomes: no mechanism section
    diagram = sections[1][1]
    heatmaps = [t for t in diagram.data if t.type == "heatmap"]
    sym, sym_unfit, inf, inf_unfit, label = heatmaps
    assert list(sym.x) == ["0.3", "0.5", "0.8"] and list(sym.y) == ["2", "3"]
    assert sym.z[1][1] == pytest.approx(0.85) and inf.z[0][2] == pytest.approx(0.8)
    assert sym_unfit.z[0][0] == 1 and sym_unfit.z[0][1] != sym_unfit.z[0][1]  # shaded where unfit only (NaN elsewhere)
    # cell 0 (gamma 0.3, depth 2) failed, so that place is not finished: '*'; (0.8, 3) never ran
    assert list(label.text[0]) == ["unfit*", "sym", "inf"] and label.text[1][2] == "pending"
    assert "pending (4 cells, none finished)" in label.customdata[1][2]
    assert "σ 0.29" in diagram.layout.xaxis.ticktext[0]  # 64^-0.3
    curves = sections[2][1]
    seed_dots = [t for t in curves.data if t.mode == "markers" and t.name.startswith("(4,3) inferential")]
    # depth 2 at the chosen lr: gamma 0.3 (lr 3e-4, seed 0 failed) one seed, then two each
    assert sorted(seed_dots[0].y) == pytest.approx([0.0, 0.1, 0.1, 0.7, 0.9])


def test_other_swept_axes_get_their_own_diagram(tmp_path):
    db = tmp_path / "wd.db"
    spec = SweepSpec.parse(["gamma=0.5,0.8", "weight_decay=0,0.1"], ["d_model=64", "d_head=32"])
    store = SweepStore.create(db, spec, spec.cells())
    for cell in spec.cells():
        store.record_done(cell.id, fake_outcome(1.0, cell.params["weight_decay"] * 5, 0.3))
    store.close()
    titles = [t for t, _ in sweep_sections(db)]
    assert titles == ["Sweep", "Phase diagram (weight_decay=0.0)", "Accuracy vs gamma (weight_decay=0.0)",
                      "Phase diagram (weight_decay=0.1)", "Accuracy vs gamma (weight_decay=0.1)"]


def _claim_at(db: Path, start_at: float, hold: float, outcome) -> None:
    """One contender of the race: open the store, wait for the common start, claim."""
    store = SweepStore(db)
    try:
        while time.time() < start_at:  # spin, not sleep: every contender is on a core at the start
            pass
        store.claim()
        outcome.put("won")
        time.sleep(hold)  # stay alive: a dead winner's claim may rightly be taken over
    except ValueError as err:
        outcome.put(f"lost: {err}")
    finally:
        store.close()


@pytest.mark.parametrize("contenders", [2, 4])
def test_processes_claiming_at_once_exactly_one_wins(tmp_path, contenders):
    import multiprocessing

    db = tmp_path / "race.db"
    spec = tiny_spec("gamma=0.5")
    SweepStore.create(db, spec, spec.cells()).close()
    context = multiprocessing.get_context("fork")  # the contenders touch only sqlite
    for trial in range(10):
        outcome = context.Queue()
        start_at = time.time() + 0.2
        procs = [context.Process(target=_claim_at, args=(db, start_at, 0.3, outcome)) for _ in range(contenders)]
        for p in procs:
            p.start()
        got = sorted(outcome.get(timeout=30) for _ in procs)
        for p in procs:
            p.join(timeout=30)
        assert got[-1] == "won" and all(g.startswith("lost: ") and "is being run by process" in g for g in got[:-1]), (trial, got)
        store = SweepStore(db)
        store.release()
        store.close()


def test_behaviour_and_mechanism_side_by_side_with_their_agreement(tmp_path):
    """gamma 0.8: three clean inferential seeds, one of them routed symmetric; gamma 0.3:
    clean symmetric seeds routed symmetric, one seed pending; depth 3 never ran."""
    db = tmp_path / "mech.db"
    spec = SweepSpec.parse(["seed=0,1,2", "n_layers=2,3", "gamma=0.3,0.8"], ["d_model=64", "d_head=32"])
    store = SweepStore.create(db, spec, spec.cells())
    for cell in spec.cells():
        p = cell.params
        if p["n_layers"] == 3 or (p["gamma"] == 0.3 and p["seed"] == 2):
            continue
        if p["gamma"] == 0.8:
            outcome = fake_outcome(1.0, 0.97, 0.0, route="symmetric" if p["seed"] == 2 else "inferential", composition_score=0.9)
        else:
            outcome = fake_outcome(1.0, 0.0, 1.0, route="symmetric", composition_score=0.01)
        store.record_done(cell.id, outcome)
    store.close()

    meta, all_rows = results(db)
    cells = cell_table(meta, all_rows)
    assert cells["judged"].sum() == 5 and cells["agrees"].sum() == 4
    phase = phase_table(cells, [], progress_table(meta, all_rows)).set_index(["gamma", "n_layers"])
    assert phase.loc[(0.8, 2), "route"] == "inferential" and phase.loc[(0.8, 2), "routes"] == "inferential 2, symmetric 1"
    assert (phase.loc[(0.8, 2), "n_agree"], phase.loc[(0.8, 2), "n_clean"]) == (2, 3)
    assert (phase.loc[(0.3, 2), "n_done"], phase.loc[(0.3, 2), "n_cells"]) == (2, 3)
    assert phase.loc[(0.3, 3), "n_done"] == 0 and phase.loc[(0.3, 3), "label"] != phase.loc[(0.3, 3), "label"]  # pending: NaN

    titles = [t for t, _ in sweep_sections(db)]
    assert titles == ["Sweep", "Phase diagram", "Behaviour and mechanism", "Accuracy vs gamma"]
    figure = dict(sweep_sections(db))["Behaviour and mechanism"]
    behaviour, route, share = figure.data
    assert "route = behavioural label in 4 of 5 clean runs (80%)" in figure.layout.title.text
    assert [list(r) for r in behaviour.text] == [["sym*", "inf"], ["pending", "pending"]]
    assert [list(r) for r in route.text] == [["sym*", "inf"], ["pending", "pending"]]
    assert list(share.text[0]) == ["2/2", "2/3"] and share.z[0][1] == pytest.approx(2 / 3)
    assert all((f.layout.width or 0) <= 1200 for _, f in sweep_sections(db))  # fits a 1280 px window (a table fills its column)

    from interp.sweep_report import phase_markdown

    table = phase_markdown(db)  # the README's form of the same database
    assert "| 2 | 0.8 (0.036) | 3 | inferential 3 | inferential 3 | inferential 2, symmetric 1 | 3 of 3 | 0.97 0.97" in table
    assert "| 3 | 0.3 (0.29) | 0 (+3 pending) | pending |" in table
    # A clean phase needs >= 80% of the cell's seeds, pending ones counted: 2 clean of 3 is not one.
    assert "- n_layers 2 (5 of 6 runs done): clean phases (>= 80% of a cell's seeds give the solution at >= 0.9): symmetric: none; inferential at gamma 0.8 (3/3)." in table
    assert "- n_layers 3 (0 of 6 runs done)" in table
    assert "route rule names the behavioural label in 4 of 5 (80%); the composition test agrees in 5 of 5." in table


def test_report_on_a_sweep_with_a_d_model_axis(tmp_path, capsys):
    """d_model swept is a facet AND the column every row resolves: once only."""
    db = tmp_path / "width.db"
    spec = SweepSpec.parse(["d_model=32,64", "gamma=0.5,0.8"], ["d_head=16"])
    store = SweepStore.create(db, spec, spec.cells())
    for cell in spec.cells()[:3]:  # the last cell pending
        store.record_done(cell.id, fake_outcome(1.0, 0.9, 0.0, route="inferential"))
    store.close()
    titles = [t for t, _ in sweep_sections(db)]
    assert titles == ["Sweep", *(f"{t} (d_model={d})" for d in (32, 64) for t in ("Phase diagram", "Behaviour and mechanism", "Accuracy vs gamma"))]
    phase = phase_table(cell_table(*results(db)), ["d_model"], progress_table(*results(db)))
    assert phase["init_std"].tolist() == pytest.approx([32 ** -0.5, 32 ** -0.8, 64 ** -0.5, 64 ** -0.8])
    out = tmp_path / "width.html"
    assert cli.main(["report", str(db), "--no-models", "--out", str(out), "--quiet"]) == 0 and out.is_file()


def test_only_runs_the_matching_cells_and_leaves_the_rest_pending(tmp_path):
    db = tmp_path / "s.db"
    summary = run_sweep(tiny_spec("gamma=0.3,0.8", "seed=0"), db, workers=1, threads=1, progress=False, only={"gamma": 0.8})
    assert (summary.ran, summary.done, summary.total) == (1, 1, 2)
    assert {r["params"]["gamma"]: r["status"] for r in results(db)[1]} == {0.3: "pending", 0.8: "done"}
    with pytest.raises(ValueError, match=r"does not sweep: \['lr'\]"):
        run_sweep(None, db, resume=True, progress=False, only={"lr": 1e-3})


def test_the_readme_phase_table_is_printed_from_the_shipped_database():
    """The README's phase-diagram table is `anchor-interp report models/sweeps/phase.db
    --no-models --markdown`, verbatim: no number in it is typed by hand."""
    from interp.sweep_report import phase_markdown

    begin = "<!-- generated by: anchor-interp report models/sweeps/phase.db --no-models --markdown -->\n"
    end = "<!-- end of generated table -->"
    readme = (REPO / "README.md").read_text()
    assert begin in readme and end in readme
    block = readme.split(begin, 1)[1].split(end, 1)[0].strip()
    assert block == phase_markdown(REPO / "models" / "sweeps" / "phase.db"), "rerun the command above and paste its table into the README"


def test_a_sweep_over_lr_and_weight_decay_gets_the_appendix_map(tmp_path):
    """lr x weight decay at two gammas: each place's label of its seed means, the two (4,3)
    accuracies, pending places marked; one seed of one place not run yet."""
    from interp.sweep_report import lr_wd_map_figure, map_table, phase_markdown

    db = tmp_path / "lr_wd.db"
    spec = SweepSpec.parse(["seed=0,1", "gamma=0.3,0.8", "weight_decay=0.3,1.5", "lr=3e-4,1e-3"], ["d_model=64", "d_head=32"])
    store = SweepStore.create(db, spec, spec.cells())
    for cell in spec.cells():
        p = cell.params
        if p["gamma"] == 0.8 and p["weight_decay"] == 0.3 and p["lr"] == 3e-4:
            continue  # a place not run yet
        if p["gamma"] == 0.3 and p["lr"] == 1e-3 and p["seed"] == 1:
            continue  # one seed pending
        store.record_done(cell.id, fake_outcome(1.0, 0.9, 0.05, route="inferential") if p["gamma"] == 0.8
                          else fake_outcome(1.0, 0.0, 0.6 + 0.2 * p["seed"], route="symmetric"))
    store.close()
    meta, all_rows = results(db)
    table = map_table(cell_table(meta, all_rows), all_rows).set_index(["gamma", "n_layers", "weight_decay", "lr"])
    assert table.loc[(0.3, 2, 1.5, 3e-4), "symmetric_test_keys"] == pytest.approx(0.7)  # the mean of 0.6 and 0.8
    assert table.loc[(0.3, 2, 1.5, 1e-3), ["n_done", "n_cells"]].tolist() == [1, 2]
    assert table.loc[(0.8, 2, 0.3, 3e-4), "n_done"] == 0 and not isinstance(table.loc[(0.8, 2, 0.3, 3e-4), "label"], str)

    sections = dict(sweep_sections(db))
    assert list(sections)[:2] == ["Sweep", "Learning rate x weight decay"]
    figure = lr_wd_map_figure(map_table(cell_table(meta, all_rows), all_rows))
    solution_03, _, symmetric_03, solution_08, inferential_08, _ = figure.data  # rows: gamma 0.3, then 0.8
    assert [list(r) for r in solution_08.text] == [["pending", "inf"], ["inf", "inf"]]  # y: wd 0.3, 1.5; x: lr 3e-4, 1e-3
    assert [list(r) for r in solution_03.text] == [["sym", "sym"], ["sym", "sym"]]
    assert "(1 of 2 seeds done)" in solution_03.customdata[1][1] and "pending (2 cells)" in solution_08.customdata[0][0]
    assert symmetric_03.z[1][0] == pytest.approx(0.7) and np.isnan(inferential_08.z[0][0])
    assert figure.layout.width <= 1200

    markdown = phase_markdown(db).split("gamma 0.3, 2 layers:", 1)[1]  # the map follows the per-setting table
    assert "| weight decay \\ lr | 0.0003 | 0.001 |" in markdown
    assert "| 1.5 | symmetric 2: 0.00 / 0.70 | symmetric 1: 0.00 / 0.60 |" in markdown  # rows: wd; columns: lr
    assert "| 0.3 | pending | inferential 2: 0.90 / 0.05 |" in markdown.split("gamma 0.8, 2 layers:", 1)[1]
