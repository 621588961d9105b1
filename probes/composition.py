"""The composition test: does the model carry the single-anchor intermediate g(x; a1)?

An interchange intervention. Take two prompts with their key at the same position and the
same noise: A = (x_A, a1_A, a2_A) and B = (x_B, a1_B, a2_B). Run B, but overwrite the
residual stream at one (layer, position) with A's. If that site holds the first step of a
composition, y_A = g(x_A; a1_A), and the rest of the network applies B's second anchor to
whatever y it finds, B's answer becomes

    compositional:  g(y_A; a2_B) = x_A + shift(a1_A) + shift(a2_B)

The pairs are drawn so that this answer differs from every other simple outcome, each
counted too:

    unchanged     B's own answer (the site carries nothing B's answer uses)
    copied_a      A's own answer (the site carries A's whole answer, a2_A included)
    key_only      x_A + (B's pair): the site carries A's key alone
    anchor_only   x_B + (a1_A, a2_B): the site carries A's first anchor alone
    pair_only     x_B + (A's pair): the site carries A's two anchors, fused, without the key
    other         anything else (a mixture, or broken)

which holds when x_A != x_B, a1_A != a1_B, a2_A != a2_B and the six answers are distinct.
The trap pair (3,4) and the held-out pair (4,3) are left out of A, B and the recombined
pair (a1_A, a2_B), so every answer above is a trained one; only pairs that the model answers
correctly (A and B) count.

Sites: the residual stream before and after each sublayer and what each sublayer wrote
(attn_out: what attention moved INTO a position, without that position's own token). A
prompt's whole residual stream at the second anchor's position also holds that anchor, so
it can only copy A's answer; attention's output there isolates what came from elsewhere.

How to read it: `fraction("compositional")` per site (rows) x position (or role: key,
anchor1, anchor2, noise, last). A composing (inferential) model has a site where it is near 1: wherever
the key and the first anchor meet without the second anchor. In the trained inferential
model (2 layers, 1 head) it is what layer 0's attention writes into the second anchor's
position (L0 attn_out @ anchor2: 1.00 for the shipped model), where the key and a1 are gathered and a2's own token
adds the second step; in the handmade composer of the tests it is the first anchor's
position after layer 0. A lookup (symmetric) model has no such site: its anchors fuse,
order-free, at the last position (pair_only there) and the key joins them afterwards, so
every site carries the key alone, an anchor alone, the fused pair, or everything.
"""

from __future__ import annotations

from dataclasses import dataclass

import plotly.graph_objects as go
import torch
from jaxtyping import Float, Int
from torch import Tensor

from models.hooked import Model, check_model_fits_task
from models.task import AnchorTask, KeySplit
from probes.figures import heatmaps
from probes.patching import PromptPairs, in_split, sample_prompts
from probes.sites import Site, by_role, columns, last_logits_with, sources_of, stream_rows, sweep_logits

OUTCOMES = ("compositional", "unchanged", "copied_a", "key_only", "anchor_only", "pair_only", "other")
FIGURE_OUTCOMES = ("compositional", "copied_a", "pair_only")  # composing, carrying everything, fused anchors


def composition_pairs(task: AnchorTask, n: int = 512, seed: int = 0, keys: KeySplit = "any", key_pos: int | None = None) -> PromptPairs:
    """`n` (A, B) pairs (clean = A, the source; corrupted = B, the target), same key position
    and noise, on which the outcomes of the module docstring predict six different answers."""
    usable = [p for p in task.train_pairs if p not in (task.trap_pair, task.held_out_pair)]
    gen = torch.Generator().manual_seed(seed + 2)
    target = sample_prompts(task, 8 * n, seed, usable, keys, key_pos)  # oversampled: some draws are filtered out
    usable_t = torch.tensor(usable)  # [n_usable, 2]
    pick = usable_t[torch.randint(len(usable), (len(target),), generator=gen)]
    a1, a2 = pick[:, 0], pick[:, 1]
    x = torch.randint(task.key_min, task.key_max + 1, (len(target),), generator=gen)
    predicted = outcome_answers(task, x, a1, a2, target.key, target.anchor1, target.anchor2)  # [6, batch]
    recombined_usable = (torch.stack([a1, target.anchor2], 1)[:, None] == usable_t).all(-1).any(-1)
    n_out = len(predicted)
    distinct = torch.stack([predicted[i] != predicted[j] for i in range(n_out) for j in range(i + 1, n_out)]).all(0)
    ok = in_split(task, x, target.key_pos, keys) & recombined_usable & distinct & (x != target.key) & (a1 != target.anchor1) & (a2 != target.anchor2)
    chosen = ok.nonzero().flatten()[:n]
    if len(chosen) < n:
        raise ValueError(f"only {len(chosen)} of {n} composition pairs could be drawn for {keys} keys at key position {key_pos}")
    target = target.subset(chosen)
    tokens = target.tokens.clone()
    rows, at = torch.arange(n), target.key_pos
    tokens[rows, at], tokens[rows, at + 1], tokens[rows, at + 2] = x[chosen], a1[chosen], a2[chosen]
    return PromptPairs(task.prompts(tokens), target, "composition")


