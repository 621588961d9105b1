"""The Ray executor, for real, on a local Ray instance this test starts: it gives the same
results as the local pool for the same seeds, and its worker failures are recorded; and a
sweep from the command line on a cluster of two Ray nodes started on this machine."""

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="the Ray executor is optional: pip install 'anchor-interp[ray]'")

import test_sweep  # noqa: E402
from interp.sweep import run_sweep  # noqa: E402
from models.sweep import SweepSpec  # noqa: E402
from test_sweep import REPO, TINY, flaky_cell  # noqa: E402

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


# ---- a cluster of two nodes on this machine ---------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_status(ray_cli: str, address: str, env: dict) -> str:
    return subprocess.run([ray_cli, "status", "--address", address], capture_output=True, text=True, env=env, timeout=30).stdout


def _stop(node: subprocess.Popen) -> None:
    """End one node this test started, by its process group: `ray stop` would end every Ray
    process on the machine, other people's included. --block nodes end their own processes
    on SIGTERM; a node still draining after 5 s is killed."""
    try:
        os.killpg(node.pid, signal.SIGTERM)
        node.wait(timeout=5)
    except subprocess.TimeoutExpired:
        os.killpg(node.pid, signal.SIGKILL)
        node.wait(timeout=10)
    except ProcessLookupError:
        pass


@pytest.mark.timeout(300)
def test_a_sweep_runs_on_a_two_node_ray_cluster(tmp_path):
    """`ray start --head` plus `ray start --address` (one CPU each, own temp dirs), then the CLI
    with --executor ray --address: the two cells run at once, one on each node. About 50 s on
    an idle 2-core machine; the limits leave room for a busy one."""
    ray_cli = shutil.which("ray", path=str(Path(sys.executable).parent)) or shutil.which("ray")
    if ray_cli is None:
        pytest.skip("the ray command is not installed")
    port, temp = _free_port(), Path(tempfile.mkdtemp(prefix="ray2n"))  # short: Ray's socket paths have a length limit
    address = f"127.0.0.1:{port}"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    node = ["--num-cpus", "1", "--object-store-memory", str(100 * 2**20), "--block"]
    start = lambda *args: subprocess.Popen([ray_cli, "start", *args, *node], env=env, start_new_session=True,  # noqa: E731
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    nodes = []
    try:
        nodes.append(start("--head", "--port", str(port), "--node-ip-address", "127.0.0.1", "--include-dashboard", "false", "--temp-dir", str(temp / "head")))
        deadline = time.monotonic() + 120
        while "node_" not in _ray_status(ray_cli, address, env):
            assert time.monotonic() < deadline and nodes[0].poll() is None, "the head node did not start"
            time.sleep(0.5)
        nodes.append(start("--address", address, "--node-ip-address", "127.0.0.1", "--temp-dir", str(temp / "node2")))
        while _ray_status(ray_cli, address, env).count("node_") < 2:
            assert time.monotonic() < deadline and nodes[1].poll() is None, "the second node did not join"
            time.sleep(0.5)

        db = tmp_path / "cluster.db"
        sweep = subprocess.run([sys.executable, "-m", "interp.cli", "sweep", "--db", str(db), "--grid", "seed=0,1",
                                *[a for s in TINY for a in ("--set", s)], "--executor", "ray", "--address", address, "--quiet"],
                               cwd=REPO, env=env, capture_output=True, text=True, timeout=170)
        assert sweep.returncode == 0, sweep.stderr[-3000:]
        con = sqlite3.connect(db)
        got = con.execute("SELECT status, worker, metrics FROM cells ORDER BY id").fetchall()
        con.close()
        assert [status for status, _, _ in got] == ["done", "done"]
        assert len({worker.split("/")[0] for _, worker, _ in got}) == 2, got  # "ray-<node id>/host:pid": one cell per node
        assert all(json.loads(m)["route"] in ("inferential", "symmetric", "mixed", "other") for _, _, m in got)
    finally:
        for n in reversed(nodes):
            _stop(n)
        shutil.rmtree(temp, ignore_errors=True)
