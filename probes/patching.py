"""Activation patching between prompt pairs that differ in one factor, and the order probe.

A prompt pair is a clean and a corrupted prompt with the same noise that differ in exactly
one factor (PAIR_KINDS): the anchor order, one anchor, the key, or the key's position. For
every site (layer x kind x head) and every position, the corrupted run is repeated with that
one activation taken from the clean run: one forward per site over all pairs at once.

Metric: the logit difference between the clean and the corrupted answer at the last
position, normalised so that 1 = the clean run's difference (fully restored) and 0 = the
corrupted run's (untouched):

    metric = (mean LD_patched - mean LD_corrupted) / (mean LD_clean - mean LD_corrupted)

It is undefined when both runs give the same answer; such pairs are left out, and a set
where every pair is like that is refused.

The sweep gives the same numbers as `transformer_lens.patching` (tested), with two
differences that TransformerLens' functions cannot express: it keeps every pair's value,
not one scalar per site (for the argmax, and to line prompts up by role), and each patched
forward starts at the patched layer from the corrupted run's cached residual stream (about
2x faster, bench/probe_speed.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import plotly.graph_objects as go
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from models.hooked import Model, check_model_fits_task
from models.task import AnchorBatch, AnchorTask, KeySplit
from probes.figures import heatmaps
from probes.sites import Site, by_role, columns, last_logits_with, sources_of, sweep_logits, sweep_rows

PAIR_KINDS = ("swap_order", "change_anchor1", "change_anchor2", "change_anchors", "change_key", "move_key")
DEFAULT_KINDS = ("resid_pre", "resid_mid", "attn_out", "mlp_out", "z")


# ---- prompts and prompt pairs ------------------------------------------------------------
def sample_prompts(
    task: AnchorTask,
    n: int,
    seed: int = 0,
    pairs: Sequence[tuple[int, int]] | None = None,
    keys: KeySplit = "any",
    key_pos: int | None = None,
) -> AnchorBatch:
    """`n` prompts drawn evenly from every (pair, key, key position) of the split (one key
    position only if `key_pos` is given), with fresh noise."""
    if n < 1:
        raise ValueError(f"need at least one prompt, got n={n}")
    pairs = task.pairs if pairs is None else list(pairs)
    if key_pos is not None and not 0 <= key_pos < task.n_key_positions:
        raise ValueError(f"key position {key_pos} out of range 0..{task.n_key_positions - 1}")
    combos = task.grid(pairs, keys, n_noise=1, seed=seed)
    wanted = torch.ones(len(combos), dtype=torch.bool) if key_pos is None else combos.key_pos == key_pos
    if not wanted.any():
        raise ValueError(f"no prompts for pairs {pairs} with {keys} keys at key position {key_pos}")
    n_noise = -(-n // int(wanted.sum()))  # enough noise draws to reach n prompts
    grid = combos if n_noise == 1 else task.grid(pairs, keys, n_noise=n_noise, seed=seed)
    candidates = wanted.repeat(n_noise).nonzero().flatten()
    order = torch.randperm(len(candidates), generator=torch.Generator().manual_seed(seed))[:n]
    return grid.subset(candidates[order])


@dataclass(frozen=True)
class PromptPairs:
    """Clean and corrupted prompts, pair by pair."""

    clean: AnchorBatch
    corrupted: AnchorBatch
    kind: str = "custom"  # how the corrupted prompt differs (PAIR_KINDS) or "custom"

    def __post_init__(self):
        if len(self.clean) != len(self.corrupted):
            raise ValueError(f"{len(self.clean)} clean prompts but {len(self.corrupted)} corrupted ones: prompt pairs need one of each")
        if self.clean.tokens.shape[1] != self.corrupted.tokens.shape[1]:
            raise ValueError(f"prompt lengths differ: clean {self.clean.tokens.shape[1]} tokens, corrupted {self.corrupted.tokens.shape[1]}")
        if len(self.clean) == 0:
            raise ValueError("no prompt pairs")

    def __len__(self) -> int:
        return len(self.clean)

    @property
    def aligned(self) -> bool:
        """Key and anchors at the same positions in both prompts of every pair."""
        return bool((self.clean.key_pos == self.corrupted.key_pos).all())

    def require_aligned(self, what: str) -> None:
        if not self.aligned:
            i = int((self.clean.key_pos != self.corrupted.key_pos).nonzero()[0])
            raise ValueError(
                f"{what} needs the key and anchors at the same positions in both prompts of a pair; "
                f"pair {i} has the key at position {int(self.clean.key_pos[i])} (clean) and {int(self.corrupted.key_pos[i])} (corrupted)"
            )

    def subset(self, index: Tensor) -> "PromptPairs":
        return PromptPairs(self.clean.subset(index), self.corrupted.subset(index), self.kind)


def prompt_pairs(task: AnchorTask, clean, corrupted, kind: str = "custom") -> PromptPairs:
    """Prompt pairs from the user's prompts ("23 1 2 43 ...", lists or token tensors),
    each validated by the task."""
    return PromptPairs(task.prompts(clean), task.prompts(corrupted), kind)


def make_pairs(
    task: AnchorTask,
    kind: str,
    n: int = 512,
    seed: int = 0,
    pairs: Sequence[tuple[int, int]] | None = None,
    keys: KeySplit = "any",
    key_pos: int | None = None,
) -> PromptPairs:
    """`n` pairs that differ in one factor, same noise elsewhere:

    swap_order      (a1, a2) -> (a2, a1)          change_key   key x -> another key
    change_anchor1  a1 -> another anchor           move_key     key and anchors to another position
    change_anchor2  a2 -> another anchor                        (noise kept where both prompts have noise)
    change_anchors  a1 and a2 -> other anchors, each

    `pairs` are the clean prompts' anchor pairs (default: all; for swap_order, all with two
    different anchors), `keys` their key split, kept by the corruption."""
    if kind not in PAIR_KINDS:
        raise ValueError(f"unknown prompt-pair kind {kind!r}; known: {', '.join(PAIR_KINDS)}")
    if kind == "swap_order":
        pairs = [p for p in task.pairs if p[0] != p[1]] if pairs is None else list(pairs)
        same = [p for p in pairs if p[0] == p[1]]
        if same:
            raise ValueError(f"swap_order needs two different anchors; pairs {same} read the same both ways")
    if kind == "move_key" and keys == "test":
        raise ValueError("move_key cannot keep test keys: a test key is one at its own position (x mod 9 == p)")
    clean = sample_prompts(task, n, seed, pairs, keys, key_pos)
    gen = torch.Generator().manual_seed(seed + 1)
    tokens = clean.tokens.clone()  # [n, pos]
    rows, at = torch.arange(len(clean)), clean.key_pos
    if kind == "swap_order":
        tokens[rows, at + 1], tokens[rows, at + 2] = clean.anchor2, clean.anchor1
    elif kind in ("change_anchor1", "change_anchor2", "change_anchors"):
        if kind != "change_anchor2":
            tokens[rows, at + 1] = _other_anchor(task, clean.anchor1, gen)
        if kind != "change_anchor1":
            tokens[rows, at + 2] = _other_anchor(task, clean.anchor2, gen)
    elif kind == "change_key":
        tokens[rows, at] = _other_key(task, clean.key, at, keys, gen)
    else:
        new_at = _other_key_position(task, clean.key, at, keys, gen)
        triple = at[:, None] + torch.arange(3)  # [n, 3]
        tokens[rows[:, None], triple] = torch.randint(task.key_min, task.key_max + 1, triple.shape, generator=gen)
        tokens[rows, new_at], tokens[rows, new_at + 1], tokens[rows, new_at + 2] = clean.key, clean.anchor1, clean.anchor2
    return PromptPairs(clean, task.prompts(tokens), kind)


def _other_anchor(task: AnchorTask, anchor: Int[Tensor, " n"], gen: torch.Generator) -> Int[Tensor, " n"]:
    anchors = torch.tensor(task.anchors)
    index = (anchor[:, None] == anchors).int().argmax(1)
    step = torch.randint(1, len(anchors), anchor.shape, generator=gen)  # uniform over the other anchors
    return anchors[(index + step) % len(anchors)]


def _other_key(task: AnchorTask, key: Tensor, key_pos: Tensor, keys: KeySplit, gen: torch.Generator) -> Tensor:
    span = task.key_max - task.key_min + 1
    new = key.clone()
    todo = torch.ones_like(key, dtype=torch.bool)
    while todo.any():  # resample until different and in the same split
        step = torch.randint(1, span, (int(todo.sum()),), generator=gen)
        new[todo] = task.key_min + (key[todo] - task.key_min + step) % span
        todo = ~in_split(task, new, key_pos, keys)
    return new


def _other_key_position(task: AnchorTask, key: Tensor, key_pos: Tensor, keys: KeySplit, gen: torch.Generator) -> Tensor:
    n_pos = task.n_key_positions
    new = key_pos.clone()
    todo = torch.ones_like(key, dtype=torch.bool)
    while todo.any():
        new[todo] = (key_pos[todo] + torch.randint(1, n_pos, (int(todo.sum()),), generator=gen)) % n_pos
        todo = ~in_split(task, key, new, keys)
    return new


def in_split(task: AnchorTask, key: Tensor, key_pos: Tensor, keys: KeySplit) -> Tensor:
    """Whether each key at its position belongs to the key split `keys`."""
    if keys == "any":
        return torch.ones_like(key, dtype=torch.bool)
    return task.is_test_key(key, key_pos) == (keys == "test")


# ---- the sweep ------------------------------------------------------------------------------
def logit_diff(logits: Float[Tensor, "batch d_vocab"], first: Int[Tensor, " batch"], second: Int[Tensor, " batch"]) -> Float[Tensor, " batch"]:
    rows = torch.arange(len(logits))
    return logits[rows, first] - logits[rows, second]


@dataclass
class PatchingResult:
    """Activation patching of clean into corrupted runs, per site row x position x pair.

    Read `metric` (normalised logit difference: 1 = the clean answer fully restored, 0 = no
    effect; can leave 0..1 when a site overshoots or pushes back) and `restored` (the fraction
    of pairs whose patched argmax is the clean answer), by absolute position or, where key
    positions differ between pairs, by role (`*_by_role`, columns ROLES: roles of the
    corrupted prompt, where the patch lands)."""

    title: str
    rows: list[Site]
    pairs: PromptPairs  # the pairs the metric is defined on
    answer_names: tuple[str, str]  # what the clean and the corrupted answers are
    clean_answer: Int[Tensor, " pair"]
    corrupted_answer: Int[Tensor, " pair"]
    clean_diff: Float[Tensor, " pair"]  # logit(clean answer) - logit(corrupted answer), clean run
    corrupted_diff: Float[Tensor, " pair"]  # the same, corrupted run
    patched_diff: Float[Tensor, "row pos pair"]  # the same, corrupted run with one site from the clean run
    restored_answer: Bool[Tensor, "row pos pair"]  # the patched run's argmax is the clean answer
    n_dropped: int  # pairs left out: the runs did not give the answers compared

    def normalise(self, diff: Float[Tensor, "... pair"]) -> Float[Tensor, "..."]:
        low, high = self.corrupted_diff.mean(), self.clean_diff.mean()
        return (diff.mean(-1) - low) / (high - low)

    @property
    def metric(self) -> Float[Tensor, "row pos"]:
        return self.normalise(self.patched_diff)

    @property
    def restored(self) -> Float[Tensor, "row pos"]:
        return self.restored_answer.float().mean(-1)

    @property
    def metric_by_role(self) -> Float[Tensor, "row role"]:
        return self.normalise(by_role(self.patched_diff, self.pairs.corrupted))

    @property
    def restored_by_role(self) -> Float[Tensor, "row role"]:
        return by_role(self.restored_answer, self.pairs.corrupted).mean(-1)

    def columns(self) -> tuple[list[str], Tensor, Tensor]:
        """Column labels, metric and restored fraction (sites.columns: absolute positions
        when every pair has its key at the same position, roles otherwise)."""
        labels, diff = columns(self.patched_diff, self.pairs.corrupted)
        _, restored = columns(self.restored_answer, self.pairs.corrupted)
        return labels, self.normalise(diff), restored.mean(-1)

    def best(self, k: int = 3) -> list[tuple[str, str, float, float]]:
        """The k sites with the highest metric: (row, column, metric, restored)."""
        labels, metric, restored = self.columns()
        order = metric.flatten().argsort(descending=True)[:k].tolist()
        n_col = metric.shape[1]
        return [(self.rows[i // n_col].label, labels[i % n_col], metric.flatten()[i].item(), restored.flatten()[i].item()) for i in order]

    def summary(self) -> str:
        top = "; ".join(f"{row} @ {col}: {m:.2f} (restored {r:.0%})" for row, col, m, r in self.best())
        return (
            f"{self.title}: {len(self.pairs)} pairs ({self.n_dropped} left out: the runs did not give "
            f"{self.answer_names[0]} and {self.answer_names[1]}), "
            f"{self.answer_names[0]} vs {self.answer_names[1]}; top sites: {top}"
        )

    def figure(self) -> go.Figure:
        labels, metric, restored = self.columns()
        return heatmaps(
            [("normalised logit difference", metric), ("fraction answering " + self.answer_names[0], restored)],
            [row.label for row in self.rows],
            labels,
            f"{self.title}<br><sub>{len(self.pairs)} pairs; 1 = {self.answer_names[0]} restored, 0 = untouched</sub>",
            zmin=-1,
            zmax=1,
            zmid=0,
            scales=[(-1, 1, "RdBu", 0), (0, 1, "Viridis", None)],  # the fraction is 0..1: a sequential scale
        )


def _answers(
    model: Model,
    pairs: PromptPairs,
    answers: tuple[Tensor, Tensor] | None,
    answer_names: tuple[str, str],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Answers compared, the pairs where both runs give them (and they differ), and the
    unpatched last-position logits of both runs."""
    clean_logits = last_logits_with(model, pairs.clean.tokens, [])  # [pair, d_vocab]
    corrupted_logits = last_logits_with(model, pairs.corrupted.tokens, [])
    clean_pred, corrupted_pred = clean_logits.argmax(-1), corrupted_logits.argmax(-1)
    clean_answer, corrupted_answer = (clean_pred, corrupted_pred) if answers is None else answers
    keep = (clean_pred == clean_answer) & (corrupted_pred == corrupted_answer) & (clean_answer != corrupted_answer)
    if not keep.any():
        n = len(pairs)
        if answers is None:
            raise ValueError(
                f"the normalised logit difference is undefined: the clean and corrupted runs give the same answer "
                f"on all {n} prompt pairs ({pairs.kind}); use pairs whose answers differ"
            )
        raise ValueError(
            f"the normalised logit difference is undefined: no pair where the clean run answers {answer_names[0]} "
            f"and the corrupted run {answer_names[1]} (clean does on {int((clean_pred == clean_answer).sum())} of {n}, "
            f"corrupted on {int((corrupted_pred == corrupted_answer).sum())} of {n}; the answers are equal on "
            f"{int((clean_answer == corrupted_answer).sum())})"
        )
    return clean_answer, corrupted_answer, keep, clean_logits, corrupted_logits


