"""The Ray executor, for real, on a local Ray instance this test starts: it gives the same
results as the local pool for the same seeds, and its worker failures are recorded."""

import json
import sqlite3

import pytest

ray = pytest.importorskip("ray", reason="the Ray executor is optional: pip install 'anchor-interp[ray]'")

import test_sweep  # noqa: E402
from interp.sweep import run_sweep  # noqa: E402
from models.sweep import SweepSpec  # noqa: E402
from test_sweep import TINY, flaky_cell  # noqa: E402

# Ray workers import functions by module name, and the tests are no installed module: ship
# this one's functions by value, as one would a user's script's on a cluster.
ray.cloudpickle.register_pickle_by_value(test_sweep)


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def results(db) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT id, status, metrics, steps, threads FROM cells ORDER BY id").fetchall()
    finally:
        con.close()


def test_ray_and_the_local_pool_give_the_same_results(tmp_path, local_ray):
    spec = SweepSpec.parse(["gamma=0.3,0.8", "seed=0,1"], TINY)
    on_ray = run_sweep(spec, tmp_path / "ray.db", executor="ray", threads=1, progress=False)
    local = run_sweep(spec, tmp_path / "local.db", executor="local", workers=2, threads=1, progress=False)
    assert on_ray.done == local.done == 4
    ray_rows, local_rows = results(tmp_path / "ray.db"), results(tmp_path / "local.db")
    assert ray_rows == local_rows
    assert {json.loads(r[2])["label"] for r in ray_rows} <= {"inferential", "symmetric", "other", "unfit"}
    assert ray.is_initialized()  # a Ray instance the caller started is left running


def test_ray_records_a_failing_cell_and_a_dead_worker(tmp_path, local_ray):
    db = tmp_path / "f.db"
    summary = run_sweep(SweepSpec.parse(["gamma=0.3,0.5,0.7"], TINY), db, executor="ray", threads=1, progress=False, cell_fn=flaky_cell)
    assert (summary.done, summary.failed) == (1, 2)
    con = sqlite3.connect(db)
    errors = dict(con.execute("SELECT id, error FROM cells WHERE status='failed'").fetchall())
    con.close()
    assert "this cell is broken on purpose" in errors[1]
    assert "worker process died" in errors[2]
