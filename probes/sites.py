"""Where a probe reads or overwrites the forward pass: sites named after TransformerLens hooks,
the forward pass with sites overwritten, the site-by-position sweep every probe runs, and
the role of each position in a prompt.

A `Site` is one hook (`kind` at `layer`), optionally one position and one head:
`Site("z", 1, pos=3, head=0)` is `blocks.1.attn.hook_z[:, 3, 0]`. Every probe (ablation,
patching, composition) overwrites sites through `last_logits_with` (a sweep, one site at
each position in turn, through `sweep_logits`), so one function holds the hook logic and the
hook-correctness tests cover all of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Callable, Iterator, Sequence

import einops
import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformer_lens.utilities import apply_softcap, get_act_name

from models.hooked import Model, final_residual
from models.task import ROLES, AnchorBatch, role_membership

# kind -> what its hook holds; all are [batch, pos, ...], so position is always axis 1.
KINDS: dict[str, str] = {
    "resid_pre": "residual stream entering block L  [batch, pos, d_model]",
    "resid_mid": "residual stream after block L's attention  [batch, pos, d_model]",
    "resid_post": "residual stream leaving block L  [batch, pos, d_model]",
    "attn_out": "block L's attention output, all heads  [batch, pos, d_model]",
    "mlp_out": "block L's MLP output  [batch, pos, d_model]",
    "z": "one head's attention-weighted values, before W_O  [batch, pos, head, d_head]",
}
HEAD_KINDS = ("z",)


@dataclass(frozen=True)
class Site:
    kind: str
    layer: int
    pos: int | None = None  # None: every position
    head: int | None = None  # head kinds only (required there)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown site kind {self.kind!r}; known: {', '.join(KINDS)}")
        if self.kind in HEAD_KINDS and self.head is None:
            raise ValueError(f"site kind {self.kind!r} needs a head")
        if self.kind not in HEAD_KINDS and self.head is not None:
            raise ValueError(f"site kind {self.kind!r} has no heads (head={self.head}); per-head kinds: {', '.join(HEAD_KINDS)}")
        for name in ("layer", "pos", "head"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"site {name} must be a non-negative integer, got {value!r}")

    @property
    def hook_name(self) -> str:
        return get_act_name(self.kind, self.layer)

    @property
    def index(self) -> tuple:
        """Index into the hook's activation: all prompts, this position, this head."""
        pos = slice(None) if self.pos is None else self.pos
        return (slice(None), pos) if self.head is None else (slice(None), pos, self.head)

    def at(self, pos: int | None) -> "Site":
        return replace(self, pos=pos)

    def check(self, model: Model) -> "Site":
        cfg = model.cfg
        if self.layer >= cfg.n_layers:
            raise ValueError(f"site {self}: layer {self.layer} out of range, the model has {cfg.n_layers} layers")
        if self.pos is not None and self.pos >= cfg.n_ctx:
            raise ValueError(f"site {self}: position {self.pos} out of range, the model reads {cfg.n_ctx} positions")
        if self.head is not None and self.head >= cfg.n_heads:
            raise ValueError(f"site {self}: head {self.head} out of range, the model has {cfg.n_heads} heads")
        return self

    @property
    def label(self) -> str:
        """Short name for a figure row (position left out)."""
        return f"L{self.layer} {self.kind}" + ("" if self.head is None else f" H{self.head}")

    def __str__(self) -> str:
        parts = [self.kind, str(self.layer)] + ([] if self.pos is None else [f"pos={self.pos}"]) + ([] if self.head is None else [f"head={self.head}"])
        return ":".join(parts)

    @classmethod
    def parse(cls, text: str) -> "Site":
        """'KIND:LAYER[:pos=P][:head=H]', e.g. 'mlp_out:1', 'z:0:head=0', 'resid_pre:1:pos=3'."""
        match = re.fullmatch(r"(\w+):(\d+)((?::(?:pos|head)=\d+)*)", text.strip())
        if not match:
            raise ValueError(f"cannot read site {text!r}: expected KIND:LAYER[:pos=P][:head=H], e.g. z:0:head=0 or resid_pre:1:pos=3")
        extra = dict(part.split("=") for part in match.group(3).split(":") if part)
        return cls(match.group(1), int(match.group(2)), **{k: int(v) for k, v in extra.items()})


def sweep_rows(model: Model, kinds: Sequence[str]) -> list[Site]:
    """One row per (layer, kind[, head]), layer by layer: the rows of a site-by-position sweep."""
    rows = []
    for layer in range(model.cfg.n_layers):
        for kind in kinds:
            heads = range(model.cfg.n_heads) if kind in HEAD_KINDS else [None]
            rows += [Site(kind, layer, head=h) for h in heads]
    return rows


def stream_rows(model: Model, kinds: Sequence[str] = ("resid_pre", "resid_mid")) -> list[Site]:
    """Points along the forward pass, layer by layer (default: the residual stream before and
    after each attention), and the residual stream at the end."""
    return sweep_rows(model, kinds) + [Site("resid_post", model.cfg.n_layers - 1)]


# ---- the forward pass with sites overwritten ------------------------------------------
Patch = tuple[Site, Tensor]  # (site, source activation: [batch or 1, pos, ...] of the site's hook)


def _overwrite(site: Site, source: Tensor) -> Callable:
    index = site.index

    def hook(activation: Tensor, hook) -> Tensor:
        activation[index] = source[index]  # a source with batch 1 broadcasts over prompts
        return activation

    return hook


