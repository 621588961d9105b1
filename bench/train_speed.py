"""Training speed on this CPU, measured side by side in one run.

(a) steps per second of the project's training step (HookedTransformer parameters, fused
    last-position forward) in the shipped precision (bf16), in bf16 compiled by torch.compile
    (`--compiled`, not the zoo's recipe) and in fp32, against a plain hand-written fp32
    PyTorch transformer of the same shape, batch, optimizer, clipping and data: the ratios,
    interleaved in rounds so that machine noise hits all alike;
(b) wall time to reach each shipped reference solution from scratch with its recipe (the
    zoo card's, at the card's thread count), and the solution reached;
(c) models per hour on this machine for a sweep of the shipped recipe: a small sweep
    (the zoo's recipe at both zoo gammas, --sweep-seeds seeds each, one worker per core,
    one thread each);
(d) what the CPU's matmul units give: GFLOP/s of the step's largest matmul (the first
    MLP layer over every position) in fp32 and bf16 on one thread, interleaved. The bf16
    path's gain follows it: AMX (Intel) or AVX-512 BF16 only (AMD Zen 4) differ severalfold;
(e) what `keep_freed_memory` (glibc keeps freed blocks: no page faults) gives the shipped
    step on one thread: it is process-wide, so child processes with and without it
    alternate. (a)-(d) run with it, the plain loop included (so (a) does not credit it);
(f) where the step's time goes: its matmul FLOPs (forward and backward, counted by
    torch.utils.flop_counter) at (d)'s bf16 rate, against (e)'s one-thread step time. Near
    100%, the step runs at the speed of its matmuls and only fewer FLOPs or a faster matmul
    unit make it faster;
(g) `probes.classify`'s predictions in its chunks of 1024 prompts against its old chunks of
    8192, interleaved, on one thread with `keep_freed_memory` (as in a sweep's worker), on the
    shipped inferential model; the same predictions either way.

(c) also records each run's steps and seconds, so that models per hour splits into steps a
run, time a step and the per-run cost of classifying and probing.

The shipped recipe is the zoo cards' (`models/zoo/*/card.json`): (a) measures its shape.

    python bench/train_speed.py [--rounds 5] [--steps 40] [--sweep-seeds 5] [--skip-solutions]

Writes bench/results/train_speed.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from machine_info import describe
import torch.nn as nn
import torch.nn.functional as F

import models
from models.files import write_text_atomic
from models.sweep import results
from models.task import eval_sets
from models.train import TrainConfig, batches, fused_logits, fused_parameters, keep_freed_memory, make_optimizer, train_step, training_forward
from probes.solution import card_metrics, predict

RESULTS = Path(__file__).parent / "results" / "train_speed.json"
ZOO = ("inferential", "symmetric")


class PlainBlock(nn.Module):
    """A pre-LN block as one would write it by hand (nanoGPT style), no biases."""

    def __init__(self, d_model: int, n_heads: int, d_head: int, d_mlp: int):
        super().__init__()
        self.n_heads, self.d_head = n_heads, d_head
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * n_heads * d_head, bias=False)
        self.out = nn.Linear(n_heads * d_head, d_model, bias=False)
        self.mlp_in, self.mlp_out = nn.Linear(d_model, d_mlp, bias=False), nn.Linear(d_mlp, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [batch, pos, d_model]
        batch, pos, _ = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(batch, pos, 3, self.n_heads, self.d_head).permute(2, 0, 3, 1, 4)
        z = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [batch, head, pos, d_head]
        x = x + self.out(z.transpose(1, 2).reshape(batch, pos, -1))
        return x + self.mlp_out(F.relu(self.mlp_in(self.ln2(x))))


class PlainTransformer(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.embed = nn.Embedding(cfg["d_vocab"], cfg["d_model"])
        self.pos = nn.Parameter(torch.randn(cfg["n_ctx"], cfg["d_model"]) * 0.02)
        self.blocks = nn.ModuleList(PlainBlock(cfg["d_model"], cfg["n_heads"], cfg["d_head"], cfg["d_mlp"]) for _ in range(cfg["n_layers"]))
        self.ln_final = nn.LayerNorm(cfg["d_model"])
        self.unembed = nn.Linear(cfg["d_model"], cfg["d_vocab"], bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # [batch, pos] -> [batch, d_vocab]
        x = self.embed(tokens) + self.pos[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.unembed(self.ln_final(x))[:, -1]


def steps_per_second(config: TrainConfig, rounds: int, steps: int) -> dict:
    """Alternate `steps`-step rounds of both loops on the same batches; median rates."""
    plain = PlainTransformer(config.hooked_config())
    runners = {"plain_pytorch": (plain, make_optimizer(list(plain.parameters()), config))}
    for name, precision, compiled in (("bf16", "bf16", False), ("bf16_compiled", "bf16", True), ("fp32", "fp32", False)):
        ours = models.build(config.gamma, config.n_layers, seed=0, **config.arch)
        logits_fn = training_forward(ours, precision, compiled)  # compiled: round 0 (not timed) compiles
        runners[f"anchor_interp_{name}"] = (logits_fn, make_optimizer([p for p in ours.parameters() if p.requires_grad], config))
    data = batches(config)
    fixed = [next(data) for _ in range(steps)]
    rates: dict[str, list[float]] = {name: [] for name in runners}
    for round_index in range(rounds + 1):  # round 0 warms up
        for name, (logits_fn, (optimizer, schedule)) in runners.items():
            start = time.perf_counter()
            for tokens, labels in fixed:
                train_step(logits_fn, tokens, labels, optimizer, schedule, config.grad_clip)
            if round_index:
                rates[name].append(steps / (time.perf_counter() - start))
    median = {name: statistics.median(r) for name, r in rates.items()}
    return {
        "steps_per_second": median,
        "per_round": rates,
        "ratio_bf16_over_plain": median["anchor_interp_bf16"] / median["plain_pytorch"],
        "ratio_bf16_compiled_over_plain": median["anchor_interp_bf16_compiled"] / median["plain_pytorch"],
        "ratio_bf16_compiled_over_bf16": median["anchor_interp_bf16_compiled"] / median["anchor_interp_bf16"],
        "ratio_fp32_over_plain": median["anchor_interp_fp32"] / median["plain_pytorch"],
        "ratio_bf16_over_fp32": median["anchor_interp_bf16"] / median["anchor_interp_fp32"],
        "shipped_precision": config.precision,
        "batch_size": config.batch_size,
        "arch": config.hooked_config(),
    }


def matmul_rates(config: TrainConfig, rounds: int, repeats: int = 20) -> dict:
    """GFLOP/s of [batch * pos, d_model] x [d_model, d_mlp] on one thread, fp32 and bf16,
    interleaved; medians over rounds."""
    cfg = config.hooked_config()
    m, k, n = config.batch_size * cfg["n_ctx"], cfg["d_model"], cfg["d_mlp"]
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rates: dict[str, list[float]] = {"fp32": [], "bf16": []}
    try:
        operands = {name: (torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)) for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
        for round_index in range(rounds + 1):  # round 0 warms up
            for name, (a, b) in operands.items():
                start = time.perf_counter()
                for _ in range(repeats):
                    a @ b
                if round_index:
                    rates[name].append(2 * m * k * n * repeats / (time.perf_counter() - start) / 1e9)
    finally:
        torch.set_num_threads(previous_threads)
    median = {name: statistics.median(r) for name, r in rates.items()}
    return {"shape": [m, k, n], "gflops_per_second": median, "ratio_bf16_over_fp32": median["bf16"] / median["fp32"]}


def step_matmul_share(config: TrainConfig, matmul: dict, one_thread: dict[str, float]) -> dict:
    """(f): the shipped step's matmul GFLOP (forward and backward), the time they take at
    (d)'s bf16 rate, and their share of (e)'s one-thread step."""
    model = models.build(config.gamma, config.n_layers, seed=0, **config.arch)
    params = fused_parameters(model)
    tokens, labels = next(batches(config))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(fused_logits(params, model.cfg, tokens, config.precision), labels).backward()
    gflop = counter.get_total_flops() / 1e9
    matmul_ms, step_ms = 1e3 * gflop / matmul["gflops_per_second"]["bf16"], 1e3 / one_thread["steps_per_second"]
    return {"step_matmul_gflop": gflop, "matmul_ms_at_bf16_rate": matmul_ms, "step_ms_one_thread": step_ms, "matmul_share": matmul_ms / step_ms}


def child_step_rate(kept_freed_memory: bool, steps: int) -> dict[str, float]:
    """(e)'s child: steps/s of the shipped step on one thread, with or without
    `keep_freed_memory`, after 10 warm-up steps; and its page faults and kernel time a step."""
    torch.set_num_threads(1)
    kept = kept_freed_memory and keep_freed_memory()
    config = shipped_recipe()[0]
    ours = models.build(config.gamma, config.n_layers, seed=0, **config.arch)
    logits_fn = training_forward(ours, config.precision)
    optimizer, schedule = make_optimizer([p for p in ours.parameters() if p.requires_grad], config)
    data = batches(config)
    fixed = [next(data) for _ in range(steps + 10)]
    for index, (tokens, labels) in enumerate(fixed):
        if index == 10:
            start, usage = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        train_step(logits_fn, tokens, labels, optimizer, schedule, config.grad_clip)
    seconds, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    return {"steps_per_second": steps / seconds, "page_faults_per_step": (after.ru_minflt - usage.ru_minflt) / steps,
            "kernel_share": (after.ru_stime - usage.ru_stime) / seconds, "kept_freed_memory": float(kept)}


def allocator_gain(rounds: int, steps: int) -> dict:
    """(e): child processes with and without `keep_freed_memory`, alternating (which goes
    first alternates too); medians."""
    runs: dict[str, list[dict[str, float]]] = {"default_malloc": [], "kept_freed_memory": []}
    for round_index in range(rounds):
        for name in sorted(runs, reverse=bool(round_index % 2)):
            child = [sys.executable, __file__, "--child-step-rate", name, "--steps", str(steps)]
            runs[name].append(json.loads(subprocess.run(child, check=True, capture_output=True, text=True).stdout.splitlines()[-1]))
    median = {name: {key: statistics.median(run[key] for run in r) for key in r[0]} for name, r in runs.items()}
    return {"median": median, "per_round": runs,
            "ratio": median["kept_freed_memory"]["steps_per_second"] / median["default_malloc"]["steps_per_second"]}


def time_to_solution(name: str) -> dict:
    card = models.card(name)
    config = TrainConfig.from_recipe(card["recipe"], card["seed"])
    # The card's thread count too: float summation order, hence the trajectory, depends on it.
    threads = card.get("threads") or torch.get_num_threads()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            _, new_card = models.train_to_folder(config, Path(tmp) / name, card_metrics, progress=True)
            wall = time.perf_counter() - start
    finally:
        torch.set_num_threads(previous_threads)
    m = new_card["metrics"]
    return {
        "command": card["command"],
        "wall_seconds": wall,
        "torch_threads": threads,
        "steps": new_card["steps"],
        "label": m["label"],
        "seen_test_keys": m["seen_test_keys"],
        "inferential_test_keys": m["inferential_test_keys"],
        "symmetric_test_keys": m["symmetric_test_keys"],
        "shipped_label": card["metrics"]["label"],
    }


def shipped_recipe() -> tuple[TrainConfig, list[float]]:
    """The zoo's recipe (its cards differ only in gamma) and the zoo's gammas."""
    cards = [models.card(name) for name in ZOO]
    return TrainConfig.from_recipe(cards[0]["recipe"], cards[0]["seed"]), [card["gamma"] for card in cards]


def models_per_hour(n_seeds: int) -> dict:
    from interp.sweep import available_cores, run_sweep
    from models.sweep import SweepSpec

    cores = available_cores()
    config, gammas = shipped_recipe()
    spec = SweepSpec.build({"seed": [9000 + i for i in range(n_seeds)], "gamma": gammas}, {**config.departures(), **config.arch})
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        summary = run_sweep(spec, Path(tmp) / "bench.db", workers=cores, threads=1)
        seconds = time.perf_counter() - start
        rows = [row for row in results(Path(tmp) / "bench.db")[1] if row["status"] == "done"]
    runs = [{"gamma": row["gamma"], "seed": row["seed"], "label": row["label"], "steps": row["steps"],
             "train_seconds": row["train_seconds"], "wall_seconds": row["wall_seconds"]} for row in rows]
    steps, train_seconds = sum(r["steps"] for r in runs), sum(r["train_seconds"] for r in runs)
    return {"models": summary.done, "failed": summary.failed, "seconds": seconds, "cores": cores, "workers": cores,
            "models_per_hour": 3600 * summary.done / seconds,
            "mean_steps": steps / max(1, len(runs)), "ms_per_step": 1e3 * train_seconds / max(1, steps),
            "mean_probe_seconds": sum(r["wall_seconds"] - r["train_seconds"] for r in runs) / max(1, len(runs)), "runs": runs}


def chunked_classify(rounds: int) -> dict:
    """(g): one thread, `keep_freed_memory` on: classify's predictions over its evaluation sets
    in chunks of 8192 and of 1024 prompts (its default), interleaved; medians in ms, and
    whether the predictions agree."""
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    model, sets = models.load("inferential"), eval_sets(models.AnchorTask(), 4)
    ms: dict[int, list[float]] = {8192: [], 1024: []}
    answers = {}
    try:
        for round_index in range(rounds + 1):  # round 0 warms up
            for chunk in ms:
                start = time.perf_counter()
                answers[chunk] = [predict(model, batch.tokens, chunk) for batch in sets.values()]
                if round_index:
                    ms[chunk].append(1e3 * (time.perf_counter() - start))
    finally:
        torch.set_num_threads(previous_threads)
    median = {chunk: statistics.median(t) for chunk, t in ms.items()}
    return {"ms": median, "per_round": ms, "ratio": median[8192] / median[1024],
            "same_predictions": all(torch.equal(a, b) for a, b in zip(answers[8192], answers[1024]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--sweep-seeds", type=int, default=5, help="(c): seeds per gamma in the timed sweep (5: ten runs; fewer say little, since a run takes 700-3000 steps)")
    parser.add_argument("--skip-solutions", action="store_true", help="only the steps/s ratios")
    parser.add_argument("--child-step-rate", choices=("default_malloc", "kept_freed_memory"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_step_rate:
        print(json.dumps(child_step_rate(args.child_step_rate == "kept_freed_memory", args.steps)))
        return

    allocator = allocator_gain(args.rounds, args.steps)
    allocator["this_process_kept_freed_memory"] = keep_freed_memory()  # for (a)-(d)

    result = {
        "machine": describe(),
        "speed": steps_per_second(shipped_recipe()[0], args.rounds, args.steps),
    }
    result["matmul"] = matmul_rates(shipped_recipe()[0], args.rounds)
    result["allocator"] = allocator
    speed, matmul = result["speed"], result["matmul"]
    rate = speed["steps_per_second"]
    print(f"CPU: {result['machine']['cpu']} (bf16 matmuls: {result['machine']['bf16_matmul']}); one thread, "
          f"[{' x '.join(map(str, matmul['shape'][:2]))}] x [{' x '.join(map(str, matmul['shape'][1:]))}]: "
          f"fp32 {matmul['gflops_per_second']['fp32']:.0f}, bf16 {matmul['gflops_per_second']['bf16']:.0f} GFLOP/s "
          f"(bf16 over fp32 {matmul['ratio_bf16_over_fp32']:.2f}x)")
    print(f"steps/s ({torch.get_num_threads()} thread(s)): anchor-interp bf16 {rate['anchor_interp_bf16']:.1f}, "
          f"fp32 {rate['anchor_interp_fp32']:.1f}; plain PyTorch fp32 {rate['plain_pytorch']:.1f}")
    print(f"steps/s compiled bf16 (--compiled): {rate['anchor_interp_bf16_compiled']:.1f}")
    print(f"ratio shipped path (bf16) over plain PyTorch fp32 {speed['ratio_bf16_over_plain']:.2f}x "
          f"(fp32 path {speed['ratio_fp32_over_plain']:.2f}x; bf16 over fp32 {speed['ratio_bf16_over_fp32']:.2f}x)")
    fastest = max(("bf16", "bf16_compiled"), key=lambda name: rate[f"anchor_interp_{name}"])
    print(f"ratio fastest shipped path ({fastest}) over plain PyTorch fp32 {speed[f'ratio_{fastest}_over_plain']:.2f}x "
          f"(compiled over eager bf16 {speed['ratio_bf16_compiled_over_bf16']:.2f}x)")
    kept, default = allocator["median"]["kept_freed_memory"], allocator["median"]["default_malloc"]
    print(f"shipped step, 1 thread: keep_freed_memory {kept['steps_per_second']:.1f} steps/s ({kept['page_faults_per_step']:.0f} page faults "
          f"a step, {kept['kernel_share']:.0%} in the kernel), glibc's default {default['steps_per_second']:.1f} "
          f"({default['page_faults_per_step']:.0f}, {default['kernel_share']:.0%}): ratio {allocator['ratio']:.2f}x")
    result["where_the_time_goes"] = share = step_matmul_share(shipped_recipe()[0], matmul, kept)
    print(f"where the time goes: the step's matmuls are {share['step_matmul_gflop']:.2f} GFLOP (forward and backward); at the bf16 "
          f"rate above they take {share['matmul_ms_at_bf16_rate']:.1f} ms of the one-thread step's {share['step_ms_one_thread']:.1f} ms "
          f"(matmul share {share['matmul_share']:.0%})")
    result["chunked_classify"] = row = chunked_classify(args.rounds)
    print(f"classify's predictions, 1 thread: chunks of 8192 prompts {row['ms'][8192]:.0f} ms, of 1024 {row['ms'][1024]:.0f} ms: "
          f"ratio {row['ratio']:.2f}x (the same predictions: {row['same_predictions']})")
    if not args.skip_solutions:
        result["time_to_solution"] = {}
        for name in ZOO:
            row = time_to_solution(name)
            result["time_to_solution"][name] = row
            print(f"{name:12s} {row['wall_seconds']:.0f} s wall ({row['torch_threads']} thread(s)), {row['steps']} steps -> {row['label']} "
                  f"(seen {row['seen_test_keys']:.3f}, (4,3) inferential {row['inferential_test_keys']:.3f}, "
                  f"symmetric {row['symmetric_test_keys']:.3f})")
    if not args.skip_solutions:
        sweep = models_per_hour(args.sweep_seeds)
        result["sweep"] = sweep
        print(f"sweep of the shipped recipe: {sweep['models']} models in {sweep['seconds']:.0f} s on {sweep['cores']} cores "
              f"({sweep['workers']} workers x 1 thread): {sweep['models_per_hour']:.0f} models per hour; a run: {sweep['mean_steps']:.0f} "
              f"steps on average at {sweep['ms_per_step']:.1f} ms a step (evaluations included), then {sweep['mean_probe_seconds']:.1f} s "
              f"classifying and probing")
        for run in sweep["runs"]:
            print(f"  gamma {run['gamma']} seed {run['seed']}: {run['label']}, {run['steps']} steps, {run['train_seconds']:.0f} s training, "
                  f"{run['wall_seconds']:.0f} s in all")
    write_text_atomic(RESULTS, json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
