"""Distributed alignment search (DAS, Geiger et al. 2023): does a low-dimensional subspace at
one site carry the composition's intermediate y1 = g(x; a1) as a variable?

The composition test (probes/composition.py) swaps a WHOLE activation between two prompts;
it shows where information sits. DAS asks for less and claims more: it learns an orthogonal
basis of k directions at one site (a TransformerLens hook at the position of one role) such
that swapping only the coordinates along those k directions from a source prompt into a base
prompt makes the model answer as a causal model of the task says it should.

Causal models (VARIABLES), each with one intermediate variable interchanged:

    y1    composition: y1 = x + shift(a1), answer = y1 + shift(a2). Interchanging y1 from the
          source A into the base B gives x_A + shift(a1_A) + shift(a2_B): the composition
          test's "compositional" outcome.
    pair  lookup: offset = label(a1, a2), answer = x + offset. Interchanging the offset gives
          x_B + label(a1_A, a2_A): the composition test's "pair_only" outcome.

Base and source are the composition test's prompt pairs (composition_pairs): same key
position and noise, different key, a1 AND a2, the trap pair (3,4) and the held-out pair (4,3)
left out of both prompts and of the recombined pair (a1_A, a2_B), and the composition test's
six outcomes distinct. So a site holding one token's identity, or the source's whole answer,
cannot pass for y1: only one that carries the combination x + shift(a1) can.

The intervention, with B = the k x d_model basis (orthonormal rows; the first k rows of a
learned rotation), at one position of the site's hook:

    h_base' = h_base + (h_source - h_base) B^T B

Training: cross-entropy of the patched last-position logits against the causal model's
answer, on pairs whose keys and anchor pairs are not held out; the model's weights are frozen,
only the basis learns (torch's orthogonal parametrization keeps it orthonormal). Reported:
interchange-intervention accuracy (IIA), the fraction of HELD-OUT pairs (both keys held out,
and the base's, the source's or the recombined anchor pair held out) whose patched argmax is the causal
model's answer. Only pairs the model answers correctly (base and source) count.

On TransformerLens 4 the same fit is `transformer_lens.tools.analysis.fit_das`; this is a
small implementation for the HookedTransformer of TransformerLens 3.9 that the project runs
(checked against the library's on the same data in tests/test_das.py when TransformerLens 4
is installed in a separate environment).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import plotly.graph_objects as go
import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from torch.nn.utils import parametrizations
from tqdm.auto import tqdm
from transformer_lens.utilities import get_act_name

from models.hooked import Model, check_model_fits_task, final_residual, is_hooked_transformer
from models.task import AnchorBatch, AnchorTask
from models.train import uses_fused_forward
from probes.composition import OUTCOMES, composition_pairs, composition_rows, outcome_answers
from probes.figures import heatmaps
from probes.patching import PromptPairs
from probes.sites import Site, cache_of, last_logits_with, readout

# causal variable -> the composition-test outcome whose answer interchanging it predicts
VARIABLES: dict[str, str] = {"y1": "compositional", "pair": "pair_only"}
DAS_ROLES = ("key", "anchor1", "anchor2", "last")  # one position each (noise has several)
DIMS = (1, 2, 4, 8, 16)
STREAM_KINDS = ("resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post")
HELD_OUT_KEY_MODULUS = 4  # keys x with x % 4 == 0 are held out of training (20 of the paper's 80)


@dataclass(frozen=True)
class DasSite:
    """A hook (a d_model-wide stream point) at the position of one role of each prompt."""

    site: Site  # kind and layer; its position comes from the role
    role: str

    def __post_init__(self):
        if self.role not in DAS_ROLES:
            raise ValueError(f"unknown role {self.role!r}; DAS sites take one of {', '.join(DAS_ROLES)}")
        if self.site.kind not in STREAM_KINDS or self.site.pos is not None:
            raise ValueError(f"a DAS site needs a d_model-wide stream point ({', '.join(STREAM_KINDS)}) without a position "
                             f"(the role gives it), got {self.site}")

    @property
    def label(self) -> str:
        return f"{self.site.label} @ {self.role}"

    @classmethod
    def parse(cls, text: str) -> "DasSite":
        """'KIND:LAYER@ROLE', e.g. 'attn_out:0@anchor2'."""
        site, sep, role = text.partition("@")
        if not sep:
            raise ValueError(f"cannot read DAS site {text!r}: expected KIND:LAYER@ROLE, e.g. attn_out:0@anchor2")
        return cls(Site.parse(site), role.strip())


def role_positions(batch: AnchorBatch, role: str) -> Int[Tensor, " batch"]:
    """The position that plays `role` in each prompt."""
    offsets = {"key": 0, "anchor1": 1, "anchor2": 2}
    if role == "last":
        return torch.full_like(batch.key_pos, batch.tokens.shape[1] - 1)
    return batch.key_pos + offsets[role]


def das_sites(model: Model, roles: Sequence[str] = DAS_ROLES) -> list[DasSite]:
    """Every stream point of the composition test (composition_rows) at every role."""
    return [DasSite(row, role) for row in composition_rows(model) for role in roles]


# ---- data ----------------------------------------------------------------------------------------
def held_out_pairs(task: AnchorTask) -> list[tuple[int, int]]:
    """Anchor pairs kept out of training: every fourth pair the composition test uses."""
    usable = [p for p in task.train_pairs if p not in (task.trap_pair, task.held_out_pair)]
    return usable[1::4]


@dataclass(frozen=True)
class DasData:
    """Base/source pairs (clean = source A, corrupted = base B, as in the composition test) split
    into training and held-out ones, with every causal variable's expected answer."""

    train: PromptPairs
    test: PromptPairs
    train_answer: dict[str, Int[Tensor, " pair"]]
    test_answer: dict[str, Int[Tensor, " pair"]]
    held_out_pairs: list[tuple[int, int]]
    n_wrong: int  # drawn pairs left out: the model answers the base or the source wrongly


