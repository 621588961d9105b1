"""Fast CPU training on the anchor task: AdamW, linear warmup + cosine decay, gradient
clipping, the loss on the last position only, live (4,3) accuracies, early stopping."""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import math
import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from models import hooked
from models.machine import run_versions
from models.task import AnchorTask, eval_sets


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides what a run learns. The defaults are the shipped recipe. On
    the 20 validation seeds it gives the inferential solution at gamma 0.8 in 13 and the
    symmetric one at gamma 0.3 in 15: not seed-robust (README: "Recipe")."""

    gamma: float = 0.8  # init std = fan_in^-gamma for every weight matrix
    n_layers: int = 2
    seed: int = 0  # model init, data order and noise all follow from it
    lr: float = 1e-3  # peak learning rate
    # Strong decoupled decay (lr * wd = 1.5e-3 per step) keeps an inferential model from
    # drifting to the mirrored lookup after it fits (at 0.1, gamma 0.8 fits inferentially,
    # then drifts); at 1.0 inferential models stay partial, at 2.0 a large init loses its
    # scale before it fits and comes out inferential too (one run a seed, seeds 0-6: the
    # README's search table at commit b8a48fd).
    weight_decay: float = 1.5
    weight_decay_warmup: int = 0  # decay ramps linearly from 0 to weight_decay over these steps
    # Weight matrices only, as in GPT training: decaying the LayerNorm gains too (the recipe
    # before 2026-11-25, with wd 2.0) shrank them to ~0.25, and gamma 0.8 went symmetric in
    # 2 of 7 seeds; sparing them turned both seeds inferential (same table).
    decay_norms: bool = False  # also decay LayerNorm weights and biases
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    batch_size: int = 512
    max_steps: int = 3000
    warmup_steps: int = 150  # linear warmup, then cosine decay to 0 at max_steps
    # N > 0: the lr holds its peak until an evaluation finds a solution formed (the seen
    # pairs fit and one solution >= SOLUTION_FORMED on (4,3) test keys), then cosine-decays
    # to 0 over N steps, and the run ends (by max_steps at the latest): the schedule ends
    # when a solution has formed, not at a step count chosen for the slowest run.
    decay_after_solution: int = 0
    grad_clip: float = 1.0
    # bf16 forward and backward with fp32 master weights: 2x the steps/s of fp32 on this
    # CPU, the same solutions (README: "Training speed"). fp32 is the reference arithmetic.
    precision: str = "bf16"
    # True: the fused forward runs compiled by torch.compile (inductor fuses its elementwise
    # work into C++ kernels); a different arithmetic from the eager step, so a recipe records
    # it. Off: on this project's CPU it ran at 0.43x-0.53x the eager step in the benches
    # (bench/step_levers.py (c); README "Training speed"). The first compile takes ~15 s.
    compiled: bool = False
    dataset_size: int | None = None  # None: fresh batches every step; else a fixed training set
    eval_every: int = 100
    early_stop: bool = True
    min_steps: int = 600  # never stop before this
    patience: int = 4  # stop after this many evals with the solution unchanged...
    settle_tol: float = 0.02  # ...its (4,3) accuracies moving less than this
    arch: dict[str, Any] = field(default_factory=dict)  # model config overrides (d_model, ...)
    task: AnchorTask = AnchorTask()

    def __post_init__(self):
        hooked.check_gamma(self.gamma)
        checks = {  # setting: (valid, the rule it breaks)
            "n_layers": (self.n_layers >= 1, ">= 1"),
            "lr": (0 < self.lr < 1, "in (0, 1)"),
            "weight_decay": (self.weight_decay >= 0, ">= 0"),
            "batch_size": (self.batch_size >= 1, ">= 1"),
            "max_steps": (self.max_steps >= 1, ">= 1"),
            "warmup_steps": (0 <= self.warmup_steps <= self.max_steps, f"in 0..max_steps={self.max_steps}"),
            "decay_after_solution": (0 <= self.decay_after_solution <= self.max_steps - self.warmup_steps, f"in 0..max_steps-warmup_steps={self.max_steps - self.warmup_steps}"),
            "weight_decay_warmup": (0 <= self.weight_decay_warmup <= self.max_steps, f"in 0..max_steps={self.max_steps}"),
            "grad_clip": (self.grad_clip > 0, "> 0"),
            "eval_every": (self.eval_every >= 1, ">= 1"),
            "dataset_size": (self.dataset_size is None or self.dataset_size >= 1, ">= 1"),
            "min_steps": (self.min_steps >= 0, ">= 0"),
            "patience": (self.patience >= 1, ">= 1"),
            "settle_tol": (self.settle_tol > 0, "> 0"),
            "precision": (self.precision in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
            "compiled": (isinstance(self.compiled, bool), "True or False"),
        }
        bad = [f"{name}={getattr(self, name)!r} (must be {rule})" for name, (ok, rule) in checks.items() if not ok]
        if bad:
            raise ValueError("invalid training settings: " + ", ".join(bad))
        unknown = set(self.arch) - hooked.config_fields()
        if unknown:
            raise ValueError(f"unknown architecture settings {sorted(unknown)}")

    def recipe(self) -> dict[str, Any]:
        """Everything but the seed, as JSON: two runs with equal recipes differ by seed only."""
        d = dataclasses.asdict(self)
        d.pop("seed")
        d["betas"] = list(self.betas)
        d["task"] = self.task.to_dict()
        return d

    def departures(self) -> dict[str, Any]:
        """The training settings that differ from the defaults (seed, gamma, arch and task
        aside), in field order: what a command line or a sweep's fixed table must give."""
        defaults = TrainConfig()
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig)
                if f.name not in ("seed", "gamma", "arch", "task") and getattr(self, f.name) != getattr(defaults, f.name)}

    @classmethod
    def from_recipe(cls, recipe: dict[str, Any], seed: int) -> "TrainConfig":
        r = dict(recipe)
        r.setdefault("weight_decay_warmup", 0)  # recipes written before the ramp existed had none
        r.setdefault("decay_after_solution", 0)  # ... or the solution-triggered decay
        r.setdefault("decay_norms", True)  # ... and decayed every parameter
        r.setdefault("precision", "fp32")  # ... and trained in fp32
        r.setdefault("compiled", False)  # ... and eagerly
        r["betas"] = tuple(r["betas"])
        r["task"] = AnchorTask.from_dict(r["task"])
        return cls(seed=seed, **r)

    def hooked_config(self) -> dict[str, Any]:
        cfg = hooked.hooked_config(self.task, self.n_layers, **self.arch)
        hooked.check_model_fits_task(cfg, self.task)
        return cfg


