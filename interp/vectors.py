"""Vectors of anchor prompts, the paper's Fig. 4: how a model represents (key, pair) combinations.

    vecs = anchor_vectors(model)               # last position after every layer, all (key, pair)
    vecs.scores()                              # per hook: parallel score, (4,3) alignment, collapse
    vecs.pca("blocks.0.hook_resid_post")       # coordinates + explained variance (scikit-learn)

The prompts (`anchor_grid`) are every key x every anchor pair at one key position, all
sharing the same noise tokens, so two vectors differ by key and pair only. What the paper
reads from them, and the numbers here that measure it:

- inferential model: after the last layer, combinations with the same target are nearly
  parallel -> `parallel_score`: mean cosine of pairs of vectors with equal trained labels
  minus mean cosine of pairs with different labels (trained pairs only);
- the held-out pair (4,3) joins the combinations whose label is its inferential answer
  x-10, or its symmetric answer x-6 -> `held_out_alignment`;
- symmetric model: the mirrored pairs (3,4) and (4,3) collapse together (already after the
  first layer, before the key arrives) -> `mirror_collapse`: cosine of (3,4) and (4,3)
  vectors of the same key, against other pairs of the same key;
- the value vector at the first anchor groups by the first step g(x; a1) -> `group_score`
  with `first_step` groups, at `hooks=["blocks.1.attn.hook_v"], position="anchor1"`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from models.hooked import Model, check_model_fits_task
from models.task import ROLES, AnchorBatch, AnchorTask, role_membership

POSITIONS = tuple(role for role in ROLES if role != "noise")  # the roles held by one position each
DEFAULT_KEY_POS = 2
_CHUNK = 4096  # prompts per forward pass


def anchor_grid(
    task: AnchorTask = AnchorTask(),
    key_pos: int = DEFAULT_KEY_POS,
    pairs: Sequence[tuple[int, int]] | None = None,
    keys: Sequence[int] | None = None,
    seed: int = 0,
) -> AnchorBatch:
    """Every key (default all of key_min..key_max) with every pair (default all 16) at
    `key_pos`, in (pair, key) order; the other positions hold one shared noise draw."""
    if not 0 <= key_pos < task.n_key_positions:
        raise ValueError(f"key position {key_pos} does not exist: keys sit at 0..{task.n_key_positions - 1}")
    pairs = task.pairs if pairs is None else list(pairs)
    keys = list(range(task.key_min, task.key_max + 1)) if keys is None else list(keys)
    if not pairs or not keys:
        raise ValueError("anchor_grid needs at least one pair and one key")
    combos = torch.tensor([(a1, a2, x) for a1, a2 in pairs for x in keys], dtype=torch.long)  # [n, 3]
    noise = torch.randint(task.key_min, task.key_max + 1, (task.seq_len,), generator=torch.Generator().manual_seed(seed))
    tokens = noise.repeat(len(combos), 1)  # [n, pos]
    tokens[:, key_pos], tokens[:, key_pos + 1], tokens[:, key_pos + 2] = combos[:, 2], combos[:, 0], combos[:, 1]
    return task.prompts(tokens)  # validates keys and pairs


def check_hooks(model: Model, hooks: Sequence[str]) -> list[str]:
    """Refuse hook names the model does not have, listing the valid ones."""
    unknown = [h for h in hooks if h not in model.hook_dict]
    if unknown:
        raise ValueError(f"unknown hook name(s) {unknown}; valid hooks: {', '.join(model.hook_dict)}")
    no_position = [h for h in hooks if h.endswith(("hook_pattern", "hook_attn_scores"))]
    if no_position:
        raise ValueError(f"hook(s) {no_position} hold attention patterns, not per-position vectors (use trace_flow)")
    return list(hooks)


def _position_index(position: str | int, prompts: AnchorBatch) -> Int[Tensor, " batch"]:
    seq_len = prompts.tokens.shape[1]
    if isinstance(position, int) and not isinstance(position, bool):
        if not -seq_len <= position < seq_len:
            raise ValueError(f"position {position} does not exist: prompts have {seq_len} positions")
        return torch.full((len(prompts),), position % seq_len)
    if position in POSITIONS:
        return role_membership(prompts.key_pos, seq_len)[:, :, ROLES.index(position)].argmax(dim=-1)
    raise ValueError(f"position must be an int or one of {POSITIONS}, got {position!r}")


@torch.inference_mode()
def anchor_vectors(
    model: Model,
    task: AnchorTask = AnchorTask(),
    hooks: Sequence[str] | None = None,
    position: str | int = "last",
    prompts: AnchorBatch | None = None,
) -> AnchorVectors:
    """The activation at `position` of every hook (default: the residual stream after each
    layer, `blocks.{l}.hook_resid_post`) for every prompt (default: `anchor_grid(task)`).
    Activations with several heads are flattened (head, d_head) -> one vector."""
    check_model_fits_task(model, task)
    hooks = check_hooks(model, hooks or [f"blocks.{layer}.hook_resid_post" for layer in range(model.cfg.n_layers)])
    prompts = anchor_grid(task) if prompts is None else prompts
    where = _position_index(position, prompts)  # [batch]
    per_chunk = []
    for tokens, at in zip(prompts.tokens.split(_CHUNK), where.split(_CHUNK)):
        _, cache = model.run_with_cache(tokens, names_filter=list(hooks))
        rows = torch.arange(len(tokens))
        per_chunk.append(torch.stack([einops.rearrange(cache[h][rows, at], "b ... -> b (...)") for h in hooks]))
    return AnchorVectors(tuple(hooks), position, torch.cat(per_chunk, dim=1), prompts, task)


@dataclass(frozen=True)
class AnchorVectors:
    hooks: tuple[str, ...]
    position: str | int
    vectors: Float[Tensor, "hook prompt d"]
    prompts: AnchorBatch
    task: AnchorTask
    _units: dict = field(default_factory=dict, repr=False, compare=False)  # (hook, center) -> unit vectors

    # ---- what each prompt is ---------------------------------------------------------------
    @property
    def labels(self) -> Int[Tensor, " prompt"]:
        """The trained answer (the trap pair's x-6 included; the composite for (4,3))."""
        return self.prompts.label

    @property
    def first_step(self) -> Int[Tensor, " prompt"]:
        """g(x; a1): the key after the first anchor's map."""
        return self.prompts.key + torch.tensor([self.task.shift(a) for a in self.prompts.anchor1.tolist()])

    def select(self, keep: Tensor) -> AnchorVectors:
        """The same vectors for the prompts in `keep` (a mask or an index) only."""
        return AnchorVectors(self.hooks, self.position, self.vectors[:, keep], self.prompts.subset(keep), self.task)

    def is_pair(self, pair: tuple[int, int]) -> Tensor:
        return (self.prompts.anchor1 == pair[0]) & (self.prompts.anchor2 == pair[1])

    def names(self) -> list[str]:
        return [f"x={x} ({a1},{a2})" for x, a1, a2 in zip(*(t.tolist() for t in (self.prompts.key, self.prompts.anchor1, self.prompts.anchor2)))]

    def order(self, groups: Int[Tensor, " prompt"] | None = None) -> Int[Tensor, " prompt"]:
        """The Fig. 4 order: by group (default: trained label), then pair, then key, so
        prompts with equal targets sit in consecutive blocks."""
        p = self.prompts
        groups = self.labels if groups is None else groups
        n = max(self.task.anchors) + 1
        rank = ((groups - groups.min()) * n + p.anchor1) * n + p.anchor2
        return torch.argsort(rank * (self.task.vocab_size + 1) + p.key, stable=True)

    # ---- vectors and their geometry ----------------------------------------------------------
    def at(self, hook: str | int) -> Float[Tensor, "prompt d"]:
        if isinstance(hook, int) and not isinstance(hook, bool):
            if not -len(self.hooks) <= hook < len(self.hooks):
                raise ValueError(f"hook index {hook} does not exist: {len(self.hooks)} hooks were collected")
            return self.vectors[hook]
        if hook not in self.hooks:
            raise ValueError(f"hook {hook!r} was not collected; collected: {list(self.hooks)}")
        return self.vectors[self.hooks.index(hook)]

    def units(self, hook: str | int, center: bool = True) -> Float[Tensor, "prompt d"]:
        """Unit vectors. `center` first removes the mean vector over the prompts (what they
        all share: position, noise), leaving what tells combinations apart; otherwise every
        cosine is close to 1."""
        key = (self.hooks.index(hook) if isinstance(hook, str) else hook % len(self.hooks), center)
        if key not in self._units:  # every score reads them
            vectors = self.at(hook)
            self._units[key] = F.normalize(vectors - vectors.mean(dim=0) if center else vectors, dim=-1)
        return self._units[key]

    def cosine(self, hook: str | int, rows: Tensor | None = None, cols: Tensor | None = None, center: bool = True) -> Float[Tensor, "row col"]:
        """Cosine similarity of the prompts in `rows` (index or mask; default all) with
        those in `cols` (default: the same as rows)."""
        unit = self.units(hook, center)
        a = unit if rows is None else unit[rows]
        b = a if cols is None else unit[cols]
        return a @ b.T

    def group_score(self, hook: str | int, groups: Int[Tensor, " prompt"], keep: Tensor | None = None) -> float:
        """Mean cosine between different prompts of the same group minus mean cosine between
        prompts of different groups (1 = groups are single directions, 0 = no grouping)."""
        unit = self.units(hook) if keep is None else self.units(hook)[keep]
        groups = groups if keep is None else groups[keep]
        onehot = F.one_hot(torch.unique(groups, return_inverse=True)[1]).float()  # [prompt, group]
        # Sums of cosines over pairs without the [prompt, prompt] matrix:
        # sum_{i,j in g} u_i.u_j = |sum_{i in g} u_i|^2.
        group_sums = onehot.T @ unit  # [group, d]
        sizes = onehot.sum(dim=0)
        self_pairs = unit.square().sum()
        same_sum, all_sum = group_sums.square().sum() - self_pairs, unit.sum(dim=0).square().sum()
        same_pairs, all_pairs = sizes.square().sum() - len(unit), len(unit) ** 2
        different_pairs = all_pairs - sizes.square().sum()
        if same_pairs == 0 or different_pairs == 0:
            raise ValueError("group_score needs two prompts of one group and two groups")
        different_sum = all_sum - group_sums.square().sum()
        return (same_sum / same_pairs - different_sum / different_pairs).item()

    def parallel_score(self, hook: str | int) -> float:
        """`group_score` by trained label, over the trained pairs."""
        return self.group_score(hook, self.labels, keep=~self.is_pair(self.task.held_out_pair))

    def held_out_alignment(self, hook: str | int) -> dict[str, float]:
        """Mean cosine of each (4,3) vector with the trained prompts whose label is its
        inferential answer (x-10), and with those whose label is its symmetric one (x-6)."""
        held = self.is_pair(self.task.held_out_pair)
        trained = ~held
        if not held.any():
            raise ValueError(f"no prompt with the held-out pair {self.task.held_out_pair} was collected")
        cos = self.cosine(hook, held, trained)  # [held, trained]
        answers = self.task.solution_targets(self.prompts)
        out = {}
        for kind in ("inferential", "symmetric"):
            match = answers[kind][held][:, None] == self.labels[trained][None, :]  # [held, trained]
            out[kind] = (cos[match].mean().item()) if match.any() else float("nan")
        return out

    def mirror_collapse(self, hook: str | int) -> dict[str, float]:
        """Cosine of the held-out pair's vector with the trap pair's (its mirror) at the same
        key, against its mean cosine with every other pair at the same key."""
        held, trap = self.is_pair(self.task.held_out_pair), self.is_pair(self.task.trap_pair)
        others = ~(held | trap)
        key = self.prompts.key
        mirror = self.cosine(hook, held, trap)[key[held][:, None] == key[trap][None, :]]
        other = self.cosine(hook, held, others)[key[held][:, None] == key[others][None, :]]
        if not len(mirror):
            raise ValueError("mirror_collapse needs the held-out and trap pairs at the same keys")
        return {"mirror": mirror.mean().item(), "other_pairs": other.mean().item()}

    def pca(self, hook: str | int, n_components: int = 2) -> tuple[Float[Tensor, "prompt component"], Float[Tensor, " component"]]:
        """Coordinates on the top principal components and their explained variance ratio."""
        from sklearn.decomposition import PCA

        pca = PCA(n_components=n_components)
        coords = pca.fit_transform(self.at(hook).double().numpy())
        return torch.from_numpy(coords).float(), torch.from_numpy(pca.explained_variance_ratio_).float()

    def tsne(self, hook: str | int, perplexity: float = 30.0, seed: int = 0) -> Float[Tensor, "prompt 2"]:
        from sklearn.manifold import TSNE
        from threadpoolctl import threadpool_limits

        # One OpenMP thread: on a busy machine its spinning threads make t-SNE 10-40x slower.
        with threadpool_limits(1):
            coords = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(self.at(hook).double().numpy())
        return torch.from_numpy(coords).float()

    def scores(self) -> dict[str, dict[str, float]]:
        """Every score for every hook, as JSON-able numbers (the (4,3) ones when the held-out
        and trap pairs were collected)."""
        with_pairs = self.is_pair(self.task.held_out_pair).any() and self.is_pair(self.task.trap_pair).any()
        out = {}
        for hook in self.hooks:
            out[hook] = {"parallel_score": self.parallel_score(hook), "first_step_score": self.group_score(hook, self.first_step)}
            if with_pairs:
                align, collapse = self.held_out_alignment(hook), self.mirror_collapse(hook)
                out[hook] |= {
                    "held_out_vs_inferential_targets": align["inferential"],
                    "held_out_vs_symmetric_targets": align["symmetric"],
                    "mirror_pair_cosine": collapse["mirror"],
                    "other_pairs_cosine": collapse["other_pairs"],
                }
        return out