def das_data(model: Model, task: AnchorTask, n_train: int = 1024, n_test: int = 256, seed: int = 0) -> DasData:
    """Training pairs: neither key held out (HELD_OUT_KEY_MODULUS) and no prompt's pair, nor the
    recombined one, held out (held_out_pairs). Held-out pairs: both keys held out and at least
    one of those three anchor pairs held out. Only pairs the model answers correctly, both prompts."""
    held = held_out_pairs(task)
    pool = composition_pairs(task, max(8 * (n_train + n_test), 64 * n_test), seed)  # ~3% of draws are held-out pairs
    a, b = pool.clean, pool.corrupted
    right = (last_logits_with(model, a.tokens, []).argmax(-1) == a.label) & (last_logits_with(model, b.tokens, []).argmax(-1) == b.label)

    def is_held(x: Tensor) -> Tensor:
        return x % HELD_OUT_KEY_MODULUS == 0

    def pair_held(a1: Tensor, a2: Tensor) -> Tensor:
        return torch.stack([(a1 == p) & (a2 == q) for p, q in held]).any(0)

    pairs_seen = ~pair_held(a.anchor1, a.anchor2) & ~pair_held(b.anchor1, b.anchor2) & ~pair_held(a.anchor1, b.anchor2)
    train = (~is_held(a.key) & ~is_held(b.key) & pairs_seen & right).nonzero().flatten()[:n_train]
    test = (is_held(a.key) & is_held(b.key) & ~pairs_seen & right).nonzero().flatten()[:n_test]
    if len(train) < min(n_train, 64) or len(test) < min(n_test, 32):
        raise ValueError(
            f"DAS needs pairs the model answers correctly: only {len(train)} training and {len(test)} held-out pairs "
            f"(of {n_train} and {n_test} wanted; the model answers {int(right.sum())} of {len(pool)} drawn pairs right)"
        )
    return DasData(pool.subset(train), pool.subset(test), _answers(task, pool.subset(train)), _answers(task, pool.subset(test)),
                   held, int((~right).sum()))


def _answers(task: AnchorTask, pairs: PromptPairs) -> dict[str, Tensor]:
    a, b = pairs.clean, pairs.corrupted
    predicted = outcome_answers(task, a.key, a.anchor1, a.anchor2, b.key, b.anchor1, b.anchor2)  # [outcome, pair]
    return {name: predicted[OUTCOMES.index(outcome)] for name, outcome in VARIABLES.items()}


# ---- the intervention ----------------------------------------------------------------------------
class Subspace(nn.Module):
    """k orthonormal directions in d dimensions (the first k columns of a learned rotation),
    initialised from `seed` exactly as TransformerLens 4's LearnedSubspace is."""

    def __init__(self, d: int, k: int, seed: int = 0):
        super().__init__()
        if not 1 <= k <= d:
            raise ValueError(f"DAS dimensions must be 1..{d} (the site's width), got {k}")
        with torch.random.fork_rng(devices=[]):  # seeds the CPU generator without touching the caller's stream
            torch.default_generator.manual_seed(seed)
            self.proj = parametrizations.orthogonal(nn.Linear(k, d, bias=False))

    @property
    def basis(self) -> Float[Tensor, "d k"]:
        return self.proj.weight


