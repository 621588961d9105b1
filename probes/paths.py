"""Path patching (Wang et al. 2022): which route carries the key, and the anchors, to the answer?

The two solutions move information along different routes in a 2-layer model:

    inferential  key -> anchor positions (layer 0 attention) -> last position (layer 1 attention)
    symmetric    anchors -> last position (layer 0 attention), then key -> last (layer 1 attention
                 reading the key's own position)

A path here is one SENDER, a sublayer output before the last layer (the embedding, layer 0's
attention or its MLP) at the positions of one role, into one RECEIVER, the last layer's
input at those positions. Everything else stays as in the corrupted run: the sender's clean
output minus its corrupted output is added to the last layer's input there and nowhere else
(not into the sublayers in between: an attention output that an MLP then reads is two paths,
attention -> last layer and MLP -> last layer, the MLP's with the MLP's whole change). In the
last layer only the last position reaches the answer, so a receiver at another position is
the last layer's attention reading it (its keys and values); at the last position it is the
whole last layer there. The senders at every role partition the last layer's input: patched all
at once they give the clean run exactly.

Roles partition the positions: key, anchor1, anchor2, last, noise (the rest, summed). Prompts
with the key at the last key position (6) are left out: there the second anchor IS the last
position, and "via the second anchor" and "at the last position" are one route.

Metric, per path: the normalised logit difference of patching.py, (mean LD_path - mean
LD_corrupted) / (mean LD_clean - mean LD_corrupted): the share of the answer the path carries
alone. Shares add up to 1 when the last layer acts linearly on its input; `interaction` = 1 -
their sum measures how far it does not (paths that only work together).

Prompt pairs (PATH_PAIRS): the key changed (where does the key travel?) and both anchors
changed (where do the anchors travel?), the trap pair (3,4) and the held-out pair (4,3) left
out of both prompts; only pairs where the model answers both prompts correctly count.
"""

from __future__ import annotations

from dataclasses import dataclass

import einops
import plotly.graph_objects as go
import torch
from jaxtyping import Float
from torch import Tensor

from models.hooked import Model, check_model_fits_task
from models.task import ROLES, AnchorTask, role_membership
from probes.figures import heatmaps
from probes.patching import PromptPairs, _answers, logit_diff, make_pairs
from probes.sites import Site, cache_of, last_logits_with

PATH_PAIRS = ("change_key", "change_anchors")
# How the routes of the module docstring read in the table: role of the sender's position.
ROUTES = {
    "key": "L(last) reads the key position",
    "anchor1": "via the anchor positions",
    "anchor2": "via the anchor positions",
    "last": "moved to the last position earlier",
    "noise": "noise positions",
}


def senders(model: Model) -> list[Site]:
    """The sublayer outputs that make up the last layer's input: the embedding (resid_pre of
    layer 0), and every attention and MLP output before the last layer."""
    last = model.cfg.n_layers - 1
    if last < 1:
        raise ValueError("path patching needs at least 2 layers: a sender before the last layer")
    return [Site("resid_pre", 0)] + [Site(kind, layer) for layer in range(last) for kind in ("attn_out", "mlp_out")]


def sender_label(site: Site) -> str:
    return "embedding" if site.kind == "resid_pre" else site.label


def path_pairs(task: AnchorTask, kind: str, n: int = 512, seed: int = 0) -> PromptPairs:
    """`n` pairs of PATH_PAIRS `kind`, neither prompt on the trap or the held-out pair, the
    key before the last key position."""
    if kind not in PATH_PAIRS:
        raise ValueError(f"unknown path-patching pair kind {kind!r}; known: {', '.join(PATH_PAIRS)}")
    usable = [p for p in task.train_pairs if p not in (task.trap_pair, task.held_out_pair)]
    pairs = make_pairs(task, kind, 4 * n, seed, pairs=usable)
    c = pairs.corrupted
    fine = torch.stack([(c.anchor1 == a) & (c.anchor2 == b) for a, b in usable]).any(0) & (c.key_pos < task.n_key_positions - 1)
    return pairs.subset(fine.nonzero().flatten()[:n])


@dataclass
class PathResult:
    """Each path's share of the answer, per sender x role, for one kind of prompt pairs."""

    kind: str  # PATH_PAIRS
    senders: list[str]
    effect: Float[Tensor, "sender role pair"]  # LD with the path patched - LD corrupted
    total: Float[Tensor, " pair"]  # LD clean - LD corrupted: everything patched
    n_dropped: int  # pairs left out: the model does not give the answers compared
    pairs: PromptPairs  # the pairs kept
    answers: tuple[Tensor, Tensor]  # LD = logit(answers[0]) - logit(answers[1]), per pair

    @property
    def share(self) -> Float[Tensor, "sender role"]:
        return self.effect.mean(-1) / self.total.mean()

    def route_shares(self) -> dict[str, float]:
        """Shares summed by route (ROUTES), every sender together."""
        by_role = self.share.sum(0)
        routes: dict[str, float] = {}
        for role, route in ROUTES.items():
            routes[route] = routes.get(route, 0.0) + by_role[ROLES.index(role)].item()
        return routes

    @property
    def interaction(self) -> float:
        return 1 - self.share.sum().item()


