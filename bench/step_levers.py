"""Levers on the shipped training step, each measured side by side with the shipped form in
one run, one thread, `keep_freed_memory` on (as in training):

(a) ReLU in place on the W_in matmul's fresh output against a fresh activation (shipped),
    and whether the weights after the timed steps are the same bits (not shipped: slower);
(b) AdamW as one update over a flat buffer of all parameters against one update per tensor
    (shipped), on the zoo's parameter shapes, and whether they give the same bits (not
    shipped: README "Training speed" says why);
(c) with --compile: the step with its forward compiled by torch.compile (inductor, as
    `compiled=True` trains) against eager, and the time the first compiled steps take; once
    alone, once beside a second process that trains the eager step on the other core (as a
    sweep's second worker does).

    python bench/step_levers.py [--rounds 7] [--steps 20] [--compile]

Writes bench/results/step_levers.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from machine_info import describe
from train_speed import shipped_recipe

import models
from models.files import write_text_atomic
from models.train import TrainConfig, batches, keep_freed_memory, make_optimizer, train_step, training_forward

RESULTS = Path(__file__).parent / "results" / "step_levers.json"
TRAIN = sys.modules["models.train"]  # `models.train` the attribute is the training function


def interleaved(ways: dict, rounds: int) -> dict[str, list[float]]:
    """Alternate the ways' rounds (round 0 warms up); each returns its rate for the round."""
    rates: dict[str, list[float]] = {name: [] for name in ways}
    for round_index in range(rounds + 1):
        for name, run_round in ways.items():
            rate = run_round()
            if round_index:
                rates[name].append(rate)
    return rates


def summary(rates: dict[str, list[float]], shipped: str, other: str) -> dict:
    median = {name: statistics.median(r) for name, r in rates.items()}
    return {"per_second": median, "per_round": rates, "ratio": median[other] / median[shipped]}


def zoo_runs(names: tuple[str, ...], steps: int, compiled: tuple[str, ...] = ()) -> tuple[TrainConfig, list, dict]:
    """The zoo's recipe, `steps` fixed batches, and for each name a fresh model (seed 0) with
    its training forward (compiled for the names in `compiled`, as train() does), optimizer
    and schedule."""
    config = shipped_recipe()[0]
    data = batches(config)
    fixed = [next(data) for _ in range(steps)]
    runs = {}
    for name in names:
        model = models.build(config.gamma, config.n_layers, seed=0, **config.arch)
        runs[name] = (model, training_forward(model, config.precision, name in compiled), *make_optimizer([p for p in model.parameters() if p.requires_grad], config))
    return config, fixed, runs


def timed_steps(config: TrainConfig, fixed: list, logits_fn, optimizer, schedule) -> float:
    """Train on the fixed batches; steps per second."""
    start = time.perf_counter()
    for tokens, labels in fixed:
        train_step(logits_fn, tokens, labels, optimizer, schedule, config.grad_clip)
    return len(fixed) / (time.perf_counter() - start)


def relu_in_place(rounds: int, steps: int) -> dict:
    config, fixed, runs = zoo_runs(("in_place", "fresh"), steps)
    activations = {"in_place": functools.partial(F.relu, inplace=True), "fresh": F.relu}
    shipped_relu = TRAIN._FUSED_ACTIVATIONS["relu"]

    def round_of(name: str):
        _, logits_fn, optimizer, schedule = runs[name]
        TRAIN._FUSED_ACTIVATIONS["relu"] = activations[name]
        try:
            return timed_steps(config, fixed, logits_fn, optimizer, schedule)
        finally:
            TRAIN._FUSED_ACTIVATIONS["relu"] = shipped_relu

    out = summary(interleaved({name: functools.partial(round_of, name) for name in runs}, rounds), "fresh", "in_place")
    weights = [runs[name][0].state_dict() for name in runs]
    out["same_weights"] = all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    return out