def interchange(base: Float[Tensor, "batch d"], source: Float[Tensor, "batch d"], basis: Float[Tensor, "d k"]) -> Float[Tensor, "batch d"]:
    """The base with its coordinates along the basis replaced by the source's."""
    return base + (source - base) @ basis @ basis.T


def interchange_logits(
    model: Model,
    where: DasSite,
    positions: Int[Tensor, " batch"],
    base: dict[str, Float[Tensor, "batch pos d_model"]],
    source: Float[Tensor, "batch d"],
    basis: Float[Tensor, "d k"],
) -> Float[Tensor, "batch d_vocab"]:
    """Last-position logits of the base runs with `where` at `positions` interchanged along
    `basis` with `source`. `base` holds the base runs' activations at the site's layer
    (base_activations). Differentiable in `basis`."""
    rows = torch.arange(len(positions))
    layer, kind = where.site.layer, where.site.kind
    # The short forward below calls a HookedTransformer's blocks directly (its configs that
    # models.train's fused forward covers); any other model, a TransformerLens 4 bridge
    # included, runs the hooked forward from the site's layer.
    if not (is_hooked_transformer(model) and uses_fused_forward(model.cfg)):

        def hook(activation: Tensor, hook) -> Tensor:
            patched = activation.clone()
            patched[rows, positions] = interchange(activation[rows, positions], source, basis)
            return patched

        resid = final_residual(model, base[get_act_name("resid_pre", layer)], fwd_hooks=[(where.site.hook_name, hook)], start_at_layer=layer)
        return readout(model, resid[:, -1:])[:, 0]

    def at(name: str) -> Float[Tensor, "batch d_model"]:
        return base[get_act_name(name, layer)][rows, positions]

    if kind == "resid_pre":  # the other positions' attention reads it: the whole layer again
        resid = base[where.site.hook_name].clone()  # [batch, pos, d_model]
        resid[rows, positions] = interchange(at(kind), source, basis)
        return _last_logits_from(model, resid, layer)
    # Past the attention only the patched position changes in this layer: its MLP alone is
    # recomputed, the rest of the layer is the base run's.
    block = model.blocks[layer]
    if kind in ("attn_out", "resid_mid"):
        mid = at("resid_mid") + interchange(at("attn_out"), source, basis) - at("attn_out") if kind == "attn_out" else interchange(at(kind), source, basis)
        post = mid + block.mlp(block.ln2(mid[:, None]))[:, 0]  # [batch, d_model]
    elif kind == "mlp_out":
        post = at("resid_mid") + interchange(at(kind), source, basis)
    else:
        post = interchange(at(kind), source, basis)
    resid = base[get_act_name("resid_post", layer)].clone()  # [batch, pos, d_model]
    resid[rows, positions] = post
    return _last_logits_from(model, resid, layer + 1)


def _last_logits_from(model: Model, resid: Float[Tensor, "batch pos d_model"], first_layer: int) -> Float[Tensor, "batch d_vocab"]:
    """The blocks of a standard pre-LN HookedTransformer (the configs models.train's fused
    forward covers) from `first_layer` on, the final layer's MLP at the last position only
    (the one the task reads), and the logits there (tested equal to the hooked forward)."""
    n_layers = model.cfg.n_layers
    for layer in range(first_layer, n_layers):
        block = model.blocks[layer]
        normed = block.ln1(resid)  # [batch, pos, d_model]
        attn_out = block.attn(normed, normed, normed)  # [batch, pos, d_model]
        if layer == n_layers - 1:
            resid, attn_out = resid[:, -1:], attn_out[:, -1:]  # [batch, 1, d_model]
        resid = resid + attn_out
        resid = resid + block.mlp(block.ln2(resid))
    return readout(model, resid[:, -1:])[:, 0]


@dataclass
class _Prepared:
    """One split's cached inputs at one site."""

    positions: Int[Tensor, " pair"]
    base: dict[str, Float[Tensor, "pair pos d_model"]]  # the base runs' stream points at the site's layer
    source: Float[Tensor, "pair d"]

    def batch(self, index: Tensor) -> tuple[Tensor, dict[str, Tensor], Tensor]:
        return self.positions[index], {name: act[index] for name, act in self.base.items()}, self.source[index]


SplitRuns = tuple[PromptPairs, dict[str, Tensor], dict[str, Tensor]]  # pairs, source and base activations by hook


def split_runs(model: Model, pairs: PromptPairs) -> SplitRuns:
    """The runs every site of one split reads: sources and bases at every stream point of
    every layer."""
    names = {get_act_name(kind, layer) for kind in STREAM_KINDS for layer in range(model.cfg.n_layers)}
    return pairs, cache_of(model, pairs.clean.tokens, names), cache_of(model, pairs.corrupted.tokens, names)