def outcome_answers(task: AnchorTask, x_a, a1_a, a2_a, x_b, a1_b, a2_b) -> Int[Tensor, "outcome batch"]:
    """The answer each outcome but 'other' predicts for B patched from A (OUTCOMES order)."""
    n = max(task.anchors) + 1
    single, composite, label = torch.zeros(n, dtype=torch.long), torch.zeros(n, n, dtype=torch.long), torch.zeros(n, n, dtype=torch.long)
    for a in task.anchors:
        single[a] = task.shift(a)
    for p in task.pairs:
        composite[p], label[p] = task.composite_shift(*p), task.label_shift(*p)
    return torch.stack([
        x_a + single[a1_a] + single[a2_b],  # compositional
        x_b + label[a1_b, a2_b],  # unchanged
        x_a + label[a1_a, a2_a],  # copied_a
        x_a + label[a1_b, a2_b],  # key_only
        x_b + composite[a1_a, a2_b],  # anchor_only
        x_b + label[a1_a, a2_a],  # pair_only
    ])


@dataclass
class CompositionResult:
    """Outcome of every interchange (stream point x position x pair); see the module docstring."""

    rows: list[Site]  # points of the residual stream
    pairs: PromptPairs  # clean = A (source), corrupted = B (target); only those answered correctly
    predicted: Int[Tensor, "outcome pair"]  # the answer each outcome (OUTCOMES[:-1]) predicts
    outcome: Int[Tensor, "row pos pair"]  # index into OUTCOMES
    n_dropped: int  # pairs left out: the model got A or B wrong

    def _check(self, outcome: str) -> int:
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}; known: {', '.join(OUTCOMES)}")
        return OUTCOMES.index(outcome)

    def fraction(self, outcome: str = "compositional") -> Float[Tensor, "row pos"]:
        return (self.outcome == self._check(outcome)).float().mean(-1)

    def fraction_by_role(self, outcome: str = "compositional") -> Float[Tensor, "row role"]:
        return by_role(self.outcome == self._check(outcome), self.pairs.corrupted).mean(-1)

    def columns(self) -> tuple[list[str], dict[str, Tensor]]:
        """Column labels and every outcome's fractions (sites.columns: absolute positions
        when all pairs share a key position, roles otherwise)."""
        fractions = {}
        for o in OUTCOMES:
            labels, hits = columns(self.outcome == self._check(o), self.pairs.corrupted)
            fractions[o] = hits.mean(-1)
        return labels, fractions

    def best(self) -> tuple[str, str, float]:
        """The site where most interventions behave compositionally: (row, column, fraction)."""
        labels, fractions = self.columns()
        values = fractions["compositional"]
        i = int(values.flatten().argmax())
        return self.rows[i // values.shape[1]].label, labels[i % values.shape[1]], values.flatten()[i].item()

    def summary(self) -> str:
        row, col, value = self.best()
        return f"composition test: {len(self.pairs)} pairs ({self.n_dropped} left out); most compositional site {row} @ {col}: {value:.2f}"

    def figure(self) -> go.Figure:
        labels, fractions = self.columns()
        hover = [[", ".join(f"{o} {fractions[o][r, c]:.2f}" for o in OUTCOMES) for c in range(len(labels))] for r in range(len(self.rows))]
        return heatmaps(
            [(o, fractions[o]) for o in FIGURE_OUTCOMES],
            [row.label for row in self.rows],
            labels,
            f"composition test: one activation of A patched into B<br><sub>{len(self.pairs)} pairs; compositional = "
            "B answers g(g(x_A; a1_A); a2_B); hover for every outcome</sub>",
            zmin=0,
            zmax=1,
            colorscale="Viridis",
            hover=[hover] * len(FIGURE_OUTCOMES),
        )


def composition_rows(model: Model) -> list[Site]:
    """The residual stream before and after each sublayer, and what each sublayer wrote
    (attn_out: what attention moved into a position, without the position's own token)."""
    return stream_rows(model, ("resid_pre", "attn_out", "resid_mid", "mlp_out"))


def composition_test(
    model: Model,
    task: AnchorTask = AnchorTask(),
    n: int = 512,
    seed: int = 0,
    keys: KeySplit = "any",
    key_pos: int | None = None,
    progress: bool = True,
) -> CompositionResult:
    """Patch A's residual stream into B at every stream point and position, one forward per
    site over all pairs, and classify each answer (module docstring)."""
    check_model_fits_task(model, task)
    pairs = composition_pairs(task, n, seed, keys, key_pos)
    pairs.require_aligned("the composition test")
    a, b = pairs.clean, pairs.corrupted
    right = (last_logits_with(model, a.tokens, []).argmax(-1) == a.label) & (last_logits_with(model, b.tokens, []).argmax(-1) == b.label)
    if not right.any():
        raise ValueError(f"the composition test is undefined: the model answers none of the {n} prompt pairs correctly (both A and B)")
    pairs = pairs.subset(right)
    a, b = pairs.clean, pairs.corrupted
    predicted = outcome_answers(task, a.key, a.anchor1, a.anchor2, b.key, b.anchor1, b.anchor2)  # [outcome, pair]
    rows = composition_rows(model)
    outcome = torch.empty(len(rows), b.tokens.shape[1], len(pairs), dtype=torch.long)
    for r, pos, logits in sweep_logits(model, b.tokens, sources_of(model, a.tokens, rows), "composition test", progress):
        answer = logits.argmax(-1)  # [pair]
        matches = torch.cat([answer == predicted, torch.ones(1, len(pairs), dtype=torch.bool)])  # [outcome, pair]: 'other' always matches
        outcome[r, pos] = matches.int().argmax(0)  # the first matching outcome
    return CompositionResult(rows, pairs, predicted, outcome, int((~right).sum()))
