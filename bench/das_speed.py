"""DAS and path patching speed on this CPU, and the numbers the README quotes.

(a) DAS at one site (L0 attn_out @ anchor2) for every k in probes.das.DIMS and both causal
    variables: target under 30 s on 2 cores.
(b) The full DAS grid (every stream point x role x k x variable) for each shipped model:
    target a few minutes; its best sites and IIA are written with the timings.
(c) Path patching (probes.path_patching, both pair kinds) for each shipped model.

    python bench/das_speed.py [--threads 2] [--models inferential symmetric] [--no-grid]

Writes bench/results/das_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

import torch

from machine_info import describe

import models
from models.files import write_text_atomic
from models.hooked import task_of
from probes.das import das
from probes.paths import path_patching

RESULTS = Path(__file__).parent / "results" / "das_speed.json"
MACHINE_BEFORE = describe()  # its load average: other processes on the machine; read the timings with it
ONE_SITE = "attn_out:0@anchor2"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: on 2 shared cores more threads than free cores make every op wait)")
    parser.add_argument("--models", nargs="+", default=["inferential", "symmetric"])
    parser.add_argument("--no-grid", dest="grid", action="store_false", help="skip the full grid (b)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    out: dict = {"threads": args.threads, "models": {}}
    for name in args.models:
        model, task = models.load(name), task_of(name)
        row: dict = {}
        start = time.perf_counter()
        one = das(model, task, sites=[ONE_SITE], progress=False)
        row["one_site"] = {"site": ONE_SITE, "seconds": time.perf_counter() - start, "under_30_s": time.perf_counter() - start < 30,
                           **one.to_dict()}
        print(f"{name}: DAS at {ONE_SITE}, dims {list(one.dims)}, both variables: {row['one_site']['seconds']:.1f} s; {one.summary()}", flush=True)
        start = time.perf_counter()
        paths = path_patching(model, task)
        row["paths"] = {"seconds": time.perf_counter() - start, **paths.to_dict()}
        print(f"{name}: path patching {row['paths']['seconds']:.1f} s; {paths.summary()}", flush=True)
        if args.grid:
            start = time.perf_counter()
            grid = das(model, task, progress=False)
            seconds = time.perf_counter() - start
            row["grid"] = {"seconds": seconds, **grid.to_dict(),
                           "iia": {v: {s.label: [round(x, 4) for x in grid.iia[i, j].tolist()] for j, s in enumerate(grid.sites)}
                                   for i, v in enumerate(grid.variables)}}
            print(f"{name}: full DAS grid ({len(grid.sites)} sites x {len(grid.dims)} dims x {len(grid.variables)} variables): {seconds:.0f} s; {grid.summary()}", flush=True)
        out["models"][name] = row
        out["machine"] = {**MACHINE_BEFORE, "load_average_1min_after": os.getloadavg()[0]}
        out["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        write_text_atomic(RESULTS, json.dumps(out, indent=2))  # after each model: a long run keeps what it measured
    print(f"written {RESULTS}")


if __name__ == "__main__":
    main()