@torch.inference_mode()
def last_logits_with(
    model: Model,
    tokens: Int[Tensor, "batch pos"],
    patches: Sequence[Patch],
    resid_pre: dict[int, Float[Tensor, "batch pos d_model"]] | None = None,
) -> Float[Tensor, "batch d_vocab"]:
    """Last-position logits of `tokens` with every site in `patches` overwritten by the same
    slice of its source activation. One forward over the whole batch, hooks removed after it
    (TransformerLens' run_with_hooks), even when it raises.

    `resid_pre` (layer -> this run's unpatched residual stream entering that layer) lets the
    pass start at the first patched layer instead of the embedding: the blocks before it
    would recompute exactly those activations."""
    for site, _ in patches:
        site.check(model)
    start = min((site.layer for site, _ in patches), default=0)
    if resid_pre is not None and start in resid_pre:
        inputs, start_at = resid_pre[start].clone(), start  # a resid_pre patch writes into it
    else:
        inputs, start_at = tokens, None
    hooks = [(site.hook_name, _overwrite(site, source)) for site, source in patches]
    resid = final_residual(model, inputs, hooks, start_at_layer=start_at)  # [batch, pos, d_model]
    return readout(model, resid[:, -1:, :])[:, 0, :]


def readout(model: Model, resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab"]:
    """The model's final norm and unembedding: its logits from the last residual stream
    (the end of the model's forward, applied to the last position only: the task reads
    one token, and the unembedding of the others is a fifth of the work)."""
    if hasattr(model, "ln_final"):
        resid = model.ln_final(resid)
    return apply_softcap(model.unembed(resid), model.cfg.output_logits_soft_cap)


@torch.inference_mode()
def cache_of(model: Model, tokens: Int[Tensor, "batch pos"], names: set[str]) -> dict[str, Tensor]:
    """Activations at the named hooks (TransformerLens' run_with_cache, nothing else kept)."""
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name in names, return_type=None)
    return {name: cache[name] for name in names}


def resid_pre_cache(model: Model, tokens: Int[Tensor, "batch pos"]) -> dict[int, Tensor]:
    """layer -> residual stream entering it, the starting points for `last_logits_with`."""
    names = {get_act_name("resid_pre", layer): layer for layer in range(model.cfg.n_layers)}
    cache = cache_of(model, tokens, set(names))
    return {layer: cache[name] for name, layer in names.items()}


def sources_of(model: Model, tokens: Int[Tensor, "batch pos"], rows: Sequence[Site]) -> list[Patch]:
    """Each row with its activation on `tokens`: the source run of a patching sweep."""
    cache = cache_of(model, tokens, {row.hook_name for row in rows})
    return [(row, cache[row.hook_name]) for row in rows]


def sweep_logits(
    model: Model,
    tokens: Int[Tensor, "batch pos"],
    rows: Sequence[Patch],
    desc: str,
    progress: bool = True,
) -> Iterator[tuple[int, int, Float[Tensor, "batch d_vocab"]]]:
    """The sweep of every probe: for each row (a site and its source activation) and each
    position, the last-position logits of `tokens` with that site overwritten at that
    position alone, one forward over the whole batch starting at the site's layer.
    Yields (row index, position, logits), with a progress bar."""
    start = resid_pre_cache(model, tokens)
    cells = [(r, pos) for r in range(len(rows)) for pos in range(tokens.shape[1])]
    for r, pos in tqdm(cells, desc=desc, disable=not progress, leave=False):
        site, source = rows[r]
        yield r, pos, last_logits_with(model, tokens, [(site.at(pos), source)], start)


# ---- the roles of positions ---------------------------------------------
def by_role(values: Float[Tensor, "... pos batch"], batch: AnchorBatch) -> Float[Tensor, "... role batch"]:
    """Regroup per-position values of each prompt by the role of the position in that prompt
    (ROLES of models.task): the mean over the positions of each role (one position each, but
    several of noise). Prompts with different key positions line up by role, where absolute
    positions would mix a key with an anchor."""
    membership = role_membership(batch.key_pos, values.shape[-2])  # [batch, pos, role]
    total = einops.einsum(values.float(), membership, "... pos batch, batch pos role -> ... role batch")
    count = einops.rearrange(membership.sum(1), "batch role -> role batch")
    return total / count.clamp(min=1)


def position_labels(batch: AnchorBatch) -> list[str]:
    """Column labels for absolute positions, with the roles (noise aside) that the position
    plays in every prompt, e.g. '2 anchor1' or '8 anchor2/last'."""
    n_pos = batch.tokens.shape[1]
    everywhere = role_membership(batch.key_pos, n_pos).bool().all(0)  # [pos, role]
    labels = []
    for p in range(n_pos):
        roles = [role for r, role in enumerate(ROLES) if role != "noise" and everywhere[p, r]]
        labels.append(f"{p} {'/'.join(roles)}" if roles else str(p))
    return labels


def columns(values: Float[Tensor, "... pos batch"], batch: AnchorBatch) -> tuple[list[str], Float[Tensor, "... column batch"]]:
    """Per-prompt values by absolute position (labelled with roles) when every prompt has its
    key at the same position; by role (ROLES) otherwise, where positions would mix roles."""
    if bool((batch.key_pos == batch.key_pos[0]).all()):
        return position_labels(batch), values.float()
    return list(ROLES), by_role(values, batch)