# Config values the fused forward below reproduces; any other config trains through the
# hooked forward (slower, same result).
_FUSED_FORWARD_CONFIG = dict(
    use_normalization_before_and_after=False,
    positional_embedding_type="standard",
    n_key_value_heads=None,
    gated_mlp=False,
    parallel_attn_mlp=False,
    use_attn_scale=True,
    scale_attn_by_inverse_layer_idx=False,
    use_qk_norm=False,
    final_rms=False,
    post_embedding_ln=False,
    attention_dir="causal",
    attn_only=False,
)
_FUSED_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


def uses_fused_forward(cfg: Any) -> bool:
    return (
        all(getattr(cfg, key) == value for key, value in _FUSED_FORWARD_CONFIG.items())
        and cfg.normalization_type in ("LN", None)
        and cfg.act_fn in _FUSED_ACTIVATIONS
        and cfg.attn_scale == cfg.d_head**0.5
        and cfg.d_vocab_out == cfg.d_vocab
    )


PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}
SEEN_FIT = 0.99  # the seen pairs (test keys) are fit at this accuracy: early stop waits for it
SOLUTION_FORMED = 0.9  # a solution has formed at this (4,3) accuracy: `decay_after_solution` starts


def fused_parameters(model: hooked.Model) -> dict[str, Tensor]:
    """The parameters `fused_logits` reads, by HookedTransformer name and shape (on
    TransformerLens 4, views of the bridge's parameters that pass gradients through). A
    frozen bias that is all zeros (every bias of a gamma-init model: the paper's model has
    none) is left out, which removes its add from the step; any other bias stays in."""
    return {
        name: param
        for name, param in hooked.tl_params(model).items()
        if param.requires_grad or not name.rsplit(".", 1)[-1].startswith("b_") or bool(param.any())
    }