def patch_sweep(
    model: Model,
    pairs: PromptPairs,
    kinds: Sequence[str] = DEFAULT_KINDS,
    answers: tuple[Int[Tensor, " pair"], Int[Tensor, " pair"]] | None = None,
    answer_names: tuple[str, str] = ("the clean answer", "the corrupted answer"),
    title: str | None = None,
    progress: bool = True,
) -> PatchingResult:
    """Patch every site of `kinds` (every layer, every head of head kinds) at every position
    from the clean into the corrupted run.

    `answers` (clean, corrupted) default to what the model answers on each run; given
    explicitly, only the pairs where the runs do answer them are kept."""
    if pairs.clean.tokens.shape[1] != model.cfg.n_ctx:
        raise ValueError(f"prompts have {pairs.clean.tokens.shape[1]} tokens but the model reads {model.cfg.n_ctx}")
    rows = sweep_rows(model, kinds)
    clean_answer, corrupted_answer, keep, clean_logits, corrupted_logits = _answers(model, pairs, answers, answer_names)
    pairs, clean_answer, corrupted_answer = pairs.subset(keep), clean_answer[keep], corrupted_answer[keep]
    n_pos = pairs.clean.tokens.shape[1]
    patched_diff = torch.empty(len(rows), n_pos, len(pairs))
    restored = torch.empty(len(rows), n_pos, len(pairs), dtype=torch.bool)
    clean = sources_of(model, pairs.clean.tokens, rows)
    for r, pos, logits in sweep_logits(model, pairs.corrupted.tokens, clean, title or "patching", progress):
        patched_diff[r, pos] = logit_diff(logits, clean_answer, corrupted_answer)
        restored[r, pos] = logits.argmax(-1) == clean_answer
    result = PatchingResult(
        title=title or f"activation patching ({pairs.kind})",
        rows=rows,
        pairs=pairs,
        answer_names=answer_names,
        clean_answer=clean_answer,
        corrupted_answer=corrupted_answer,
        clean_diff=logit_diff(clean_logits[keep], clean_answer, corrupted_answer),
        corrupted_diff=logit_diff(corrupted_logits[keep], clean_answer, corrupted_answer),
        patched_diff=patched_diff,
        restored_answer=restored,
        n_dropped=int((~keep).sum()),
    )
    if not result.clean_diff.mean() > result.corrupted_diff.mean():
        raise ValueError("the normalised logit difference is undefined: the clean and corrupted runs have the same mean logit difference")
    return result


