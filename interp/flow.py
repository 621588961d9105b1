"""Information flow through the positions of anchor prompts, layer by layer.

    flow = trace_flow(model, "23 1 2 43 46 74 54 44 72")   # one prompt -> Flow
    flows = trace_flows(model, task.grid(...).tokens)        # many prompts -> FlowBatch
    print(flows.route())                                     # which route the key takes

Layers are numbered as in TransformerLens (0, 1, ...): the paper's "layer 1" is layer 0.
Every view is a [layer, dst, src] matrix (row = the position that reads, column = the
position read from), computed from the model's own hooks (`attn.hook_pattern`,
`attn.hook_v`), nothing else:

- `attention` [layer, head, dst, src]: the attention pattern exactly as the hook sees it.
- `layer_flow`: heads combined (their mean), so every row still sums to 1.
- `value_flow`: attention weighted by how much each head actually writes from each source,
  A[h, i, j] * ||v_j W_O[h]|| summed over heads, rows renormalised to 1: the share of what
  the attention layer writes into position i that comes from position j (norm-based
  attribution, Kobayashi et al. 2020). With equal value norms it equals `layer_flow`.
- `rollout(kind)`: attention rollout (Abnar & Zuidema 2020) with the residual stream taken
  into account: R_l = norm(0.5 F_l + 0.5 I) @ R_(l-1), R_(-1) = I, rows renormalised.
  Row `last` of the final layer says how much the answer draws on the key and each anchor.

Roles (`models.task.ROLES`, `role_membership`). Every position of an anchor prompt plays
one or more roles: key, anchor1, anchor2, noise, last (the answer position). The last position is also anchor2 when the key sits at
the last possible slot; such prompts are left out of route summaries (there "anchors ->
last" would be the last position reading itself).

The route rule (`route`), applied to the value-weighted flow averaged per role. Raw shares
mislead: under uniform causal attention anchor1 at position 1 already draws half its input
from the key. So every share is compared with the share the same positions would get from
uniform causal attention (`uniform_flow`), and only the EXCESS counts. With one threshold t
(default 0.15), in layer l, "s -> d" is an edge when d's excess share from role s is >= t:
- the key goes INTO THE ANCHORS in layer l if anchor1 or anchor2 has an edge from the key;
- the LAST position READS THE ANCHORS if its excess from anchor1 + anchor2 together is >= t
  and larger than its excess from the key; it READS THE KEY in the opposite case;
- the anchors are FUSED at the last position if its excess from each anchor is >= t/2
  (or at anchor2 if anchor2 has an edge from anchor1).
The last position "gets the key" in layer l if it reads the key, or reads the anchors after
the key went into them in an earlier layer (their positions then carry the key).
Route names:
- "inferential" (the paper's Fig. 3a, composition): the key goes into the anchors in some
  layer l1 and the last position reads the anchors in a later layer l2, the anchors not
  being fused at the last position before l2 (so they reach it only after meeting the key);
- "symmetric" (lookup): the anchors are fused at the last position in some layer l1 and the
  last position gets the key in a later layer l2 (the pair is looked up as an unordered
  bag, then the key);
- "mixed" if both hold, "other" if neither. Layers around the decisive ones can do
  anything, so deeper models are named by the same rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal, Sequence

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor

from models.hooked import Model, check_model_fits_task
from models.task import ROLES, AnchorBatch, AnchorTask, PromptLike, role_membership

FlowKind = Literal["attention", "value"]
ROUTE_THRESHOLD = 0.15
_CHUNK = 4096  # prompts per forward pass: bounds memory, not a loop over prompts


# ---- the three views, for any leading batch dimensions --------------------------------------
def combine_heads(attention: Float[Tensor, "... layer head dst src"]) -> Float[Tensor, "... layer dst src"]:
    """Heads combined by their mean: rows still sum to 1."""
    return attention.mean(dim=-3)


def value_weighted(
    attention: Float[Tensor, "... layer head dst src"], value_norms: Float[Tensor, "... layer head src"]
) -> Float[Tensor, "... layer dst src"]:
    """sum_h A[h, i, j] * ||v_j W_O[h]||, each row renormalised to sum to 1."""
    written = (attention * value_norms.unsqueeze(-2)).sum(dim=-3)  # [..., layer, dst, src]
    return written / written.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(written.dtype).tiny)


def rollout(flow: Float[Tensor, "... layer dst src"]) -> Float[Tensor, "... layer dst src"]:
    """Attention rollout with the residual (Abnar & Zuidema 2020): after layer l, how much
    of position i comes from input token j. Rows sum to 1."""
    eye = torch.eye(flow.shape[-1], dtype=flow.dtype)
    mixed = 0.5 * flow + 0.5 * eye  # the residual stream carries half
    mixed = mixed / mixed.sum(dim=-1, keepdim=True)
    total = eye.expand(flow.shape[:-3] + eye.shape)  # [..., dst, src]
    out = []
    for layer in range(flow.shape[-3]):
        total = mixed[..., layer, :, :] @ total
        out.append(total)
    return torch.stack(out, dim=-3)


def uniform_flow(seq_len: int) -> Float[Tensor, "dst src"]:
    """Uniform causal attention: the baseline a share is measured against."""
    causal = torch.ones(seq_len, seq_len).tril()
    return causal / causal.sum(dim=-1, keepdim=True)


def uniform_role_flow(membership: Float[Tensor, "batch pos role"], n_layers: int) -> Float[Tensor, "layer role_dst role_src"]:
    """`role_flow` of uniform causal attention over the same prompts: the route baseline."""
    uniform = uniform_flow(membership.shape[1]).expand(len(membership), 1, -1, -1)  # the same in every layer
    return role_flow(uniform, membership).expand(n_layers, -1, -1)


def role_flow(flow: Float[Tensor, "batch layer dst src"], membership: Float[Tensor, "batch pos role"]) -> Float[Tensor, "layer role_dst role_src"]:
    """Mean over prompts of: the share a position of role d draws from all positions of
    role s (summed over s's positions, averaged over d's positions; noise has several)."""
    from_role = einops.einsum(flow, membership, "b l d s, b s r -> b l d r")
    per_role = einops.einsum(membership, from_role, "b d q, b l d r -> b l q r")
    count = einops.rearrange(membership.sum(dim=1), "b q -> b 1 q 1")
    return (per_role / count).nanmean(dim=0)  # a role with no position (no noise) gives 0/0: skipped


# ---- reading the model --------------------------------------------------------------------
def _wanted(name: str) -> bool:
    return name.endswith("attn.hook_pattern") or name.endswith("attn.hook_v")


@torch.inference_mode()
def _read(model: Model, tokens: Int[Tensor, "batch pos"]) -> tuple[Tensor, Tensor, Tensor]:
    """Attention patterns, value norms through W_O, and the predicted token, from one cached
    forward pass per chunk that keeps only the two hooks needed."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    W_O = torch.stack([block.attn.W_O for block in model.blocks])  # [layer, head, d_head, d_model]
    patterns, norms, predictions = [], [], []
    for chunk in tokens.split(_CHUNK):
        logits, cache = model.run_with_cache(chunk, names_filter=_wanted)
        patterns.append(torch.stack([cache["pattern", layer] for layer in range(n_layers)], dim=1))  # [b, layer, head, dst, src]
        v = torch.stack([cache["v", layer] for layer in range(n_layers)], dim=1)  # [b, layer, src, kv_head, d_head]
        if v.shape[-2] != n_heads:  # grouped-query attention: kv heads are shared
            v = v.repeat_interleave(n_heads // v.shape[-2], dim=-2)
        written = einops.einsum(v, W_O, "b l s h e, l h e d -> b l h s d")
        norms.append(written.norm(dim=-1))  # [b, layer, head, src]
        predictions.append(logits[:, -1].argmax(dim=-1))
    return torch.cat(patterns), torch.cat(norms), torch.cat(predictions)


def _prompts_of(prompts: Sequence[PromptLike] | Tensor | AnchorBatch, task: AnchorTask) -> AnchorBatch:
    """Validated prompts: an AnchorBatch is checked like any token tensor (vocabulary, one
    key and anchor pair per prompt), so a token -1 is refused, not read as the last id."""
    if isinstance(prompts, AnchorBatch):
        task.prompts(prompts.tokens)
        return prompts
    return task.prompts(prompts)


def flow_prompts(task: AnchorTask, n: int, seed: int = 0) -> AnchorBatch:
    """`n` random prompts of every pair (held-out and trap included), any key: what mean
    role flows and route summaries average over."""
    return task.sample(n, torch.Generator().manual_seed(seed), pairs=task.pairs, keys="any")


def trace_flows(model: Model, prompts: Sequence[PromptLike] | Tensor | AnchorBatch, task: AnchorTask = AnchorTask()) -> FlowBatch:
    """Flow for many prompts at once (a list of prompts, a [batch, pos] token tensor, or an
    AnchorBatch), with tensor ops only: no Python loop per prompt."""
    check_model_fits_task(model, task)
    batch = _prompts_of(prompts, task)
    attention, value_norms, prediction = _read(model, batch.tokens)
    return FlowBatch(batch, attention, value_norms, prediction)


def trace_flow(model: Model, prompt: PromptLike, task: AnchorTask = AnchorTask()) -> Flow:
    """Flow for one prompt: "23 1 2 43 46 74 54 44 72", a list of ints or a token tensor
    ([pos], or [1, pos]); several prompts go to `trace_flows`."""
    batch = task.prompt(prompt)
    if len(batch) != 1:
        raise ValueError(f"trace_flow takes one prompt, got {len(batch)} (a tensor of shape {tuple(batch.tokens.shape)}); use trace_flows for many")
    return trace_flows(model, batch, task)[0]


# ---- results ------------------------------------------------------------------------------
def check_index(what: str, index: int, size: int) -> int:
    """`index` as a non-negative index into `size` things; a clear error when out of range."""
    if not isinstance(index, int) or not -size <= index < size:
        raise ValueError(f"{what} {index!r} does not exist: the model has {size} {what}s (0..{size - 1})")
    return index % size


def _pick(kind: FlowKind, attention: Tensor, value_norms: Tensor) -> Tensor:
    if kind == "attention":
        return combine_heads(attention)
    if kind == "value":
        return value_weighted(attention, value_norms)
    raise ValueError(f"flow kind must be 'attention' or 'value', got {kind!r}")


@dataclass(frozen=True)
class Flow:
    """Flow through one prompt. Tensors are [layer, head, dst, src] / [layer, dst, src]."""

    tokens: Int[Tensor, " pos"]
    key_pos: int
    attention: Float[Tensor, "layer head dst src"]
    value_norms: Float[Tensor, "layer head src"]  # ||v_src W_O[h]||: what head h writes from src
    prediction: int  # argmax of the last-position logits

    @property
    def n_layers(self) -> int:
        return self.attention.shape[0]

    @property
    def n_heads(self) -> int:
        return self.attention.shape[1]

    @property
    def layer_flow(self) -> Float[Tensor, "layer dst src"]:
        return combine_heads(self.attention)

    @property
    def value_flow(self) -> Float[Tensor, "layer dst src"]:
        return value_weighted(self.attention, self.value_norms)

    def flow(self, kind: FlowKind = "value") -> Float[Tensor, "layer dst src"]:
        return _pick(kind, self.attention, self.value_norms)

    def rollout(self, kind: FlowKind = "attention") -> Float[Tensor, "layer dst src"]:
        return rollout(self.flow(kind))

    def head(self, layer: int, head: int) -> Float[Tensor, "dst src"]:
        """One head's pattern; a clear error for a layer or head the model lacks."""
        return self.attention[check_index("layer", layer, self.n_layers), check_index("head", head, self.n_heads)]

    @property
    def roles(self) -> list[str]:
        """Role names per position, e.g. ['noise', 'key', 'anchor1', 'anchor2', ..., 'last'];
        a position with two roles is 'anchor2+last'."""
        return ["+".join(ROLES[r] for r in row.nonzero().flatten().tolist()) for row in self.membership]

    @property
    def membership(self) -> Float[Tensor, "pos role"]:
        return role_membership(torch.tensor([self.key_pos]), len(self.tokens))[0]

    def role_flow(self, kind: FlowKind = "value") -> Float[Tensor, "layer role_dst role_src"]:
        return role_flow(self.flow(kind)[None], self.membership[None])

    def route(self, threshold: float = ROUTE_THRESHOLD, kind: FlowKind = "value") -> Route:
        """The route rule (module docstring) on this prompt alone."""
        return route_of(self.role_flow(kind), uniform_role_flow(self.membership[None], self.n_layers), threshold, n_prompts=1)

    def figure(self, kind: FlowKind = "value", title: str | None = None):
        """The paper's Fig. 3a: positions as nodes per layer, line width = flow."""
        from interp.figures import flow_diagram

        return flow_diagram(self, kind=kind, title=title)


@dataclass(frozen=True)
class FlowBatch:
    """Flow through many prompts. Tensors carry a leading batch axis."""

    prompts: AnchorBatch
    attention: Float[Tensor, "batch layer head dst src"]
    value_norms: Float[Tensor, "batch layer head src"]
    prediction: Int[Tensor, " batch"]
    _flows: dict = field(default_factory=dict, repr=False, compare=False)  # kind -> flow

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i: int) -> Flow:
        i = check_index("prompt", i, len(self))
        return Flow(self.prompts.tokens[i], int(self.prompts.key_pos[i]), self.attention[i], self.value_norms[i], int(self.prediction[i]))

    def flow(self, kind: FlowKind = "value") -> Float[Tensor, "batch layer dst src"]:
        if kind not in self._flows:  # computed once: route summaries per key position reuse it
            self._flows[kind] = _pick(kind, self.attention, self.value_norms)
        return self._flows[kind]

    def rollout(self, kind: FlowKind = "attention") -> Float[Tensor, "batch layer dst src"]:
        return rollout(self.flow(kind))

    @cached_property
    def membership(self) -> Float[Tensor, "batch pos role"]:
        return role_membership(self.prompts.key_pos, self.prompts.tokens.shape[1])

    def _select(self, keep: Tensor | None) -> Tensor:
        if keep is None:
            keep = torch.ones(len(self), dtype=torch.bool)
        if not keep.any():
            raise ValueError("no prompts left to average over")
        return keep

    def role_flow(self, kind: FlowKind = "value", keep: Tensor | None = None) -> Float[Tensor, "layer role_dst role_src"]:
        """Mean flow between roles (ROLES order) over the prompts in `keep` (default all)."""
        keep = self._select(keep)
        return role_flow(self.flow(kind)[keep], self.membership[keep])

    def role_rollout(self, kind: FlowKind = "attention", keep: Tensor | None = None) -> Float[Tensor, "layer role_dst role_src"]:
        keep = self._select(keep)
        return role_flow(self.rollout(kind)[keep], self.membership[keep])

    def uniform_role_flow(self, keep: Tensor | None = None) -> Float[Tensor, "layer role_dst role_src"]:
        """What `role_flow` would be under uniform causal attention (the route baseline)."""
        return uniform_role_flow(self.membership[self._select(keep)], self.attention.shape[1])

    def anchors_before_last(self) -> Tensor:
        """Prompts whose second anchor is not the last position (see the module docstring)."""
        return self.prompts.key_pos + 2 < self.prompts.tokens.shape[1] - 1

    def route(self, threshold: float = ROUTE_THRESHOLD, kind: FlowKind = "value", keep: Tensor | None = None) -> Route:
        """The route rule (module docstring) on the mean role flow of the prompts in `keep`
        (default: every prompt whose anchors sit before the last position)."""
        keep = self._select(self.anchors_before_last() if keep is None else keep)
        return route_of(self.role_flow(kind, keep), self.uniform_role_flow(keep), threshold, n_prompts=int(keep.sum()))

    def routes_by_key_position(self, threshold: float = ROUTE_THRESHOLD, kind: FlowKind = "value") -> dict[int, Route]:
        """The route for each key position on its own (mixed models differ by position).
        Key positions whose second anchor is the last position are left out, as in `route`:
        the rule is ill-defined there (module docstring); `unrouted_key_positions` lists them."""
        key_pos = self.prompts.key_pos
        return {p: self.route(threshold, kind, keep=key_pos == p) for p in sorted(set(key_pos[self.anchors_before_last()].tolist()))}

    def unrouted_key_positions(self) -> list[int]:
        """Key positions present whose second anchor is the last position: no route is named."""
        return sorted(set(self.prompts.key_pos[~self.anchors_before_last()].tolist()))


