"""Many models trained at once, stacked along a leading model dimension: the path for an
accelerator, where one model's step is a few microseconds of work behind a millisecond of
kernel launches. On this CPU stacking does not pay (README: "Training speed").

Every model is its own run of `train()`: the same init, data stream, optimizer and early
stopping, differing only in float summation order (and in a GPU's kernels). The models
share the step loop, so a stack holds runs whose recipes differ by gamma and seed alone:
one learning rate and weight decay, and shapes that stack.

    results = train_stacked([TrainConfig(gamma=g, seed=s) for g in (0.3, 0.8) for s in range(32)], "cuda")
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from models import hooked
from models.task import eval_sets
from models.train import TrainConfig, TrainResult, batches, fused_logits, fused_parameters, live_accuracies, make_optimizer, settled, uses_fused_forward


def check_stackable(configs: list[TrainConfig]) -> None:
    if not configs:
        raise ValueError("no runs to train")
    shared = [{k: v for k, v in c.recipe().items() if k != "gamma"} for c in configs]
    differing = sorted({k for r in shared[1:] for k in r if r[k] != shared[0][k]})
    if differing:
        raise ValueError(f"stacked runs may differ in gamma and seed only; these settings differ: {differing}")
    if configs[0].decay_after_solution:  # the stack shares one lr, and each run fits at its own step
        raise ValueError("decay_after_solution gives each run its own lr schedule, which a stack cannot: use the local executor")
    if configs[0].compiled:  # the stack maps the eager forward with vmap
        raise ValueError("compiled=True compiles one run's forward; a stack trains eagerly: use the local executor")


def stacked_logits(
    params: dict[str, Float[Tensor, "model ..."]],
    cfg: Any,
    tokens: Int[Tensor, "model batch pos"] | Int[Tensor, "batch pos"],
    precision: str = "fp32",
) -> Float[Tensor, "model batch d_vocab"]:
    """`fused_logits` of every model in the stack, each on its own tokens ([model, batch,
    pos]) or all on the same ([batch, pos])."""
    tokens_dim = 0 if tokens.ndim == 3 else None
    return torch.func.vmap(lambda p, t: fused_logits(p, cfg, t, precision), in_dims=(0, tokens_dim))(params, tokens)


def clip_per_model(grads: list[Tensor], max_norm: float) -> None:
    """`clip_grad_norm_` for each model of the stack on its own: its gradient norm over all
    its parameters, scaled by max_norm / (norm + 1e-6) where that is below 1."""
    norms = torch.stack([g.flatten(1).pow(2).sum(1) for g in grads]).sum(0).sqrt()  # [model]
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.view(-1, *[1] * (g.ndim - 1)))


def stacked_batches(configs: list[TrainConfig], pool: cf.Executor) -> Iterator[tuple[Int[Tensor, "model batch pos"], Int[Tensor, "model batch"]]]:
    """Each run's own `batches` stream, drawn in parallel threads (sampling is the slow part
    of a stacked step) and stacked."""
    streams = [batches(c) for c in configs]
    while True:
        drawn = list(pool.map(next, streams))
        yield torch.stack([t for t, _ in drawn]), torch.stack([y for _, y in drawn])


@torch.inference_mode()
def stacked_live_metrics(params: dict[str, Tensor], cfg: Any, sets: dict, targets: dict) -> list[dict[str, float]]:
    """`train.live_metrics` for every model of the stack."""
    seen, held = sets["seen_test"], sets["held_test"]
    pred_seen = stacked_logits(params, cfg, seen.tokens).argmax(-1)  # [model, batch]
    pred_held = stacked_logits(params, cfg, held.tokens).argmax(-1)
    rows = live_accuracies(pred_seen, pred_held, seen.label, targets)
    return [dict(zip(rows, values)) for values in torch.stack(list(rows.values()), 1).tolist()]


def train_stacked(configs: list[TrainConfig], device: str | torch.device = "cuda", progress: bool = True, sample_threads: int = 8) -> list[TrainResult]:
    """Train every config's run at once; returns their results in order, models on the CPU.
    A run that settles (early stopping) keeps its weights from that step, as `train()`
    would; the stack runs until every run has stopped or max_steps."""
    check_stackable(configs)
    config = configs[0]
    models = []
    for c in configs:
        torch.manual_seed(c.seed)  # as train() does
        models.append(hooked.build(c.gamma, c.n_layers, seed=c.seed, task=c.task, **c.arch))
    cfg = models[0].cfg
    if not uses_fused_forward(cfg):
        raise ValueError("stacked training needs the fused forward, which this architecture does not have")
    per_model = [fused_parameters(m) for m in models]
    params = {
        name: torch.stack([p[name].detach() for p in per_model]).to(device).requires_grad_(per_model[0][name].requires_grad)
        for name in per_model[0]
    }  # name -> [model, *shape]
    trainable = [p for p in params.values() if p.requires_grad]
    optimizer, schedule = make_optimizer(trainable, config, leading_dims=1)
    task = config.task
    sets = eval_sets(task, 2)
    targets = {k: v.to(device) for k, v in task.solution_targets(sets["held_test"]).items()}
    sets = {k: v.to(device) for k, v in sets.items()}

    n = len(configs)
    histories: list[list[dict[str, float]]] = [[] for _ in range(n)]
    final: list[dict[str, Tensor] | None] = [None] * n  # each run's weights once it stops
    stopped_at, stopped_early, seconds = [config.max_steps] * n, [False] * n, [0.0] * n
    start = time.perf_counter()
    bar = tqdm(total=config.max_steps, disable=not progress, unit="step", dynamic_ncols=True, desc=f"{n} stacked runs")
    with cf.ThreadPoolExecutor(sample_threads) as pool:
        for step, (tokens, labels) in enumerate(stacked_batches(configs, pool), start=1):
            tokens, labels = tokens.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            logits = stacked_logits(params, cfg, tokens, config.precision)  # [model, batch, d_vocab]
            losses = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view(n, -1).mean(1)  # [model]
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()  # each run's parameters get its own loss's gradient
            clip_per_model([p.grad for p in trainable], config.grad_clip)
            optimizer.step()
            schedule.step()
            bar.update(1)
            if step % config.eval_every == 0 or step == config.max_steps:
                lr, loss_values, elapsed = schedule.get_last_lr()[0], losses.tolist(), time.perf_counter() - start
                for i, row in enumerate(stacked_live_metrics(params, cfg, sets, targets)):
                    if final[i] is not None:
                        continue
                    histories[i].append({"step": step, "loss": loss_values[i], "lr": lr, **row, "seconds": elapsed})
                    early = config.early_stop and step >= config.min_steps and settled(histories[i], config)
                    if early or step == config.max_steps:
                        final[i] = {name: p[i].detach().cpu().clone() for name, p in params.items()}
                        stopped_at[i], stopped_early[i], seconds[i] = step, early, elapsed
                bar.set_postfix(stopped=sum(f is not None for f in final))
                if all(f is not None for f in final):
                    break
    bar.close()
    results = []
    for i, (c, model) in enumerate(zip(configs, models)):
        with torch.no_grad():
            for name, param in fused_parameters(model).items():
                param.copy_(final[i][name])
        model.eval()
        results.append(TrainResult(model, c, stopped_at[i], seconds[i], histories[i], stopped_early[i]))
    return results
