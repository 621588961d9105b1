"""Speed of interp on this CPU, measured side by side in one run.

(a) trace_flow on one prompt against a bare `run_with_cache` of the same prompt (every hook
    cached): the ratio of their medians, interleaved in rounds so that machine noise hits
    both alike (target: within 3x);
(b) batched flow over 10,000 prompts: trace_flows, mean role flows and the route summary
    (target: under 10 s);
(c) the full report of both shipped models, split into its stages: interp's analyses,
    the causal probes' sections, drawing + writing the HTML (target: under 60 s).

    python bench/interp_speed.py [--models inferential symmetric] [--rounds 200] [--skip-report]

Writes bench/results/interp_speed.json. The machine is shared: its load average is recorded.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from machine_info import describe

from interp import report
from interp.flow import flow_prompts, trace_flow, trace_flows
from models import hooked
from models.files import write_text_atomic
from probes.report import report_sections

RESULTS = Path(__file__).parent / "results" / "interp_speed.json"
PROMPT = "23 1 2 43 46 74 54 44 72"


def one_prompt(model, task, rounds: int) -> dict:
    """Median seconds of trace_flow and of a bare run_with_cache, interleaved."""
    tokens = task.prompt(PROMPT).tokens
    flow_times, cache_times = [], []
    for _ in range(10):  # warm up both
        trace_flow(model, PROMPT, task), model.run_with_cache(tokens)
    for _ in range(rounds):
        start = time.perf_counter()
        with torch.inference_mode():
            model.run_with_cache(tokens)
        cache_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        trace_flow(model, PROMPT, task)
        flow_times.append(time.perf_counter() - start)
    flow, cache = statistics.median(flow_times), statistics.median(cache_times)
    return {"trace_flow_ms": flow * 1e3, "run_with_cache_ms": cache * 1e3, "ratio": flow / cache, "rounds": rounds}


def batched(model, task, n: int) -> dict:
    prompts = flow_prompts(task, n)
    start = time.perf_counter()
    flows = trace_flows(model, prompts, task)
    traced = time.perf_counter() - start
    flows.role_flow("value"), flows.role_rollout("attention")
    route = flows.route()
    flows.routes_by_key_position()
    total = time.perf_counter() - start
    return {"prompts": n, "trace_flows_seconds": traced, "total_seconds": total, "route": route.name}


def full_report(names: list[str]) -> dict:
    """build_report's stages, timed one by one (their sum is the report)."""
    stages = {"analyses": 0.0, "probes": 0.0, "html": 0.0}
    analyses = []
    for name in names:
        start = time.perf_counter()
        analysis = report.analyze(name, probes=False)
        stages["analyses"] += time.perf_counter() - start
        start = time.perf_counter()
        model, task = hooked.load(name), hooked.task_of(name)
        analyses.append(dataclasses.replace(analysis, probe_sections=list(report_sections(name, model, task))))
        stages["probes"] += time.perf_counter() - start
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        out = write_text_atomic(Path(tmp) / "report.html", report.render_html(analyses))
        size = out.stat().st_size
    stages["html"] = time.perf_counter() - start
    return {
        "models": names,
        "seconds": sum(stages.values()),
        "seconds_without_probes": stages["analyses"] + stages["html"],
        "stages_seconds": stages,
        "html_megabytes": size / 1e6,
        "probes_present": any(a.probe_sections for a in analyses),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(report.SHIPPED), help="checkpoints (default: both shipped)")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--prompts", type=int, default=10_000)
    parser.add_argument("--skip-report", action="store_true")
    args = parser.parse_args()

    model, task = hooked.load(args.models[0]), hooked.task_of(args.models[0])
    results = {
        "machine": describe(),
        "one_prompt": one_prompt(model, task, args.rounds),
        "batched": batched(model, task, args.prompts),
    }
    o, b = results["one_prompt"], results["batched"]
    print(f"trace_flow, one prompt: {o['trace_flow_ms']:.2f} ms vs run_with_cache {o['run_with_cache_ms']:.2f} ms: ratio {o['ratio']:.2f} (target <= 3)")
    print(f"batched flow, {b['prompts']} prompts: {b['total_seconds']:.2f} s (trace_flows {b['trace_flows_seconds']:.2f} s; target < 10 s)")
    if not args.skip_report:
        r = results["report"] = full_report(args.models)
        s = r["stages_seconds"]
        print(f"report of {', '.join(args.models)}: {r['seconds']:.1f} s (interp {s['analyses']:.1f} s, probes {s['probes']:.1f} s, "
              f"html {s['html']:.1f} s; without probes {r['seconds_without_probes']:.1f} s; target < 60 s)")
    results["machine"]["load_average_1min_after"] = os.getloadavg()[0]
    write_text_atomic(RESULTS, json.dumps(results, indent=2) + "\n")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