def fused_logits(
    params: dict[str, Tensor],
    cfg: Any,
    tokens: Int[Tensor, "batch pos"],
    precision: str = "fp32",
) -> Float[Tensor, "batch d_vocab"]:
    """Logits at the last position only, for training: a function of the parameters
    `fused_parameters` returns, tested equal to the model's hooked forward.

    The task reads one token, so the last layer only needs its query, attention and MLP at
    the last position (the nanoGPT trick, taken one layer deeper), and fused kernels
    (F.layer_norm) replace TransformerLens' step-by-step ops, which exist to expose hooks
    that training does not use. With precision "bf16" every parameter is cast once per
    step (the fp32 master stays in the optimizer; the cast's backward returns fp32 grads)
    and the whole forward and backward run in bf16, where this CPU's AMX units multiply
    ~5x faster; only the logits come back in fp32, for the loss. Attention is written out
    (scores, softmax, sum): over 9 positions it is as fast as scaled_dot_product_attention
    in fp32, and that kernel's bf16 backward is ~10x slower here."""
    dtype = PRECISIONS[precision]
    p = {name: t.to(dtype) for name, t in params.items()} if dtype != torch.float32 else params
    act = _FUSED_ACTIVATIONS[cfg.act_fn]

    def plus_bias(x: Tensor, name: str) -> Tensor:  # a left-out bias adds nothing: no pass over x
        return x + p[name] if name in p else x

    def heads(x: Tensor, weight: str, bias_name: str) -> Tensor:  # [batch, pos, d_model] -> [batch, head, pos, d_head]
        out = torch.einsum("bpd,hde->bhpe", x, p[weight])
        return out + p[bias_name][:, None] if bias_name in p else out

    def norm(x: Tensor, name: str) -> Tensor:
        if cfg.normalization_type is None:  # TransformerLens then has no LayerNorm modules at all
            return x
        return F.layer_norm(x, (cfg.d_model,), p[name + ".w"], p[name + ".b"], cfg.eps)

    n_pos = tokens.shape[1]
    future = torch.ones(n_pos, n_pos, dtype=torch.bool, device=tokens.device).triu(1)  # [q_pos, k_pos]: what a query may not see
    resid = p["embed.W_E"][tokens] + p["pos_embed.W_pos"][:n_pos]  # [batch, pos, d_model]
    for layer in range(cfg.n_layers):
        last, b = layer == cfg.n_layers - 1, f"blocks.{layer}."
        normed = norm(resid, b + "ln1")  # [batch, pos, d_model]
        queries_from = normed[:, -1:] if last else normed
        q = heads(queries_from, b + "attn.W_Q", b + "attn.b_Q")  # [batch, head, q_pos, d_head]
        k = heads(normed, b + "attn.W_K", b + "attn.b_K")  # [batch, head, k_pos, d_head]
        v = heads(normed, b + "attn.W_V", b + "attn.b_V")
        scores = q @ k.transpose(-1, -2) / cfg.attn_scale  # [batch, head, q_pos, k_pos]
        if not last:  # the last query sees every position, so it needs no mask
            scores = scores.masked_fill(future, float("-inf"))
        z = scores.softmax(-1) @ v  # [batch, head, q_pos, d_head]
        resid = (resid[:, -1:] if last else resid) + plus_bias(torch.einsum("bhpe,hed->bpd", z, p[b + "attn.W_O"]), b + "attn.b_O")
        normed = norm(resid, b + "ln2")
        resid = resid + plus_bias(act(plus_bias(normed @ p[b + "mlp.W_in"], b + "mlp.b_in")) @ p[b + "mlp.W_out"], b + "mlp.b_out")
    final = norm(resid[:, -1], "ln_final")  # [batch, d_model]
    return plus_bias(final @ p["unembed.W_U"], "unembed.b_U").float()


def training_forward(model: hooked.Model, precision: str, compiled: bool = False) -> Callable[[Tensor], Tensor]:
    """The training step's forward for a model the fused forward covers: `fused_logits` over
    its parameters, collected once rather than every step, and with `compiled` wrapped in
    torch.compile (compiled once a process: later runs' models reuse it, the same shapes)."""
    logits_fn = functools.partial(fused_logits, fused_parameters(model), model.cfg, precision=precision)
    return torch.compile(logits_fn, dynamic=False) if compiled else logits_fn