# ---- the route rule ------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerRoute:
    layer: int
    key_into: tuple[str, ...]  # roles with an edge from the key in this layer
    last_reads: str  # "anchors", "key" or "-"
    fused_at: str | None  # where anchor1 and anchor2 meet in this layer: "last", "anchor2" or None
    edges: dict[str, tuple[float, float]]  # "src -> dst": (share, uniform share), excess >= threshold

    def __str__(self) -> str:
        ranked = sorted(self.edges.items(), key=lambda kv: kv[1][1] - kv[1][0])
        edges = ", ".join(f"{e} {s:.2f} (uniform {u:.2f})" for e, (s, u) in ranked) or "no edge"
        key = " + ".join(self.key_into) or "stays"
        fused = f"; anchors fused at {self.fused_at}" if self.fused_at else ""
        return f"layer {self.layer}: key -> {key}; last reads {self.last_reads}{fused}  [{edges}]"


@dataclass(frozen=True)
class Route:
    name: str  # inferential / symmetric / mixed / other
    layers: list[LayerRoute]
    threshold: float
    n_prompts: int

    @property
    def description(self) -> str:
        return {
            "inferential": "key -> anchors, then anchors -> last (composition)",
            "symmetric": "anchors -> last, then key -> last (lookup)",
            "mixed": "both the inferential and the symmetric route",
            "other": "neither the inferential nor the symmetric route",
        }[self.name]

    def __str__(self) -> str:
        lines = [f"route: {self.name} ({self.description}); {self.n_prompts} prompt(s), threshold {self.threshold}"]
        return "\n".join(lines + [f"  {layer}" for layer in self.layers])


