"""Sweep throughput on this machine, measured side by side in one run, on tiny cells.

(a) the local executor (one worker per core, one torch thread each) against the same cells
    run one after another in this process, with 1 torch thread and with one per core:
    ratio = the faster sequential time / pool time (target >= 0.9: the pool loses nothing;
    > 1: it gains). On a busy machine, one thread per core can be far slower than one
    thread (threads wait for each other at every op): both are recorded;
(b) Ray on a local instance against the local executor: per-cell overhead and ratio;
(c) cells/hour of the local pool on this machine: on the tiny cells above, and on cells of
    the shipped recipe (d_model 128, 2 layers, batch 512) cut to --recipe-steps steps, which
    measures the time per training step and the fixed cost per cell (classification and the
    mechanism probes); from those, a PROJECTION (not a measurement) for full-length cells;
    plus the mechanism probes alone (interp.sweep.mechanism) on the shipped models.

Cold runs pay one-off start-up (the pool's fork server and Ray's workers import torch and
TransformerLens once); warm runs, repeated in rounds, are what a long sweep sees.

    python bench/sweep_speed.py [--cells 8] [--steps 300] [--rounds 2] [--skip-ray] [--recipe-steps 30]

Writes bench/results/sweep_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from machine_info import describe

from models.files import write_text_atomic
import models
from interp.sweep import available_cores, mechanism, run_cell, run_sweep
from models.sweep import SweepSpec, results

RESULTS = Path(__file__).parent / "results" / "sweep_speed.json"


def tiny_spec(n_cells: int, steps: int) -> SweepSpec:
    return SweepSpec.parse(
        [f"seed={','.join(map(str, range(n_cells)))}"],
        ["gamma=0.8", "d_model=32", "d_head=16", "d_mlp=96", "batch_size=128", f"max_steps={steps}",
         "warmup_steps=10", f"eval_every={steps}", "early_stop=False"],
    )


def recipe_spec(n_cells: int, steps: int) -> SweepSpec:
    """Cells of the shipped recipe (TrainConfig defaults), only shorter: one evaluation, at the end."""
    return SweepSpec.parse([f"seed={','.join(map(str, range(n_cells)))}"],
                           ["gamma=0.8", f"max_steps={steps}", "warmup_steps=1", f"eval_every={steps}", "early_stop=False"])


def recipe_throughput(n_cells: int, steps: int, workers: int, folder: Path, full_steps: int = 2000) -> dict:
    """Cells/hour measured on shortened shipped-recipe cells, and projected for `full_steps`."""
    seconds = time_sweep(recipe_spec(n_cells, steps), folder, "recipe", executor="local", workers=workers, threads=1)
    _, rows = results(folder / "recipe.db")
    step = statistics.median(r["train_seconds"] / r["steps"] for r in rows)
    after = statistics.median(r["wall_seconds"] - r["train_seconds"] for r in rows)
    return {
        "recipe_cells": n_cells, "recipe_steps_per_cell": steps, "recipe_seconds": seconds,
        "recipe_cells_per_hour_measured": n_cells / seconds * 3600,
        "recipe_seconds_per_step": step,
        "recipe_seconds_after_training_per_cell": after,  # classify + mechanism probes, in the worker
        f"recipe_cells_per_hour_projected_{full_steps}_steps": 3600 * workers / (full_steps * step + after),
    }


def mechanism_seconds() -> dict[str, float]:
    """interp.sweep.mechanism alone on each shipped model (2 layers, d_model 128), one thread."""
    out = {}
    for name in ("inferential", "symmetric"):
        model = models.load(name)
        start = time.perf_counter()
        mechanism(model)
        out[name] = time.perf_counter() - start
    return out


def time_sequential(spec: SweepSpec, threads: int) -> float:
    before = torch.get_num_threads()
    start = time.perf_counter()
    for cell in spec.cells():
        run_cell(cell, threads)
    torch.set_num_threads(before)
    return time.perf_counter() - start


def time_sweep(spec: SweepSpec, folder: Path, name: str, **executor) -> float:
    start = time.perf_counter()
    summary = run_sweep(spec, folder / f"{name}.db", progress=False, **executor)
    assert summary.done == summary.total, f"{name}: {summary.errors}"
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=8)
    parser.add_argument("--steps", type=int, default=300, help="training steps per cell")
    parser.add_argument("--rounds", type=int, default=2, help="warm repetitions of each measurement")
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--recipe-steps", type=int, default=30, help="steps per shipped-recipe cell in (c)")
    args = parser.parse_args()

    cores = available_cores()
    spec = tiny_spec(args.cells, args.steps)
    pool = dict(executor="local", workers=cores, threads=1)
    out: dict = {"cells": args.cells, "steps_per_cell": args.steps, "cores": cores, "cell": "d_model 32, 2 layers, batch 128",
                 "machine": describe()}
    times: dict[str, list[float]] = {"sequential_1_thread": [], f"sequential_{cores}_threads": [], "local": [], "ray": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        out["local_cold_seconds"] = time_sweep(spec, folder, "local-cold", **pool)
        ray = None
        if not args.skip_ray:
            import ray

            start = time.perf_counter()
            ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False, configure_logging=False)
            out["ray_init_seconds"] = time.perf_counter() - start
            out["ray_cold_seconds"] = time_sweep(spec, folder, "ray-cold", executor="ray", threads=1)
        for r in range(args.rounds):  # interleaved, so machine noise hits all alike
            times["sequential_1_thread"].append(time_sequential(spec, threads=1))
            if cores > 1:
                times[f"sequential_{cores}_threads"].append(time_sequential(spec, threads=cores))
            times["local"].append(time_sweep(spec, folder, f"local-{r}", **pool))
            if ray:
                times["ray"].append(time_sweep(spec, folder, f"ray-{r}", executor="ray", threads=1))
            print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in times.items() if v))
        if ray:
            ray.shutdown()
        out.update(recipe_throughput(cores, args.recipe_steps, cores, folder))
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    out["mechanism_seconds"] = mechanism_seconds()
    torch.set_num_threads(before)

    seq = min(statistics.median(v) for k, v in times.items() if k.startswith("sequential") and v)
    local = statistics.median(times["local"])
    out.update(
        seconds={k: v for k, v in times.items() if v},
        sequential_seconds_per_cell=seq / args.cells,
        local_seconds_per_cell=local / args.cells,
        local_vs_sequential_throughput=seq / local,
        local_cold_vs_sequential_throughput=seq / out["local_cold_seconds"],
        tiny_cells_per_hour=args.cells / local * 3600,
    )
    if times["ray"]:
        ray_time = statistics.median(times["ray"])
        out.update(ray_seconds_per_cell=ray_time / args.cells, ray_overhead_seconds_per_cell=(ray_time - local) / args.cells,
                   ray_vs_local_throughput=local / ray_time)
    out["load_average_after"] = os.getloadavg()[0]
    write_text_atomic(RESULTS, json.dumps(out, indent=2) + "\n")
    print(f"local pool vs sequential: {out['local_vs_sequential_throughput']:.2f}x throughput warm, "
          f"{out['local_cold_vs_sequential_throughput']:.2f}x with its start-up (target >= 0.9)")
    if times["ray"]:
        print(f"ray vs local pool: {out['ray_vs_local_throughput']:.2f}x throughput, overhead {out['ray_overhead_seconds_per_cell']:+.2f} s per cell "
              f"(ray.init {out['ray_init_seconds']:.1f} s, cold sweep {out['ray_cold_seconds']:.1f} s)")
    projected = next(k for k in out if k.startswith("recipe_cells_per_hour_projected"))
    print(f"cells/hour on {cores} cores (local pool): {out['tiny_cells_per_hour']:.0f} tiny cells ({out['cell']}, {args.steps} steps); "
          f"{out['recipe_cells_per_hour_measured']:.0f} shipped-recipe cells cut to {args.recipe_steps} steps, measured; "
          f"{out[projected]:.1f} at 2000 steps, projected from {out['recipe_seconds_per_step'] * 1000:.0f} ms/step "
          f"+ {out['recipe_seconds_after_training_per_cell']:.1f} s/cell after training")
    print("mechanism probes alone, one thread: " + ", ".join(f"{k} {v:.1f} s" for k, v in out["mechanism_seconds"].items()))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