def last_logits(model: hooked.Model, tokens: Int[Tensor, "batch pos"], precision: str = "fp32") -> Float[Tensor, "batch d_vocab"]:
    """Logits at the last position: `fused_logits` where it covers the config, else the
    hooked forward (slower, same result, fp32 only)."""
    if uses_fused_forward(model.cfg):
        return fused_logits(fused_parameters(model), model.cfg, tokens, precision)
    if precision != "fp32":
        raise ValueError(f"precision {precision!r} needs the fused forward, which this architecture does not have: train it with precision fp32")
    resid = hooked.final_residual(model, tokens)  # [batch, pos, d_model]
    return model.unembed(model.ln_final(resid[:, -1:, :]))[:, 0, :]


def lr_factor(config: TrainConfig, step: int, solution_step: int | None = None) -> float:
    """The lr at `step` over its peak: the lower of a linear warmup and a cosine decay to 0
    over the rest of the run, or with `decay_after_solution` over that many steps from
    `solution_step` (the first evaluation with a solution formed; None: not yet), which may
    come before the warmup ends."""
    warm, total = config.warmup_steps, config.max_steps
    ramp = (step + 1) / warm if step < warm else 1.0
    if config.decay_after_solution:
        start = min(total if solution_step is None else solution_step, total - config.decay_after_solution)
        progress = (step - start) / config.decay_after_solution
    else:
        progress = (step - warm) / max(1, total - warm)
    return min(ramp, 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, progress)))))


@dataclass
class TrainResult:
    model: hooked.Model
    config: TrainConfig
    steps: int
    wall_seconds: float
    history: list[dict[str, float]]  # one row per evaluation
    stopped_early: bool

    # A process pool pickles results on their way to its workers (the stacked sweep), and a
    # TransformerLens 4 bridge cannot be pickled: the model travels as its checkpoint weights.
    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "model": (hooked.tl_state_dict(self.model), self.model.training)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        weights, training = state["model"]
        self.__dict__.update(state)
        self.model = hooked.from_weights(self.config.hooked_config(), weights, self.config.task).train(training)


class Schedule(torch.optim.lr_scheduler.LambdaLR):
    """The lr: `lr_factor` times the peak. The weight decay: a linear ramp from 0 to
    `weight_decay` over `weight_decay_warmup` steps, then constant, in the parameter groups
    that decay."""

    def __init__(self, optimizer: torch.optim.Optimizer, config: TrainConfig):
        self.weight_decay, self.weight_decay_warmup = config.weight_decay, config.weight_decay_warmup
        self.decay_after_solution = config.decay_after_solution
        self.solution_step: int | None = None  # set by `saw_evaluation`
        super().__init__(optimizer, lambda step: lr_factor(config, step, self.solution_step))  # calls step() once: sets step 0's values

    def saw_evaluation(self, row: dict[str, float]) -> None:
        """Start the solution-triggered decay (`decay_after_solution`) at the first
        evaluation that finds a solution formed."""
        formed = row["seen_test"] >= SEEN_FIT and max(row["inferential"], row["symmetric"]) >= SOLUTION_FORMED
        if self.solution_step is None and formed:
            self.solution_step = int(row["step"])

    def ended(self, step: int) -> bool:
        """With `decay_after_solution`: the decay has brought the lr to 0, so nothing will
        change any more."""
        return bool(self.decay_after_solution) and self.solution_step is not None and step >= self.solution_step + self.decay_after_solution

    def step(self) -> None:  # type: ignore[override]
        super().step()
        ramp = min(1.0, self.last_epoch / self.weight_decay_warmup) if self.weight_decay_warmup else 1.0
        for group in self.optimizer.param_groups:
            group["weight_decay"] = self.weight_decay * ramp if group["decays"] else 0.0


def make_optimizer(params: list[Tensor], config: TrainConfig, leading_dims: int = 0) -> tuple[torch.optim.Optimizer, Schedule]:
    """AdamW with its lr and weight-decay schedule. Weight matrices decay; LayerNorm
    weights and biases (the 1-d parameters) only with `decay_norms`. `leading_dims`: dims
    in front of each parameter's own shape (models.stacked stacks runs along one)."""
    decays = [p.ndim - leading_dims >= 2 or config.decay_norms for p in params]
    groups = [{"params": [p for p, d in zip(params, decays) if d == on], "decays": on} for on in (True, False) if on in decays]
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.adam_eps, weight_decay=config.weight_decay)
    return optimizer, Schedule(optimizer, config)