def order_probe(
    model: Model,
    task: AnchorTask = AnchorTask(),
    n: int = 512,
    seed: int = 0,
    kinds: Sequence[str] = DEFAULT_KINDS,
    key_pos: int | None = None,
    progress: bool = True,
) -> PatchingResult:
    """Which sites carry the anchor ORDER that makes (4,3) answer x-10 and (3,4) x-6?

    Clean: the trap pair (3,4), answered x-6; corrupted: the held-out pair (4,3) with the same
    key, position and noise, answered x-10 by a composing model. Each site of the (3,4) run
    is patched into the (4,3) run; `restored` is the fraction of pairs turned from x-10 into
    x-6. Only pairs where the model gives both answers count, so the probe is undefined (an
    error) for a model that answers x-6 on (4,3) already: order makes no difference to it."""
    check_model_fits_task(model, task)
    trap, held = task.trap_pair, task.held_out_pair
    if tuple(reversed(trap)) != tuple(held):
        raise ValueError(f"the order probe needs the trap pair {trap} to be the held-out pair {held} reversed")
    pairs = make_pairs(task, "swap_order", n, seed, pairs=[trap], key_pos=key_pos)
    x = pairs.clean.key
    trap_answer, composite = x + task.trap_shift, x + task.composite_shift(*held)
    return patch_sweep(
        model,
        pairs,
        kinds,
        answers=(trap_answer, composite),
        answer_names=(f"x{task.trap_shift:+d}", f"x{task.composite_shift(*held):+d}"),
        title=f"order probe: {trap} patched into {held}",
        progress=progress,
    )
