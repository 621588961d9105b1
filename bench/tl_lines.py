"""The two TransformerLens lines side by side on this CPU: 3.9 (HookedTransformer, the
default) and 4.x (TransformerBridge), measured in one run.

A process imports one TransformerLens, so this script runs itself as a worker in each line's
environment, alternating the lines round by round (machine noise hits both alike), and
reports the median over rounds of each measure per line, and the ratio 4.x / 3.9 as the
median over rounds of the two lines' ratio in that round (measured one after the other, so
load from other work on this shared machine hits both alike). Within a round each measure is
the best of a few repeats, the one least slowed by other work.

(a) training steps/s of the shipped step (fused last-position forward, bf16, batch 512);
(b) training steps/s through the model's own hooked forward (fp32; what an architecture the
    fused forward does not cover trains with);
(c) trace_flow on one prompt (ms) and trace_flows over 2000 prompts (s), on the shipped
    inferential model.

    python bench/tl_lines.py [--tl3 .venv/bin/python] [--tl4 .venv-tl4/bin/python] [--rounds 5] [--steps 30]

Writes bench/results/tl_lines.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "tl_lines.json"
PROMPT = "23 1 2 43 46 74 54 44 72"
MEASURES = ("fused_bf16_steps_per_second", "hooked_fp32_steps_per_second", "trace_flow_ms", "trace_flows_2000_seconds")


def worker(steps: int) -> dict:
    """One round of every measure in this process's TransformerLens line."""
    import torch

    import models
    from interp.flow import flow_prompts, trace_flow, trace_flows
    from models import hooked
    from models.train import TrainConfig, batches, fused_logits, fused_parameters, make_optimizer, train_step
    from probes.sites import readout

    torch.set_num_threads(1)
    config = TrainConfig()
    fixed = [batch for batch, _ in zip(batches(config), range(steps + 2))]
    result = {"transformer_lens": hooked.TL_VERSION, "model_class": None}

    def rate(logits_fn, model, repeats: int = 3) -> float:
        optimizer, schedule = make_optimizer([p for p in model.parameters() if p.requires_grad], config)
        for tokens, labels in fixed[:2]:  # warm up
            train_step(logits_fn, tokens, labels, optimizer, schedule, config.grad_clip)
        chunk = max(1, steps // repeats)
        best = 0.0
        for repeat in range(repeats):
            start = time.perf_counter()
            for tokens, labels in fixed[2 + repeat * chunk : 2 + (repeat + 1) * chunk]:
                train_step(logits_fn, tokens, labels, optimizer, schedule, config.grad_clip)
            best = max(best, chunk / (time.perf_counter() - start))
        return best

    fused = models.build(config.gamma, config.n_layers, seed=0)
    params = fused_parameters(fused)
    result["fused_bf16_steps_per_second"] = rate(lambda t: fused_logits(params, fused.cfg, t, "bf16"), fused)
    hooked_model = models.build(config.gamma, config.n_layers, seed=0)
    result["hooked_fp32_steps_per_second"] = rate(
        lambda t: readout(hooked_model, hooked.final_residual(hooked_model, t)[:, -1:])[:, 0], hooked_model)

    model = models.load("inferential")
    result["model_class"] = type(model).__name__
    task = hooked.task_of("inferential")
    for _ in range(5):
        trace_flow(model, PROMPT, task)
    times = []
    for _ in range(50):
        start = time.perf_counter()
        trace_flow(model, PROMPT, task)
        times.append(time.perf_counter() - start)
    result["trace_flow_ms"] = 1e3 * min(times)
    prompts = flow_prompts(task, 2000)
    flows_times = []
    for _ in range(3):
        start = time.perf_counter()
        trace_flows(model, prompts, task)
        flows_times.append(time.perf_counter() - start)
    result["trace_flows_2000_seconds"] = min(flows_times)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tl3", default=str(ROOT / ".venv" / "bin" / "python"), help="python of a TransformerLens 3.9 environment")
    parser.add_argument("--tl4", default=str(ROOT / ".venv-tl4" / "bin" / "python"), help="python of a TransformerLens 4.x environment")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.steps)))
        return

    from models.files import write_text_atomic

    lines = {"3.9": args.tl3, "4.x": args.tl4}
    rounds: dict[str, list[dict]] = {line: [] for line in lines}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    for index in range(args.rounds):
        for line, python in lines.items():
            out = subprocess.run([python, __file__, "--worker", "--steps", str(args.steps)], cwd=ROOT, env=env,
                                 capture_output=True, text=True, check=True)
            rounds[line].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"round {index + 1}/{args.rounds} {line}: " + ", ".join(f"{m} {rounds[line][-1][m]:.3g}" for m in MEASURES), flush=True)
    median = {line: {m: statistics.median(r[m] for r in rs) for m in MEASURES} for line, rs in rounds.items()}
    result = {
        "machine": {**describe(), "torch_threads": 1},  # each line ran in its own 1-thread process
        "versions": {line: rs[0]["transformer_lens"] for line, rs in rounds.items()},
        "model_class": {line: rs[0]["model_class"] for line, rs in rounds.items()},
        "rounds": args.rounds,
        "steps_per_round": args.steps,
        "median": median,
        "ratio_tl4_over_tl3": {m: statistics.median(new[m] / old[m] for old, new in zip(rounds["3.9"], rounds["4.x"])) for m in MEASURES},
        "per_round": rounds,
    }
    for m in MEASURES:
        print(f"{m:32s} 3.9 {median['3.9'][m]:8.3g}   4.x {median['4.x'][m]:8.3g}   4.x / 3.9 {result['ratio_tl4_over_tl3'][m]:.2f}")
    write_text_atomic(RESULTS, json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    sys.exit(main())