def flat_adamw(rounds: int, steps: int) -> dict:
    config = shipped_recipe()[0]
    model = models.build(config.gamma, config.n_layers, seed=0, **config.arch)
    shapes = [p.shape for p in model.parameters() if p.requires_grad]
    generator = torch.Generator().manual_seed(0)
    start_values = [torch.randn(shape, generator=generator) * 0.05 for shape in shapes]
    grads = [[torch.randn(shape, generator=generator) * 0.01 for shape in shapes] for _ in range(steps)]
    per_tensor = [torch.nn.Parameter(v.clone()) for v in start_values]
    flat = torch.nn.Parameter(torch.cat([v.flatten() for v in start_values]))
    flat_grads = [torch.cat([g.flatten() for g in step_grads]) for step_grads in grads]
    kwargs = dict(lr=config.lr, betas=config.betas, eps=config.adam_eps, weight_decay=config.weight_decay)
    optimizers = {"per_tensor": torch.optim.AdamW(per_tensor, **kwargs), "flat": torch.optim.AdamW([flat], **kwargs)}

    def round_of(name: str):
        optimizer = optimizers[name]
        start = time.perf_counter()
        for step in range(steps):
            if name == "flat":
                flat.grad = flat_grads[step]
            else:
                for p, g in zip(per_tensor, grads[step]):
                    p.grad = g
            optimizer.step()
        return steps / (time.perf_counter() - start)

    out = summary(interleaved({name: functools.partial(round_of, name) for name in optimizers}, rounds), "per_tensor", "flat")
    out["same_weights"] = torch.equal(torch.cat([p.detach().flatten() for p in per_tensor]), flat.detach())
    out["parameters"] = flat.numel()
    return out


def compiled_step(rounds: int, steps: int) -> dict:
    config, fixed, runs = zoo_runs(("eager", "compiled"), steps, compiled=("compiled",))
    start = time.perf_counter()
    timed_steps(config, fixed[:2], *runs["compiled"][1:])  # compiles the forward and its backward
    compile_seconds = time.perf_counter() - start
    out = summary(interleaved({name: functools.partial(timed_steps, config, fixed, *run[1:]) for name, run in runs.items()}, rounds),
                  "eager", "compiled")
    out["first_two_steps_seconds"] = compile_seconds
    return out


def busy_sibling() -> subprocess.Popen:
    """A second process training the shipped step until killed: a sweep's other worker."""
    return subprocess.Popen([sys.executable, __file__, "--busy"], stdout=subprocess.DEVNULL)


def train_until_killed() -> None:
    config, fixed, runs = zoo_runs(("sibling",), 20)
    while True:
        timed_steps(config, fixed, *runs["sibling"][1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--compile", action="store_true", help="(c) too: a minute or more of compiling")
    parser.add_argument("--busy", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    keep_freed_memory()
    torch.set_num_threads(1)
    if args.busy:
        train_until_killed()
        return
    result = {"machine": describe(), "relu_in_place": relu_in_place(args.rounds, args.steps)}
    row = result["relu_in_place"]
    print(f"CPU: {result['machine']['cpu']} (bf16 matmuls: {result['machine']['bf16_matmul']}); one thread")
    print(f"(a) the step with ReLU in place {row['per_second']['in_place']:.1f} steps/s, with a fresh activation (shipped) "
          f"{row['per_second']['fresh']:.1f}: ratio {row['ratio']:.2f}x; the same weights: {row['same_weights']}")
    result["flat_adamw"] = row = flat_adamw(args.rounds, 5 * args.steps)
    print(f"(b) AdamW over one flat buffer of {row['parameters']:,} parameters {1e3 / row['per_second']['flat']:.2f} ms a step, "
          f"one update per tensor {1e3 / row['per_second']['per_tensor']:.2f} ms: ratio {row['ratio']:.2f}x; the same weights: {row['same_weights']}")
    if args.compile:
        result["compiled_step"] = row = compiled_step(args.rounds, args.steps)
        print(f"(c) alone: step with torch.compile {1e3 / row['per_second']['compiled']:.1f} ms, eager {1e3 / row['per_second']['eager']:.1f} ms: "
              f"ratio {row['ratio']:.2f}x; the first two compiled steps took {row['first_two_steps_seconds']:.0f} s")
        sibling = busy_sibling()
        try:
            time.sleep(5)  # the sibling imports torch and starts training
            result["compiled_step_beside_a_sibling"] = row = compiled_step(args.rounds, args.steps)
        finally:
            sibling.kill()
            sibling.wait()
        print(f"(c) beside a process training the eager step: step with torch.compile {1e3 / row['per_second']['compiled']:.1f} ms, "
              f"eager {1e3 / row['per_second']['eager']:.1f} ms: ratio {row['ratio']:.2f}x")
    write_text_atomic(RESULTS, json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