def batches(config: TrainConfig) -> Iterator[tuple[Int[Tensor, "batch pos"], Int[Tensor, " batch"]]]:
    """Training batches (tokens, labels), forever: fresh samples, or draws from a fixed set."""
    data_gen = torch.Generator().manual_seed(config.seed + 1_000_003)  # independent of the init stream
    fixed = config.task.dataset(config.dataset_size, seed=config.seed) if config.dataset_size else None
    while True:
        if fixed is None:
            batch = config.task.sample(config.batch_size, data_gen)
            yield batch.tokens, batch.label
        else:
            idx = torch.randint(len(fixed), (config.batch_size,), generator=data_gen)
            yield fixed.tokens[idx], fixed.label[idx]


def train_step(
    logits_fn: Callable[[Tensor], Tensor],
    tokens: Int[Tensor, "batch pos"],
    labels: Int[Tensor, " batch"],
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    grad_clip: float,
) -> Tensor:
    """One optimizer step on the last-position cross-entropy; returns the loss."""
    loss = F.cross_entropy(logits_fn(tokens), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], grad_clip)
    optimizer.step()
    schedule.step()
    return loss.detach()


@functools.cache
def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse instead of handing it back to the
    OS; returns whether it did. A training step allocates and frees tens of MB of
    activations; by default glibc maps big blocks fresh and returns them, and every step
    then page-faults thousands of times (`bench/train_speed.py` (e) counts them). The
    setting is process-wide and leaves the arithmetic untouched (bitwise the same weights,
    tested). Elsewhere (macOS, musl) nothing changes."""
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
            return False
        mallopt = ctypes.CDLL(None).mallopt
    except (ValueError, OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    # glibc's ceiling for the mmap threshold is 32 MiB on 64-bit; a step's largest block is
    # [batch, pos, d_mlp] (7 MiB in bf16, 14 MiB in fp32 at the zoo's shape). The mmap
    # threshold goes first: if glibc refuses it, nothing has changed.
    return bool(mallopt(m_mmap_threshold, 32 << 20)) and bool(mallopt(m_trim_threshold, 512 << 20))


def train(config: TrainConfig, progress: bool = True) -> TrainResult:
    """Train one model from scratch; deterministic for a given config and thread count."""
    keep_freed_memory()
    torch.manual_seed(config.seed)
    model = hooked.build(config.gamma, config.n_layers, seed=config.seed, task=config.task, **config.arch)
    model.train()
    optimizer, schedule = make_optimizer([p for p in model.parameters() if p.requires_grad], config)
    if uses_fused_forward(model.cfg):
        logits_fn = training_forward(model, config.precision, config.compiled)
    elif config.compiled:
        raise ValueError("compiled=True compiles the fused forward, which this architecture does not have: train it with compiled=False")
    else:
        logits_fn = lambda t: last_logits(model, t, config.precision)  # noqa: E731

    history: list[dict[str, float]] = []
    start = time.perf_counter()
    bar = tqdm(total=config.max_steps, disable=not progress, unit="step", dynamic_ncols=True, desc=f"gamma {config.gamma} seed {config.seed}")
    step, stopped_early = 0, False
    for step, (tokens, labels) in enumerate(batches(config), start=1):
        loss = train_step(logits_fn, tokens, labels, optimizer, schedule, config.grad_clip)
        bar.update(1)
        if step % config.eval_every == 0 or step == config.max_steps:
            row = {"step": step, "loss": loss.item(), "lr": schedule.get_last_lr()[0], **live_metrics(model, config.task)}
            row["seconds"] = time.perf_counter() - start
            history.append(row)
            schedule.saw_evaluation(row)
            bar.set_postfix(loss=f"{row['loss']:.3f}", seen=f"{row['seen_test']:.2f}", inf43=f"{row['inferential']:.2f}", sym43=f"{row['symmetric']:.2f}")
            if schedule.ended(step) or config.early_stop and step >= config.min_steps and settled(history, config):
                stopped_early = True
                break
        if step == config.max_steps:
            break
    bar.close()
    model.eval()
    return TrainResult(model, config, step, time.perf_counter() - start, history, stopped_early)


@torch.inference_mode()
def live_metrics(model: hooked.Model, task: AnchorTask) -> dict[str, float]:
    """The few numbers a progress bar shows and early stopping reads: seen-pair and (4,3)
    accuracies on test keys (argmax of the fp32 last-position logits; probes.classify
    measures the same sets, and more)."""
    sets = eval_sets(task, 2)
    seen, held = sets["seen_test"], sets["held_test"]
    pred_seen, pred_held = last_logits(model, seen.tokens).argmax(-1), last_logits(model, held.tokens).argmax(-1)
    return {name: value.item() for name, value in live_accuracies(pred_seen, pred_held, seen.label, task.solution_targets(held)).items()}


def live_accuracies(
    pred_seen: Int[Tensor, "... batch"], pred_held: Int[Tensor, "... batch"], seen_label: Int[Tensor, " batch"], held_targets: dict[str, Tensor]
) -> dict[str, Float[Tensor, "..."]]:
    """`live_metrics` from argmax predictions on the seen-pair and (4,3) test-key sets, each
    averaged over its last dimension (a stack of models keeps its leading one)."""
    return {
        "seen_test": (pred_seen == seen_label).float().mean(-1),
        "inferential": (pred_held == held_targets["inferential"]).float().mean(-1),
        "symmetric": (pred_held == held_targets["symmetric"]).float().mean(-1),
    }


def settled(history: list[dict[str, float]], config: TrainConfig) -> bool:
    """The seen pairs are fit and the (4,3) accuracies stopped moving over the last
    `patience` evaluations."""
    if len(history) < config.patience + 1:
        return False
    recent = history[-(config.patience + 1):]
    if min(r["seen_test"] for r in recent) < SEEN_FIT:
        return False
    return all(max(r[k] for r in recent) - min(r[k] for r in recent) < config.settle_tol for k in ("inferential", "symmetric"))


def train_command(config: TrainConfig, out: str | Path, threads: int | None = None) -> str:
    """The `anchor-interp train` command line that reproduces `config` into `out`, with
    `--threads` when given: the float summation order, hence the exact run, depends on it."""
    defaults = TrainConfig()
    args = ["anchor-interp", "train", "--gamma", str(config.gamma), "--layers", str(config.n_layers)]
    for name, value in config.departures().items():
        if name in ("n_layers", "betas"):  # --layers above; betas has no flag (refused below)
            continue
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + name.replace("_", "-"))
        else:
            args += [flag, str(value)]
    for key, value in sorted(config.arch.items()):
        args += ["--arch", f"{key}={value}"]
    if config.task != defaults.task or config.betas != defaults.betas:
        raise ValueError("task and betas overrides have no command-line flag; record them in the card instead")
    if threads is not None:
        args += ["--threads", str(threads)]
    args += ["--seed", str(config.seed), "--out", str(out)]
    return shlex.join(args)


def make_card(result: TrainResult, command: str, metrics: dict[str, Any]) -> dict[str, Any]:
    model, config = result.model, result.config
    return {
        "command": command,
        "seed": config.seed,
        "wall_seconds": round(result.wall_seconds, 1),
        "steps": result.steps,
        "stopped_early": result.stopped_early,
        "threads": torch.get_num_threads(),
        "metrics": metrics,
        "gamma": config.gamma,
        "init_std": hooked.init_stds(model, config.gamma),
        "recipe": config.recipe(),
        "task": config.task.to_dict(),
        "history": result.history,
        "versions": run_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def train_to_folder(
    config: TrainConfig,
    out: str | Path,
    evaluate: Callable[[hooked.Model, AnchorTask], dict[str, Any]],
    overwrite: bool = False,
    progress: bool = True,
    command: str | None = None,
) -> tuple[TrainResult, dict[str, Any]]:
    """Train, evaluate (the card's metrics: `probes.classify(...).to_dict()` in every caller;
    passed in because probes build on models), and write a checkpoint folder with its card."""
    out = Path(out)
    command = command or train_command(config, out, threads=torch.get_num_threads())
    # Refuse a folder holding another model before spending minutes on training.
    same = {"recipe": config.recipe(), "seed": config.seed, "threads": torch.get_num_threads()}  # what make_card records
    hooked._check_out_dir(out, config.hooked_config(), same, overwrite)
    result = train(config, progress=progress)
    metrics = evaluate(result.model, config.task)
    card = make_card(result, command, metrics)
    hooked.save(result.model, out, card, config.hooked_config(), overwrite=overwrite)
    return result, card
