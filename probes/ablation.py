"""Ablation: knock out a head, a layer's attention or MLP output, or the residual stream at one
position, and measure what the model can still do.

Three ways to knock out an activation (ABLATIONS):
    zero      replace it by zeros
    mean      replace it by its mean over a reference batch of task prompts (per position)
    resample  replace it, prompt by prompt, by its value on a random reference prompt

Effect on three accuracies (METRICS): `seen` (trained pairs answered with their label),
and on the held-out pair (4,3) `inferential` (answered x-10) and `symmetric` (x-6).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import plotly.graph_objects as go
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from models.hooked import Model, check_model_fits_task
from models.task import AnchorBatch, AnchorTask
from probes.figures import heatmaps
from probes.patching import sample_prompts
from probes.sites import Patch, Site, by_role, cache_of, columns, last_logits_with, sweep_logits, sweep_rows

ABLATIONS = ("zero", "mean", "resample")
METRICS = ("seen", "inferential", "symmetric")
METRIC_NAMES = {"seen": "seen pairs (trained label)", "inferential": "(4,3) answered x-10", "symmetric": "(4,3) answered x-6"}
SWEEP_KINDS = ("resid_pre", "z", "mlp_out")


@dataclass(frozen=True)
class EvalPrompts:
    """Seen-pair prompts and held-out (4,3) prompts, run together as one batch."""

    seen: AnchorBatch
    held: AnchorBatch
    targets: dict[str, Tensor]  # metric -> target of each prompt of `tokens` (-1: not scored)

    @property
    def tokens(self) -> Tensor:
        return torch.cat([self.seen.tokens, self.held.tokens])  # [seen + held, pos]

    def correct(self, prediction: Tensor) -> dict[str, Tensor]:
        """metric -> [..., prompt] whether each of that metric's prompts is answered right."""
        n = len(self.seen)
        return {m: (prediction[..., n:] if m != "seen" else prediction[..., :n]) == self.targets[m] for m in METRICS}

    def batch_of(self, metric: str) -> AnchorBatch:
        return self.seen if metric == "seen" else self.held


def eval_prompts(task: AnchorTask, n: int = 512, seed: int = 0, key_pos: int | None = None) -> EvalPrompts:
    seen = sample_prompts(task, n, seed, task.train_pairs, "any", key_pos)
    held = sample_prompts(task, n, seed + 1, [task.held_out_pair], "any", key_pos)
    targets = task.solution_targets(held)
    return EvalPrompts(seen, held, {"seen": seen.label, "inferential": targets["inferential"], "symmetric": targets["symmetric"]})


def ablation_sources(
    model: Model,
    sites: Sequence[Site],
    kind: str,
    reference: Tensor,
    n: int,
    seed: int = 0,
) -> list[Patch]:
    """The activation each site is overwritten with, for a batch of `n` prompts: zeros, the
    mean over the `reference` prompts' tokens, or a random reference prompt's value."""
    if kind not in ABLATIONS:
        raise ValueError(f"unknown ablation {kind!r}; known: {', '.join(ABLATIONS)}")
    for site in sites:
        site.check(model)
    cache = cache_of(model, reference, {site.hook_name for site in sites})
    pick = torch.randint(len(reference), (n,), generator=torch.Generator().manual_seed(seed))
    source = {
        "zero": lambda act: torch.zeros_like(act[:1]),  # [1, pos, ...]
        "mean": lambda act: act.mean(0, keepdim=True),  # [1, pos, ...]
        "resample": lambda act: act[pick],  # [n, pos, ...]
    }[kind]
    return [(site, source(cache[site.hook_name])) for site in sites]


def _reference(task: AnchorTask, n: int, seed: int, key_pos: int | None) -> Tensor:
    # The task's prompts, every pair (held-out included): the distribution being averaged.
    return sample_prompts(task, n, seed + 2, task.pairs, "any", key_pos).tokens


def _accuracies(correct: dict[str, Tensor]) -> dict[str, float]:
    return {m: c.float().mean().item() for m, c in correct.items()}


@dataclass
class AblationResult:
    sites: list[Site]
    kind: str
    baseline: dict[str, float]  # metric -> accuracy of the intact model
    ablated: dict[str, float]  # metric -> accuracy with the sites ablated
    n_prompts: int

    def summary(self) -> str:
        what = ", ".join(map(str, self.sites))
        return f"{self.kind} ablation of {what}: " + ", ".join(f"{m} {self.baseline[m]:.2f} -> {self.ablated[m]:.2f}" for m in METRICS)

    def figure(self) -> go.Figure:
        fig = go.Figure(
            [
                go.Bar(name="intact", x=list(METRICS), y=[self.baseline[m] for m in METRICS]),
                go.Bar(name=f"{self.kind}-ablated", x=list(METRICS), y=[self.ablated[m] for m in METRICS]),
            ]
        )
        fig.update_layout(title=f"{self.kind} ablation of {', '.join(map(str, self.sites))}", yaxis_title="accuracy", yaxis_range=[0, 1], barmode="group")
        return fig