def route_of(
    shares: Float[Tensor, "layer role_dst role_src"],
    uniform: Float[Tensor, "layer role_dst role_src"],
    threshold: float = ROUTE_THRESHOLD,
    n_prompts: int = 1,
) -> Route:
    """Name the route from per-role shares and their uniform-attention baseline (see the
    module docstring for the rule)."""
    if not 0 < threshold < 1:
        raise ValueError(f"route threshold must be in (0, 1), got {threshold}")
    key, a1, a2, _, last = range(len(ROLES))
    layers = []
    for layer, (share, excess) in enumerate(zip(shares.tolist(), (shares - uniform).tolist())):
        key_into = tuple(ROLES[d] for d in (a1, a2, last) if excess[d][key] >= threshold)
        anchors, direct = excess[last][a1] + excess[last][a2], excess[last][key]
        last_reads = "anchors" if anchors >= threshold and anchors > direct else "key" if direct >= threshold and direct > anchors else "-"
        fused_at = "last" if min(excess[last][a1], excess[last][a2]) >= threshold / 2 else "anchor2" if excess[a2][a1] >= threshold else None
        edges = {
            f"{ROLES[s]} -> {ROLES[d]}": (share[d][s], share[d][s] - excess[d][s])
            for d in (a1, a2, last)
            for s in range(len(ROLES))
            if s != d and excess[d][s] >= threshold
        }
        layers.append(LayerRoute(layer, key_into, last_reads, fused_at, edges))
    return Route(_route_name(layers), layers, threshold, n_prompts)


def _route_name(layers: list[LayerRoute]) -> str:
    into_anchors = [i for i, l in enumerate(layers) if {"anchor1", "anchor2"} & set(l.key_into)]
    fused_at_last = [i for i, l in enumerate(layers) if l.fused_at == "last"]
    reads_anchors = [i for i, l in enumerate(layers) if l.last_reads == "anchors"]
    gets_key = [i for i, l in enumerate(layers) if l.last_reads == "key" or (l.last_reads == "anchors" and into_anchors and into_anchors[0] < i)]
    inferential = any(into_anchors[0] < i and not any(f < i for f in fused_at_last) for i in reads_anchors) if into_anchors else False
    symmetric = any(fused_at_last[0] < i for i in gets_key) if fused_at_last else False
    return {(True, True): "mixed", (True, False): "inferential", (False, True): "symmetric"}.get((inferential, symmetric), "other")