def _prepare(runs: SplitRuns, where: DasSite) -> _Prepared:
    """One split's inputs at `where`."""
    pairs, source_cache, base_cache = runs
    positions = role_positions(pairs.corrupted, where.role)  # aligned pairs: the same position in the source
    rows = torch.arange(len(positions))
    base = {get_act_name(kind, where.site.layer): base_cache[get_act_name(kind, where.site.layer)] for kind in STREAM_KINDS}
    return _Prepared(positions, base, source_cache[where.site.hook_name][rows, positions])


def fit_basis(
    run: Callable[[Tensor, Tensor], Tensor],
    answer: Int[Tensor, " pair"],
    d: int,
    k: int,
    epochs: int = 12,
    batch_size: int = 128,
    lr: float = 0.02,
    seed: int = 0,
) -> Float[Tensor, "d k"]:
    """DAS's optimisation: k orthonormal directions (Subspace) trained with Adam so that
    `run(basis, pair_index)`, the logits of those pairs with the interchange along `basis`,
    answers `answer` (cross-entropy). Batches in the order TransformerLens 4's fit_das draws
    them (a NumPy permutation per epoch), so the two give the same basis from the same seed."""
    subspace = Subspace(d, k, seed)
    optimizer = torch.optim.Adam(subspace.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = torch.as_tensor(rng.permutation(len(answer)))
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            loss = nn.functional.cross_entropy(run(subspace.basis, batch), answer[batch])
            if not loss.requires_grad:
                return subspace.basis.detach().clone()  # the interchange cannot reach the answer
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return subspace.basis.detach().clone()


def fit_subspace(
    model: Model,
    where: DasSite,
    train: _Prepared,
    answer: Int[Tensor, " pair"],
    k: int,
    epochs: int = 12,
    batch_size: int = 128,
    lr: float = 0.02,
    seed: int = 0,
) -> Float[Tensor, "d k"]:
    """Learn k orthonormal directions at `where` whose interchange makes each base answer
    `answer`, with the model's weights frozen (fit_basis)."""

    def run(basis: Tensor, batch: Tensor) -> Tensor:
        positions, base, source = train.batch(batch)
        return interchange_logits(model, where, positions, base, source, basis)

    frozen = [p for p in model.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)  # only the basis learns: no gradients for the model's weights
    try:
        return fit_basis(run, answer, train.source.shape[-1], k, epochs, batch_size, lr, seed)
    finally:
        for p in frozen:
            p.requires_grad_(True)


@torch.inference_mode()
def iia(model: Model, where: DasSite, data: _Prepared, answer: Int[Tensor, " pair"], basis: Float[Tensor, "d k"]) -> float:
    """Interchange-intervention accuracy: the fraction of pairs answering `answer` once patched."""
    logits = interchange_logits(model, where, data.positions, data.base, data.source, basis)
    return (logits.argmax(-1) == answer).float().mean().item()


# ---- the search --------------------------------------------------------------------------------
@dataclass
class DasResult:
    """IIA of every causal variable at every site and subspace size (module docstring)."""

    sites: list[DasSite]
    dims: tuple[int, ...]
    variables: tuple[str, ...]
    iia: Float[Tensor, "variable site dim"]  # on held-out keys and pairs
    train_iia: Float[Tensor, "variable site dim"]
    n_train: int
    n_test: int
    held_out_pairs: list[tuple[int, int]]
    seconds: float
    bases: dict[tuple[str, str, int], Tensor] = field(default_factory=dict, repr=False)  # (variable, site label, k) -> [k, d]

    def best(self, variable: str = "y1") -> tuple[DasSite, int, float]:
        """The site and dimension count with the highest held-out IIA (ties: fewer dimensions)."""
        values = self.iia[self.variables.index(variable)]  # [site, dim]
        top = values.max()
        site, dim = next((s, d) for d in range(len(self.dims)) for s in range(len(self.sites)) if values[s, d] >= top - 1e-9)
        return self.sites[site], self.dims[dim], values[site, dim].item()

    def at(self, variable: str, where: DasSite, k: int) -> float:
        return self.iia[self.variables.index(variable), self.sites.index(where), self.dims.index(k)].item()

    def to_dict(self) -> dict:
        """The summary as JSON-ready values: best y1 site, its dims and IIA, and the lookup
        variable for contrast (its best site, and its IIA at y1's best site)."""
        out = {}
        if "y1" in self.variables:
            site, k, value = self.best("y1")
            out = {"site": site.label, "dims": k, "iia": round(value, 4), "train_iia": round(self.train_at("y1", site, k), 4)}
            if "pair" in self.variables:
                out["lookup_iia_at_site"] = round(self.at("pair", site, k), 4)
        if "pair" in self.variables:
            site, k, value = self.best("pair")
            out |= {"lookup_site": site.label, "lookup_dims": k, "lookup_iia": round(value, 4)}
        return out | {"pairs_train": self.n_train, "pairs_held_out": self.n_test, "sites_searched": len(self.sites),
                      "dims_searched": list(self.dims), "seconds": round(self.seconds, 1)}

    def train_at(self, variable: str, where: DasSite, k: int) -> float:
        return self.train_iia[self.variables.index(variable), self.sites.index(where), self.dims.index(k)].item()

    def summary(self) -> str:
        parts = []
        for variable in self.variables:
            site, k, value = self.best(variable)
            parts.append(f"{variable}: best {site.label}, {k} dims, IIA {value:.2f} (train {self.train_at(variable, site, k):.2f})")
        return (f"DAS: {self.n_train} training and {self.n_test} held-out base/source pairs, {len(self.sites)} sites x "
                f"dims {list(self.dims)}; " + "; ".join(parts))

    def figure(self) -> go.Figure:
        """Per variable: held-out IIA at each stream point (row) x role (column), the best
        over subspace sizes; hover for every size."""
        rows = list(dict.fromkeys(s.site.label for s in self.sites))
        roles = list(dict.fromkeys(s.role for s in self.sites))
        panels, hovers = [], []
        for v, variable in enumerate(self.variables):
            grid = torch.full((len(rows), len(roles)), float("nan"))
            hover = [[""] * len(roles) for _ in rows]
            for s, where in enumerate(self.sites):
                r, c = rows.index(where.site.label), roles.index(where.role)
                grid[r, c] = self.iia[v, s].max()
                hover[r][c] = ", ".join(f"k={k}: {self.iia[v, s, i]:.2f}" for i, k in enumerate(self.dims))
            panels.append((f"{variable} ({VARIABLES[variable]})", grid))
            hovers.append(hover)
        return heatmaps(panels, rows, roles,
                        f"DAS: held-out interchange-intervention accuracy<br><sub>best over k in {list(self.dims)} "
                        f"dimensions; {self.n_test} held-out pairs; hover for each k</sub>",
                        zmin=0, zmax=1, colorscale="Viridis", hover=hovers)


def das(
    model: Model,
    task: AnchorTask = AnchorTask(),
    sites: Sequence[DasSite | str] | None = None,
    dims: Sequence[int] = DIMS,
    variables: Sequence[str] = tuple(VARIABLES),
    n_train: int = 1024,
    n_test: int = 256,
    epochs: int = 12,
    batch_size: int = 128,
    lr: float = 0.02,
    seed: int = 0,
    progress: bool = True,
) -> DasResult:
    """Distributed alignment search at every site (default: every stream point x role, das_sites)
    for every k in `dims` and every causal variable (VARIABLES); see the module docstring."""
    check_model_fits_task(model, task)
    unknown = [v for v in variables if v not in VARIABLES]
    if unknown:
        raise ValueError(f"unknown causal variable(s) {unknown}; known: {', '.join(VARIABLES)}")
    sites = das_sites(model) if sites is None else [s if isinstance(s, DasSite) else DasSite.parse(s) for s in sites]
    for where in sites:
        where.site.check(model)
    start = time.perf_counter()
    data = das_data(model, task, n_train, n_test, seed)
    runs = split_runs(model, data.train), split_runs(model, data.test)
    held_iia = torch.zeros(len(variables), len(sites), len(dims))
    train_iia = torch.zeros_like(held_iia)
    bases = {}
    cells = [(v, s, d) for s in range(len(sites)) for v in range(len(variables)) for d in range(len(dims))]
    for v, s, d in tqdm(cells, desc="DAS", disable=not progress, leave=False):
        where, variable, k = sites[s], variables[v], dims[d]
        train, test = _prepare(runs[0], where), _prepare(runs[1], where)
        basis = fit_subspace(model, where, train, data.train_answer[variable], k, epochs, batch_size, lr, seed)
        held_iia[v, s, d] = iia(model, where, test, data.test_answer[variable], basis)
        train_iia[v, s, d] = iia(model, where, train, data.train_answer[variable], basis)
        bases[(variable, where.label, k)] = basis
    return DasResult(sites, tuple(dims), tuple(variables), held_iia, train_iia, len(data.train), len(data.test),
                     data.held_out_pairs, time.perf_counter() - start, bases)