def ablate(
    model: Model,
    sites: Site | Sequence[Site],
    kind: str = "mean",
    task: AnchorTask = AnchorTask(),
    n: int = 512,
    seed: int = 0,
    key_pos: int | None = None,
) -> AblationResult:
    """Ablate `sites` together (a Site with pos=None covers every position) and measure seen
    and (4,3) accuracies against the intact model, on n seen and n held-out prompts."""
    check_model_fits_task(model, task)
    sites = [sites] if isinstance(sites, Site) else list(sites)
    if not sites:
        raise ValueError("no sites to ablate")
    prompts = eval_prompts(task, n, seed, key_pos)
    tokens = prompts.tokens
    patches = ablation_sources(model, sites, kind, _reference(task, n, seed, key_pos), len(tokens), seed)
    baseline = _accuracies(prompts.correct(last_logits_with(model, tokens, []).argmax(-1)))
    ablated = _accuracies(prompts.correct(last_logits_with(model, tokens, patches).argmax(-1)))
    return AblationResult(sites, kind, baseline, ablated, len(tokens))


@dataclass
class AblationSweep:
    """Accuracy with one site (row x position) ablated at a time."""

    kind: str
    rows: list[Site]
    prompts: EvalPrompts
    correct: dict[str, Bool[Tensor, "row pos prompt"]]  # metric -> each of its prompts answered right
    baseline: dict[str, float]

    def accuracy(self, metric: str) -> Float[Tensor, "row pos"]:
        return self.correct[metric].float().mean(-1)

    def accuracy_by_role(self, metric: str) -> Float[Tensor, "row role"]:
        return by_role(self.correct[metric], self.prompts.batch_of(metric)).mean(-1)

    def columns(self) -> tuple[list[str], dict[str, Tensor]]:
        """Column labels and each metric's accuracy (sites.columns: absolute positions when
        every prompt has its key at the same position, roles otherwise)."""
        accuracy = {}
        for m in METRICS:
            labels, correct = columns(self.correct[m], self.prompts.batch_of(m))
            accuracy[m] = correct.mean(-1)
        return labels, accuracy

    def largest_changes(self, metric: str, k: int = 3) -> list[tuple[str, str, float]]:
        """The k sites whose ablation moves `metric` most, either way: (row, column, accuracy)."""
        labels, acc = self.columns()
        change = (acc[metric] - self.baseline[metric]).abs()
        order = change.flatten().argsort(descending=True)[:k].tolist()
        n_col = change.shape[1]
        return [(self.rows[i // n_col].label, labels[i % n_col], acc[metric].flatten()[i].item()) for i in order]

    def summary(self) -> str:
        lines = [f"{self.kind}-ablation sweep ({len(self.prompts.seen)} seen + {len(self.prompts.held)} (4,3) prompts), "
                 "one site at a time; accuracy before -> after ablating the site"]
        for m in METRICS:
            moves = "; ".join(f"{row} @ {col} {self.baseline[m]:.2f} -> {acc:.2f}" for row, col, acc in self.largest_changes(m))
            lines.append(f"  {METRIC_NAMES[m]:<26} intact {self.baseline[m]:.2f}; sites that change it most: {moves}")
        return "\n".join(lines)

    def figure(self) -> go.Figure:
        labels, acc = self.columns()
        return heatmaps(
            [(f"{m} (intact {self.baseline[m]:.2f})", acc[m]) for m in METRICS],
            [row.label for row in self.rows],
            labels,
            f"{self.kind}-ablation of one site at a time: accuracy after ablation<br><sub>seen: trained pairs; "
            "inferential / symmetric: (4,3) answered x-10 / x-6</sub>",
            zmin=0,
            zmax=1,
            colorscale="Viridis",
        )


def ablation_sweep(
    model: Model,
    task: AnchorTask = AnchorTask(),
    kind: str = "mean",
    kinds: Sequence[str] = SWEEP_KINDS,
    n: int = 512,
    seed: int = 0,
    key_pos: int | None = None,
    progress: bool = True,
) -> AblationSweep:
    """Ablate every head x layer x position (and each row kind of `kinds`) one at a time:
    one forward per site over all evaluation prompts."""
    check_model_fits_task(model, task)
    rows = sweep_rows(model, kinds)
    prompts = eval_prompts(task, n, seed, key_pos)
    tokens = prompts.tokens
    sources = ablation_sources(model, rows, kind, _reference(task, n, seed, key_pos), len(tokens), seed)
    prediction = torch.empty(len(rows), tokens.shape[1], len(tokens), dtype=torch.long)
    for r, pos, logits in sweep_logits(model, tokens, sources, f"{kind} ablation", progress):
        prediction[r, pos] = logits.argmax(-1)
    baseline = _accuracies(prompts.correct(last_logits_with(model, tokens, []).argmax(-1)))
    return AblationSweep(kind, rows, prompts, prompts.correct(prediction), baseline)
