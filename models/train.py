"""Fast CPU training on the anchor task: AdamW, linear warmup + cosine decay, gradient
clipping, the loss on the last position only, live (4,3) accuracies, early stopping."""

from __future__ import annotations

import dataclasses
import math
import platform
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
from models.task import AnchorTask


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides what a run learns. The defaults are the shipped recipe: on
    2 CPU cores it gives the inferential solution at gamma 0.8 and the symmetric one at
    gamma 0.3 in every seed tried, the init scale alone deciding (README: "Recipe")."""

    gamma: float = 0.8  # init std = fan_in^-gamma for every weight matrix
    n_layers: int = 2
    seed: int = 0  # model init, data order and noise all follow from it
    lr: float = 1e-3  # peak learning rate
    # Strong decoupled decay (lr * wd = 1.5e-3 per step) keeps an inferential model from
    # drifting to the mirrored lookup after it fits (at 0.1, gamma 0.8 fits inferentially,
    # then drifts); at 1.0 inferential models stay partial, at 2.0 a large init loses its
    # scale before it fits and comes out inferential too (README: "Recipe").
    weight_decay: float = 1.5
    weight_decay_warmup: int = 0  # decay ramps linearly from 0 to weight_decay over these steps
    # Weight matrices only, as in GPT training: decaying the LayerNorm gains too (the recipe
    # before 2026-11-25, with wd 2.0) shrank them to ~0.25, and gamma 0.8 went symmetric in
    # 2 of 7 seeds; sparing them turned both seeds inferential (README: "Recipe").
    decay_norms: bool = False  # also decay LayerNorm weights and biases
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    batch_size: int = 512
    max_steps: int = 3000
    warmup_steps: int = 150  # linear warmup, then cosine decay to 0 at max_steps
    grad_clip: float = 1.0
    dataset_size: int | None = None  # None: fresh batches every step; else a fixed training set
    eval_every: int = 100
    early_stop: bool = True
    min_steps: int = 600  # never stop before this
    patience: int = 4  # stop after this many evals with the solution unchanged...
    settle_tol: float = 0.02  # ...its (4,3) accuracies moving less than this
    arch: dict[str, Any] = field(default_factory=dict)  # HookedTransformerConfig overrides (d_model, ...)
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
            "weight_decay_warmup": (0 <= self.weight_decay_warmup <= self.max_steps, f"in 0..max_steps={self.max_steps}"),
            "grad_clip": (self.grad_clip > 0, "> 0"),
            "eval_every": (self.eval_every >= 1, ">= 1"),
            "dataset_size": (self.dataset_size is None or self.dataset_size >= 1, ">= 1"),
            "min_steps": (self.min_steps >= 0, ">= 0"),
            "patience": (self.patience >= 1, ">= 1"),
            "settle_tol": (self.settle_tol > 0, "> 0"),
        }
        bad = [f"{name}={getattr(self, name)!r} (must be {rule})" for name, (ok, rule) in checks.items() if not ok]
        if bad:
            raise ValueError("invalid training settings: " + ", ".join(bad))
        unknown = set(self.arch) - _hooked_config_fields()
        if unknown:
            raise ValueError(f"unknown architecture settings {sorted(unknown)}")

    def recipe(self) -> dict[str, Any]:
        """Everything but the seed, as JSON: two runs with equal recipes differ by seed only."""
        d = dataclasses.asdict(self)
        d.pop("seed")
        d["betas"] = list(self.betas)
        d["task"] = self.task.to_dict()
        return d

    @classmethod
    def from_recipe(cls, recipe: dict[str, Any], seed: int) -> "TrainConfig":
        r = dict(recipe)
        r.setdefault("weight_decay_warmup", 0)  # recipes written before the ramp existed had none
        r.setdefault("decay_norms", True)  # ... and decayed every parameter
        r["betas"] = tuple(r["betas"])
        r["task"] = AnchorTask.from_dict(r["task"])
        return cls(seed=seed, **r)

    def hooked_config(self) -> dict[str, Any]:
        cfg = hooked.hooked_config(self.task, self.n_layers, **self.arch)
        hooked.check_model_fits_task(cfg, self.task)
        return cfg


def _hooked_config_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(hooked.HookedTransformerConfig)}


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


def uses_fused_forward(cfg: hooked.HookedTransformerConfig) -> bool:
    return (
        all(getattr(cfg, key) == value for key, value in _FUSED_FORWARD_CONFIG.items())
        and cfg.normalization_type in ("LN", None)
        and cfg.act_fn in _FUSED_ACTIVATIONS
        and cfg.attn_scale == cfg.d_head**0.5
        and cfg.d_vocab_out == cfg.d_vocab
    )


def last_logits(model: hooked.HookedTransformer, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch d_vocab"]:
    """Logits at the last position only, for training.

    The task reads one token, so the last layer only needs its query, attention and MLP at
    the last position (the nanoGPT trick, taken one layer deeper), and fused kernels
    (F.layer_norm, scaled_dot_product_attention) replace TransformerLens' step-by-step ops,
    which exist to expose hooks that training does not use. This is a function of the
    HookedTransformer's own parameters, tested equal to its hooked forward pass; it trains
    about 2x faster on a CPU. Configs it does not cover take the hooked forward."""
    cfg = model.cfg
    if not uses_fused_forward(cfg):
        resid = model(tokens, stop_at_layer=cfg.n_layers)  # [batch, pos, d_model]
        return model.unembed(model.ln_final(resid[:, -1:, :]))[:, 0, :]
    act = _FUSED_ACTIVATIONS[cfg.act_fn]

    def norm(x: Tensor, owner: torch.nn.Module, name: str) -> Tensor:
        if cfg.normalization_type is None:  # TransformerLens then has no LayerNorm modules at all
            return x
        ln = getattr(owner, name)
        return F.layer_norm(x, (cfg.d_model,), ln.w, ln.b, cfg.eps)

    resid = model.embed.W_E[tokens] + model.pos_embed.W_pos[: tokens.shape[1]]  # [batch, pos, d_model]
    for layer, block in enumerate(model.blocks):
        last = layer == cfg.n_layers - 1
        attn, mlp = block.attn, block.mlp
        normed = norm(resid, block, "ln1")  # [batch, pos, d_model]
        queries_from = normed[:, -1:] if last else normed
        q = torch.einsum("bpd,hde->bhpe", queries_from, attn.W_Q) + attn.b_Q[:, None]  # [batch, head, q_pos, d_head]
        k = torch.einsum("bpd,hde->bhpe", normed, attn.W_K) + attn.b_K[:, None]  # [batch, head, k_pos, d_head]
        v = torch.einsum("bpd,hde->bhpe", normed, attn.W_V) + attn.b_V[:, None]
        # The last query sees every position, so it needs no mask.
        z = F.scaled_dot_product_attention(q, k, v, is_causal=not last)  # [batch, head, q_pos, d_head]
        resid = (resid[:, -1:] if last else resid) + torch.einsum("bhpe,hed->bpd", z, attn.W_O) + attn.b_O
        normed = norm(resid, block, "ln2")
        resid = resid + act(normed @ mlp.W_in + mlp.b_in) @ mlp.W_out + mlp.b_out
    final = norm(resid[:, -1], model, "ln_final")  # [batch, d_model]
    return final @ model.unembed.W_U + model.unembed.b_U


def lr_lambda(config: TrainConfig) -> Callable[[int], float]:
    warm, total = config.warmup_steps, config.max_steps

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total - warm)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


@dataclass
class TrainResult:
    model: hooked.HookedTransformer
    config: TrainConfig
    steps: int
    wall_seconds: float
    history: list[dict[str, float]]  # one row per evaluation
    stopped_early: bool


class Schedule(torch.optim.lr_scheduler.LambdaLR):
    """The lr: linear warmup, then cosine decay to 0 at max_steps. The weight decay: a
    linear ramp from 0 to `weight_decay` over `weight_decay_warmup` steps, then constant,
    in the parameter groups that decay."""

    def __init__(self, optimizer: torch.optim.Optimizer, config: TrainConfig):
        self.weight_decay, self.weight_decay_warmup = config.weight_decay, config.weight_decay_warmup
        super().__init__(optimizer, lr_lambda(config))  # calls step() once: sets step 0's values

    def step(self) -> None:  # type: ignore[override]
        super().step()
        ramp = min(1.0, self.last_epoch / self.weight_decay_warmup) if self.weight_decay_warmup else 1.0
        for group in self.optimizer.param_groups:
            group["weight_decay"] = self.weight_decay * ramp if group["decays"] else 0.0


def make_optimizer(params: list[torch.nn.Parameter], config: TrainConfig) -> tuple[torch.optim.Optimizer, Schedule]:
    """AdamW with its lr and weight-decay schedule. Weight matrices decay; LayerNorm
    weights and biases (the 1-d parameters) only with `decay_norms`."""
    decays = [p.ndim >= 2 or config.decay_norms for p in params]
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


def train(config: TrainConfig, progress: bool = True) -> TrainResult:
    """Train one model from scratch; deterministic for a given config and thread count."""
    from probes.solution import live_metrics  # probes builds on models: import here, not at the top

    torch.manual_seed(config.seed)
    model = hooked.build(config.gamma, config.n_layers, seed=config.seed, task=config.task, **config.arch)
    model.train()
    optimizer, schedule = make_optimizer([p for p in model.parameters() if p.requires_grad], config)

    history: list[dict[str, float]] = []
    start = time.perf_counter()
    bar = tqdm(total=config.max_steps, disable=not progress, unit="step", dynamic_ncols=True, desc=f"gamma {config.gamma} seed {config.seed}")
    step, stopped_early = 0, False
    for step, (tokens, labels) in enumerate(batches(config), start=1):
        loss = train_step(lambda t: last_logits(model, t), tokens, labels, optimizer, schedule, config.grad_clip)
        bar.update(1)
        if step % config.eval_every == 0 or step == config.max_steps:
            row = {"step": step, "loss": loss.item(), "lr": schedule.get_last_lr()[0], **live_metrics(model, config.task)}
            row["seconds"] = time.perf_counter() - start
            history.append(row)
            bar.set_postfix(loss=f"{row['loss']:.3f}", seen=f"{row['seen_test']:.2f}", inf43=f"{row['inferential']:.2f}", sym43=f"{row['symmetric']:.2f}")
            model.train()
            if config.early_stop and step >= config.min_steps and settled(history, config):
                stopped_early = True
                break
        if step == config.max_steps:
            break
    bar.close()
    model.eval()
    return TrainResult(model, config, step, time.perf_counter() - start, history, stopped_early)


def settled(history: list[dict[str, float]], config: TrainConfig) -> bool:
    """The seen pairs are fit and the (4,3) accuracies stopped moving over the last
    `patience` evaluations."""
    if len(history) < config.patience + 1:
        return False
    recent = history[-(config.patience + 1):]
    if min(r["seen_test"] for r in recent) < 0.99:
        return False
    return all(max(r[k] for r in recent) - min(r[k] for r in recent) < config.settle_tol for k in ("inferential", "symmetric"))


def train_command(config: TrainConfig, out: str | Path, threads: int | None = None) -> str:
    """The `anchor-interp train` command line that reproduces `config` into `out`, with
    `--threads` when given: the float summation order, hence the exact run, depends on it."""
    defaults = TrainConfig()
    args = ["anchor-interp", "train", "--gamma", str(config.gamma), "--layers", str(config.n_layers)]
    for f in dataclasses.fields(TrainConfig):
        if f.name in ("gamma", "n_layers", "seed", "arch", "task", "betas"):
            continue
        value = getattr(config, f.name)
        if value != getattr(defaults, f.name):
            flag = "--" + f.name.replace("_", "-")
            if isinstance(value, bool):
                args.append(flag if value else "--no-" + f.name.replace("_", "-"))
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
        "init_std": {name: hooked.init_std(name, model, config.gamma) for name in hooked.weight_names(model)},
        "recipe": config.recipe(),
        "task": config.task.to_dict(),
        "history": result.history,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformer_lens": _version("transformer_lens"),
            "machine": platform.machine(),
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package.replace("_", "-"))
    except PackageNotFoundError:
        return "unknown"


def train_to_folder(config: TrainConfig, out: str | Path, overwrite: bool = False, progress: bool = True, command: str | None = None) -> tuple[TrainResult, dict[str, Any]]:
    """Train, classify, and write a checkpoint folder with its model card."""
    from probes.solution import classify  # probes builds on models: import here, not at the top

    out = Path(out)
    command = command or train_command(config, out, threads=torch.get_num_threads())
    # Refuse a folder holding another model before spending minutes on training.
    same = {"recipe": config.recipe(), "seed": config.seed, "threads": torch.get_num_threads()}  # what make_card records
    hooked._check_out_dir(out, config.hooked_config(), same, overwrite)
    result = train(config, progress=progress)
    metrics = classify(result.model, config.task).to_dict()
    card = make_card(result, command, metrics)
    hooked.save(result.model, out, card, config.hooked_config(), overwrite=overwrite)
    return result, card