@dataclass
class PathPatching:
    """Path patching with both kinds of prompt pairs (module docstring)."""

    results: list[PathResult]

    def to_dict(self) -> dict:
        out = {}
        for r in self.results:
            out[r.kind] = {
                "pairs": r.effect.shape[-1],
                "routes": {route: round(v, 3) for route, v in r.route_shares().items()},
                "paths": {f"{s} @ {role}": round(r.share[i, j].item(), 3) for i, s in enumerate(r.senders) for j, role in enumerate(ROLES)},
                "sum_of_paths": round(r.share.sum().item(), 3),
                "interaction": round(r.interaction, 3),
            }
        return out

    def summary(self) -> str:
        parts = []
        for r in self.results:
            routes = ", ".join(f"{route} {v:.2f}" for route, v in r.route_shares().items())
            parts.append(f"{r.kind} ({r.effect.shape[-1]} pairs): {routes}; sum {r.share.sum():.2f}")
        return "path patching, share of the answer each route carries alone: " + "; ".join(parts)

    def figure(self) -> go.Figure:
        panels = [(f"{r.kind}: share of the answer", r.share) for r in self.results]
        return heatmaps(panels, self.results[0].senders, list(ROLES),
                        "path patching: one sender (row) at one role's positions (column) into the last layer<br>"
                        "<sub>1 = the path alone carries the whole answer; the rows and columns of a panel add up to 1 "
                        "when the paths do not interact</sub>",
                        zmin=-1, zmax=1, zmid=0, colorscale="RdBu")


def path_effects(model: Model, pairs: PromptPairs, answers: tuple[Tensor, Tensor] | None = None) -> PathResult:
    """Every sender x role path for these pairs: the logit difference between the clean and the
    corrupted answer (`answers`, default: what the model answers on each run; only pairs where
    it gives them, and they differ, count), see the module docstring."""
    clean_answer, corrupted_answer, keep, clean_logits, corrupted_logits = _answers(model, pairs, answers, ("the clean answer", "the corrupted answer"))
    pairs, clean_answer, corrupted_answer = pairs.subset(keep), clean_answer[keep], corrupted_answer[keep]
    clean, corrupted = pairs.clean, pairs.corrupted
    rows = senders(model)
    receiver = Site("resid_pre", model.cfg.n_layers - 1)
    names = {s.hook_name for s in rows} | {receiver.hook_name}
    clean_cache, corrupted_cache = cache_of(model, clean.tokens, names), cache_of(model, corrupted.tokens, names)
    corrupted_input = corrupted_cache[receiver.hook_name]  # [pair, pos, d_model]
    n_pos = clean.tokens.shape[1]
    base = logit_diff(corrupted_logits[keep], clean_answer, corrupted_answer)  # [pair]
    per_position = torch.empty(len(rows), n_pos, len(pairs))
    for i, sender in enumerate(rows):
        delta = clean_cache[sender.hook_name] - corrupted_cache[sender.hook_name]  # [pair, pos, d_model]
        for pos in range(n_pos):
            logits = last_logits_with(model, corrupted.tokens, [(receiver.at(pos), corrupted_input + delta)], {receiver.layer: corrupted_input})
            per_position[i, pos] = logit_diff(logits, clean_answer, corrupted_answer) - base
    roles = role_membership(corrupted.key_pos, n_pos)  # [pair, pos, role]: one role per position (no key at position 6)
    if (roles.sum(-1) != 1).any():
        raise ValueError("path patching needs prompts whose second anchor is not the last position (key position below the last)")
    effect = einops.einsum(per_position, roles, "sender pos pair, pair pos role -> sender role pair")
    total = logit_diff(clean_logits[keep], clean_answer, corrupted_answer) - base
    return PathResult(pairs.kind, [sender_label(s) for s in rows], effect, total, int((~keep).sum()), pairs, (clean_answer, corrupted_answer))


def path_patching(model: Model, task: AnchorTask = AnchorTask(), n: int = 512, seed: int = 0,
                  kinds: tuple[str, ...] = PATH_PAIRS) -> PathPatching:
    """Path patching of every sender x role into the last layer, for each kind of pairs, with
    the task's labels as the answers compared."""
    check_model_fits_task(model, task)
    results = []
    for kind in kinds:
        pairs = path_pairs(task, kind, n, seed)
        results.append(path_effects(model, pairs, (pairs.clean.label, pairs.corrupted.label)))
    return PathPatching(results)
