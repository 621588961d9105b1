"""Running a sweep (models/sweep.py holds its spec and results store): every cell trained,
classified and probed for its mechanism, on a local process pool, a Ray cluster, or stacked
on one GPU (many runs trained at once, probed by a local pool), each result committed as it
arrives, resumable after any interruption.

    spec = SweepSpec.from_toml("models/sweeps/phase.toml")
    run_sweep(spec, "sweeps/phase.db")                             # local pool, one cell per core
    run_sweep(None, "sweeps/phase.db", resume=True, executor="ray", address="auto")
    run_sweep(spec, "sweeps/phase.db", executor="stacked", device="cuda", stack_size=50)

A cell records `probes.classify(...).to_dict()` plus `mechanism(...)` from its own model:
the route of `interp.trace_flows` (overall and by key position), the composition test's best
site and score, and the complexity numbers (W_Q groups, mean stable rank). A sweep uses
models, probes and interp, so it lives here, above all three.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import platform
import re
import signal
import socket
import sys
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tqdm.auto import tqdm

from interp.complexity import spectra, wq_condensation
from interp.flow import flow_prompts, trace_flows
from models.hooked import Model, save
from models.sweep import Cell, SweepSpec, SweepStore, checkpoint_folder, open_sweep, process_alive
from models.task import AnchorTask
from models.machine import run_versions
from models.train import TrainConfig, TrainResult, make_card, train, train_command
from probes.composition import composition_test
from probes.solution import card_metrics

EXECUTORS = ("local", "ray", "stacked")
RAY_INSTALL = "the Ray executor needs Ray: pip install 'anchor-interp[ray]' (or pip install 'ray>=2.40')"
# Sized so the probes cost a few seconds a cell against minutes of training (bench/sweep_speed.py).
MECHANISM_FLOW_PROMPTS = 1000
MECHANISM_PAIRS = 128


# ---- one cell ---------------------------------------------------------------------------
def mechanism(model: Model, task: AnchorTask = AnchorTask(), n_flow_prompts: int = MECHANISM_FLOW_PROMPTS,
              n_pairs: int = MECHANISM_PAIRS) -> dict[str, Any]:
    """What a sweep records of a model's mechanism, as JSON values:
    - route: `trace_flows(...).route()` on random prompts (inferential / symmetric / mixed / other);
    - route_by_position: the route of each key position's prompts alone, None where the second
      anchor is the last position (the route rule is undefined there, see interp.flow);
    - composition_site, composition_score: `composition_test(...).best()`, the stream point
      where most interchanges compose, and that share (None: the model answers no pair);
    - wq_groups (of wq_neurons): first-layer W_Q rows in groups of cos > 0.7;
      mean_stable_rank: over every weight matrix (interp.complexity)."""
    flows = trace_flows(model, flow_prompts(task, n_flow_prompts), task)
    key_pos, last = flows.prompts.key_pos, flows.prompts.tokens.shape[1] - 1
    by_position = [flows.route(keep=key_pos == p).name if p + 2 < last else None for p in range(task.n_key_positions)]
    try:
        site, column, score = composition_test(model, task, n=n_pairs, progress=False).best()
        composition = {"composition_site": f"{site} @ {column}", "composition_score": score}
    except ValueError:  # no pair answered correctly: an unfit model composes nothing measurable
        composition = {"composition_site": None, "composition_score": None}
    condensation = wq_condensation(model)
    return {
        "route": flows.route().name,
        "route_by_position": by_position,
        **composition,
        "wq_groups": condensation.n_groups,
        "wq_neurons": len(condensation.group),
        "mean_stable_rank": spectra(model).mean_stable_rank,
    }


def run_cell(cell: Cell, threads: int, checkpoint: str | None = None, trained: TrainResult | None = None) -> dict[str, Any]:
    """Train (unless `trained` holds the finished run: the stacked executor trains elsewhere),
    classify and probe one cell in this process (a pool or Ray worker); `checkpoint`: also
    save the model there, with its card."""
    import torch

    torch.set_num_threads(threads)
    start = time.perf_counter()
    task = cell.config.task
    result = trained or train(cell.config, progress=False)
    behaviour = card_metrics(result.model, task)
    if checkpoint:
        try:
            command = train_command(cell.config, checkpoint, threads=threads)
        except ValueError:  # task/betas overrides have no train flag
            command = f"anchor-interp sweep cell {cell.id} {json.dumps(cell.params)}"
        save(result.model, checkpoint, make_card(result, command, behaviour), cell.config.hooked_config(), overwrite=True)
    return {
        "metrics": {**behaviour, **mechanism(result.model, task)},
        "steps": result.steps,
        "stopped_early": result.stopped_early,
        "train_seconds": result.wall_seconds,
        "wall_seconds": result.wall_seconds + time.perf_counter() - start if trained else time.perf_counter() - start,
        "threads": torch.get_num_threads(),
        "worker": f"{socket.gethostname()}:{os.getpid()}",
        "versions": run_versions(),
        "checkpoint": checkpoint,
        "history": result.history,
    }


CellFn = Callable[[Cell, int, "str | None"], dict[str, Any]]


# ---- executors --------------------------------------------------------------------------
def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _worker_init(sweep_pid: int) -> None:
    # Ctrl-C goes to the whole process group: the sweep process handles it and stops the
    # workers itself. And a worker must not outlive a killed sweep: its parent is the fork
    # server, not the sweep, and a pool worker waits forever for its next cell, so a thread
    # watches the sweep process and ends the worker when it is gone.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while process_alive(sweep_pid):
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="sweep-watchdog", daemon=True).start()


def worker_pool(workers: int) -> cf.ProcessPoolExecutor:
    """A process pool whose workers fork from a server that imported torch and this package
    once (a worker starts in milliseconds) and end with the sweep process (_worker_init)."""
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["interp.sweep"])
    return cf.ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init, initargs=(os.getpid(),))


class LocalExecutor:
    """`workers` single-process pools, one per slot: a worker that dies (killed, out of
    memory) fails only its own cell, and only its slot restarts. Workers fork from a server
    that imported torch and this package once, so a restart costs milliseconds."""

    name = "local"

    def __init__(self, workers: int, threads: int):
        self.capacity, self.threads = workers, threads
        self._slots: list[cf.ProcessPoolExecutor | None] = [None] * workers
        self._busy: dict[cf.Future, int] = {}

    def submit(self, fn: CellFn, cell: Cell, checkpoint: str | None) -> cf.Future:
        slot = next(i for i in range(self.capacity) if i not in self._busy.values())
        if self._slots[slot] is None:
            self._slots[slot] = worker_pool(1)
        future = self._slots[slot].submit(fn, cell, self.threads, checkpoint)
        self._busy[future] = slot
        return future

    def finished(self, future: cf.Future) -> None:
        slot = self._busy.pop(future)
        if isinstance(future.exception(), cf.process.BrokenProcessPool):
            self._slots[slot].shutdown(wait=False)
            self._slots[slot] = None

    @staticmethod
    def worker_died(error: BaseException) -> bool:
        return isinstance(error, cf.process.BrokenProcessPool)

    def close(self, cancel: bool = False) -> None:
        for pool in filter(None, self._slots):
            if cancel and hasattr(pool, "terminate_workers"):  # Python >= 3.14
                pool.terminate_workers()
            elif cancel:  # stop running cells now (Ctrl-C); before 3.14 only the private process table can
                for process in list((getattr(pool, "_processes", None) or {}).values()):
                    process.kill()
            pool.shutdown(wait=not cancel, cancel_futures=True)
        self._slots = [None] * self.capacity


class RayExecutor:
    """Cells as Ray tasks of `threads` CPUs each, on a local instance or the cluster at
    `address`. Every node needs this package and its dependencies installed."""

    name = "ray"

    def __init__(self, workers: int | None, threads: int, address: str | None):
        ray = import_ray()
        self.ray, self.threads = ray, threads
        self._started = not ray.is_initialized()
        if self._started:
            import logging

            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.capacity = workers or max(1, cpus // threads)
        # max_retries=0: a cell whose worker dies is recorded as failed, as with the local pool.
        self._task = ray.remote(_ray_cell).options(num_cpus=threads, max_retries=0)
        self._refs: dict[cf.Future, Any] = {}

    def submit(self, fn: CellFn, cell: Cell, checkpoint: str | None) -> cf.Future:
        ref = self._task.remote(fn, cell, self.threads, checkpoint)
        future = ref.future()
        self._refs[future] = ref
        return future

    def finished(self, future: cf.Future) -> None:
        self._refs.pop(future, None)

    def worker_died(self, error: BaseException) -> bool:
        return isinstance(error, (self.ray.exceptions.WorkerCrashedError, self.ray.exceptions.NodeDiedError))

    def close(self, cancel: bool = False) -> None:
        if cancel:
            for ref in self._refs.values():
                self.ray.cancel(ref, force=True)
        self._refs.clear()
        if self._started:
            self.ray.shutdown()


def stack_key(config: TrainConfig) -> str:
    """Runs with equal keys can train in one stack: their recipes differ by gamma alone."""
    return json.dumps({k: v for k, v in config.recipe().items() if k != "gamma"}, sort_keys=True)


class StackedExecutor:
    """Cells trained many at once on one device (models.stacked: `stack_size` runs of one
    recipe per stack, on a GPU), then classified and probed in a CPU process pool of
    `workers` while the next stack trains. A thread trains the stacks one after another."""

    name = "stacked"

    def __init__(self, device: str, stack_size: int, workers: int, threads: int):
        import torch

        self.device, self.stack_size, self.threads = torch.device(device), stack_size, threads
        self.device_name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else platform.processor() or "cpu"
        self.capacity = 3 * stack_size  # one stack training, one being probed, one gathering its runs
        self._probes = worker_pool(workers)
        self._waiting: list[tuple[CellFn, Cell, str | None, cf.Future]] = []
        self._lock, self._closed = threading.Lock(), threading.Event()
        self._trainer = threading.Thread(target=self._train_stacks, name="stacked-trainer", daemon=True)
        self._trainer.start()

    def submit(self, fn: CellFn, cell: Cell, checkpoint: str | None) -> cf.Future:
        outer: cf.Future = cf.Future()
        with self._lock:
            self._waiting.append((fn, cell, checkpoint, outer))
        return outer

    def _next_stack(self) -> list[tuple[CellFn, Cell, str | None, cf.Future]]:
        with self._lock:
            if not self._waiting:
                return []
            key = stack_key(self._waiting[0][1].config)
            stack = [w for w in self._waiting if stack_key(w[1].config) == key][: self.stack_size]
            self._waiting = [w for w in self._waiting if all(w is not s for s in stack)]
            return stack

    def _train_stacks(self) -> None:
        from models.stacked import train_stacked

        while not self._closed.wait(0.5):  # the pause also lets a whole batch of submits arrive
            while (stack := self._next_stack()) and not self._closed.is_set():
                start = time.perf_counter()
                try:
                    results = train_stacked([cell.config for _, cell, _, _ in stack], self.device, progress=False)
                except BaseException as error:  # the whole stack fails together
                    for *_, outer in stack:
                        outer.set_exception(error)
                    continue
                steps = max(r.steps for r in results)
                print(f"stacked: {len(stack)} runs trained on {self.device} in {time.perf_counter() - start:.0f} s "
                      f"({steps} steps, {steps / (time.perf_counter() - start):.1f} steps/s)", file=sys.stderr, flush=True)
                for (fn, cell, checkpoint, outer), result in zip(stack, results):
                    inner = self._probes.submit(fn, cell, self.threads, checkpoint, result)
                    inner.add_done_callback(lambda done, outer=outer: self._deliver(done, outer))

    def _deliver(self, inner: cf.Future, outer: cf.Future) -> None:
        if inner.exception() is not None:
            outer.set_exception(inner.exception())
            return
        outcome = inner.result()
        outcome["worker"] = f"stacked on {self.device} ({self.device_name}), probed by {outcome['worker']}"
        outcome["versions"]["train_device"] = f"{self.device} ({self.device_name})"
        outer.set_result(outcome)

    def finished(self, future: cf.Future) -> None:
        pass

    @staticmethod
    def worker_died(error: BaseException) -> bool:
        return isinstance(error, cf.process.BrokenProcessPool)

    def close(self, cancel: bool = False) -> None:
        self._closed.set()
        self._probes.shutdown(wait=not cancel, cancel_futures=cancel)


def import_ray():
    try:
        import ray
    except ImportError:
        raise ValueError(RAY_INSTALL) from None
    return ray


def _ray_cell(fn: CellFn, cell: Cell, threads: int, checkpoint: str | None) -> dict[str, Any]:
    import ray

    outcome = fn(cell, threads, checkpoint)
    # Which node ran the cell: on a cluster of several nodes on one host, host:pid alone cannot tell.
    outcome["worker"] = f"ray-{ray.get_runtime_context().get_node_id()[:8]}/{outcome['worker']}"
    return outcome


def make_executor(kind: str, n_cells: int, workers: int | None = None, threads: int | None = None, address: str | None = None,
                  device: str = "cuda", stack_size: int = 64):
    """The local pool sized to this machine (workers x threads = cores, no oversubscription),
    Ray (one CPU per cell by default), or stacks on one device with a probe pool of all cores
    but two (they draw the training batches)."""
    if kind == "local":
        cores = available_cores()
        workers = workers or max(1, min(cores, n_cells))
        return LocalExecutor(workers, threads or max(1, cores // workers))
    if kind == "ray":
        return RayExecutor(workers, threads or 1, address)
    if kind == "stacked":
        return StackedExecutor(device, stack_size, workers or max(1, available_cores() - 2), threads or 1)
    raise ValueError(f"unknown executor {kind!r}; choose {', '.join(EXECUTORS)}")


# ---- the sweep --------------------------------------------------------------------------
@dataclass
class SweepSummary:
    path: Path
    total: int
    done: int
    failed: int
    ran: int  # cells run by this call
    seconds: float
    errors: dict[int, str]  # cell id -> last line of its error


def run_sweep(
    spec: SweepSpec | None,
    db: str | os.PathLike,
    resume: bool = False,
    executor: str = "local",
    workers: int | None = None,
    threads: int | None = None,
    address: str | None = None,
    keep_checkpoints: bool = False,
    retry_failed: bool = True,
    progress: bool = True,
    command: str = "",
    cell_fn: CellFn = run_cell,
    device: str = "cuda",
    stack_size: int = 64,
    only: dict[str, Any] | None = None,
) -> SweepSummary:
    """Run every unfinished cell of the sweep in `db` (created from `spec` unless resuming),
    committing each result as it arrives. A failed cell records its error and the sweep goes
    on. On Ctrl-C the running cells go back to 'pending' and KeyboardInterrupt propagates.

    `cell_fn` is what a worker runs per cell (default: train, classify, mechanism); it must be
    importable by the workers, and with the stacked executor (`device`, `stack_size`) it gets
    the trained run as a fifth argument. `only` runs just the cells with these swept values
    (say {"n_layers": 3}: one depth of a phase grid); the others stay as they are. Checkpoints, when kept, go to <db>.checkpoints/cell-<id>."""
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; choose {', '.join(EXECUTORS)}")
    if stack_size < 1:
        raise ValueError(f"stack_size must be >= 1, got {stack_size}")
    if address and executor != "ray":
        raise ValueError("--address is for --executor ray")
    if workers is not None and workers < 1 or threads is not None and threads < 1:
        raise ValueError(f"workers and threads must be >= 1, got workers={workers} threads={threads}")
    if executor == "ray":
        import_ray()  # before creating anything
    store = open_sweep(spec, db, resume, command)
    start = time.perf_counter()
    try:
        store.claim()
    except BaseException:
        store.close()
        raise
    try:
        cells = {c.id: c for c in store.cells()}
        unknown = sorted(set(only or {}) - {k for c in cells.values() for k in c.params})
        if unknown:
            raise ValueError(f"--only names settings the grid does not sweep: {unknown}")
        todo = deque(i for i in store.todo(retry_failed) if all(cells[i].params[k] == v for k, v in (only or {}).items()))
        counts = store.counts()
        summary = SweepSummary(store.path, len(cells), counts["done"], 0 if retry_failed else counts["failed"], 0, 0.0, {})
        if todo:
            ckpt_dir = checkpoint_folder(store.path) if keep_checkpoints else None
            pool = make_executor(executor, len(todo), workers, threads, address, device, stack_size)
            try:
                _schedule(store, pool, cells, todo, cell_fn, ckpt_dir, summary, progress)
            except BaseException:
                pool.close(cancel=True)
                raise
            pool.close()
        summary.seconds = time.perf_counter() - start
        return summary
    finally:
        store.mark_pending(store.todo(retry_failed=False))  # cells a Ctrl-C or crash left 'running'
        store.release()
        store.close()


def _schedule(store: SweepStore, pool, cells: dict[int, Cell], todo: deque, cell_fn: CellFn, ckpt_dir: Path | None, summary: SweepSummary, progress: bool) -> None:
    """Keep the executor full (`capacity` cells in flight, so 'running' in the database is
    true), record each result as it arrives, and show one progress bar."""
    in_flight: dict[cf.Future, int] = {}
    bar = tqdm(total=summary.total, initial=summary.done, unit="cell", desc=f"sweep ({pool.name})", disable=not progress, dynamic_ncols=True)
    interactive = progress and getattr(bar.fp, "isatty", lambda: False)()
    shown = ""
    try:
        while todo or in_flight:
            while todo and len(in_flight) < pool.capacity:
                cell_id = todo.popleft()
                store.mark_running(cell_id)
                checkpoint = str(ckpt_dir / f"cell-{cell_id}") if ckpt_dir else None
                in_flight[pool.submit(cell_fn, cells[cell_id], checkpoint)] = cell_id
            if shown != (postfix := f"running={len(in_flight)}, failed={summary.failed}"):
                bar.set_postfix_str(shown := postfix)
            elif interactive:  # tick the clock; a log file gets a line per change only
                bar.refresh()
            finished, _ = cf.wait(in_flight, timeout=1.0, return_when=cf.FIRST_COMPLETED)
            for future in finished:
                cell_id = in_flight.pop(future)
                pool.finished(future)
                error = future.exception()
                if error is None:
                    store.record_done(cell_id, future.result())
                    summary.done += 1
                else:
                    text = describe_error(error, pool.worker_died(error))
                    store.record_failed(cell_id, text)
                    summary.failed += 1
                    summary.errors[cell_id] = text.strip().splitlines()[-1]
                    bar.write(f"cell {cell_id} {cells[cell_id].params} failed: {summary.errors[cell_id]}")
                summary.ran += 1
                bar.update(1)
        bar.set_postfix_str(f"running=0, failed={summary.failed}")
    finally:
        bar.close()


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def describe_error(error: BaseException, worker_died: bool) -> str:
    if worker_died:
        return f"the worker process died while running this cell (killed, or out of memory): {error}"
    text = "".join(traceback.format_exception(error))
    return ANSI.sub("", text)[-8000:]
