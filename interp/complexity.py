"""Complexity of a trained model's weights, the paper's Fig. 5: small initialization gives
low-complexity, inferential solutions.

- `wq_condensation`: the input weight vectors of the first layer's query neurons (one per
  column of W_Q, d_model long) condense into a few directions: groups in which every pair
  has cosine > threshold (0.7 as in the paper), found by complete-linkage clustering.
- `embedding_structure`: the covariance of the key tokens' embeddings has a few large
  eigenvalues, and its top principal components order the keys (arithmetic progressions):
  `ordinal_r2` is the R^2 of a linear fit of the key's value from its top components.
- `spectra`: singular values of every weight matrix and its stable rank
  sum_i (sigma_i / sigma_max)^2 (low = a few dominant directions).
"""

from __future__ import annotations

from dataclasses import dataclass

import einops
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from interp.flow import check_index
from models.hooked import Model, check_model_fits_task, tl_params, weight_names
from models.task import AnchorTask

CONDENSATION_THRESHOLD = 0.7


@dataclass(frozen=True)
class Condensation:
    layer: int
    threshold: float
    cosine: Float[Tensor, "neuron neuron"]  # rows of W_Q^T: one input weight vector per query neuron
    group: Int[Tensor, " neuron"]  # group id, 0 = the largest group
    norms: Float[Tensor, " neuron"]

    @property
    def n_groups(self) -> int:
        return int(self.group.max()) + 1

    @property
    def group_sizes(self) -> list[int]:
        return torch.bincount(self.group).tolist()

    @property
    def order(self) -> Int[Tensor, " neuron"]:
        """Neurons sorted by group, largest group first: groups show as diagonal blocks."""
        return torch.argsort(self.group, stable=True)

    def to_dict(self) -> dict:
        sizes = self.group_sizes
        return {
            "layer": self.layer,
            "threshold": self.threshold,
            "n_neurons": len(self.group),
            "n_groups": self.n_groups,
            "largest_group_fraction": sizes[0] / len(self.group),
        }


def wq_condensation(model: Model, layer: int = 0, threshold: float = CONDENSATION_THRESHOLD) -> Condensation:
    """Cosine matrix of the query neurons of `layer` (all heads) and their condensation groups."""
    from sklearn.cluster import AgglomerativeClustering

    if not 0 < threshold < 1:
        raise ValueError(f"condensation threshold must be in (0, 1), got {threshold}")
    layer = check_index("layer", layer, model.cfg.n_layers)
    neurons = einops.rearrange(model.blocks[layer].attn.W_Q.detach(), "h d e -> (h e) d")  # [neuron, d_model]
    unit = F.normalize(neurons, dim=-1)
    cosine = unit @ unit.T
    # Complete linkage at distance 1 - threshold: within a group EVERY pair has cosine > threshold.
    clustering = AgglomerativeClustering(n_clusters=None, metric="cosine", linkage="complete", distance_threshold=1 - threshold)
    raw = torch.from_numpy(clustering.fit_predict(neurons.double().numpy())).long()
    by_size = torch.argsort(torch.bincount(raw), descending=True, stable=True)
    group = torch.argsort(by_size)[raw]  # relabel: 0 = largest
    return Condensation(layer, threshold, cosine, group, neurons.norm(dim=-1))


@dataclass(frozen=True)
class EmbeddingStructure:
    keys: Int[Tensor, " key"]
    eigenvalues: Float[Tensor, " component"]  # covariance of key embeddings, descending
    coords: Float[Tensor, "key component"]  # keys on the top principal components
    ordinal_r2: float  # R^2 of key value ~ top components (1 = the components order the keys)

    @property
    def explained(self) -> Float[Tensor, " component"]:
        return self.eigenvalues / self.eigenvalues.sum()

    def to_dict(self) -> dict:
        return {
            "top_eigenvalue_fraction": self.explained[:5].tolist(),
            "ordinal_r2": self.ordinal_r2,
        }


def embedding_structure(model: Model, task: AnchorTask = AnchorTask(), n_components: int = 3) -> EmbeddingStructure:
    """Covariance eigenvalues and PCA of the key tokens' embeddings."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LinearRegression

    check_model_fits_task(model, task)
    keys = torch.arange(task.key_min, task.key_max + 1)
    embeddings = model.embed.W_E.detach()[keys].double()  # [key, d_model]
    centered = embeddings - embeddings.mean(dim=0)
    eigenvalues = torch.linalg.eigvalsh(centered.T @ centered / (len(keys) - 1)).flip(0).clamp_min(0)
    n_components = min(n_components, *embeddings.shape)
    coords = PCA(n_components=n_components).fit_transform(embeddings.numpy())
    r2 = LinearRegression().fit(coords, keys.numpy()).score(coords, keys.numpy())
    return EmbeddingStructure(keys, eigenvalues.float(), torch.from_numpy(coords).float(), float(r2))


def _as_matrix(name: str, weight: Tensor) -> Float[Tensor, "d_in d_out"]:
    """Per-head weights as one matrix acting on (or producing) the residual stream."""
    if weight.ndim == 2:
        return weight
    if name.endswith("W_O"):
        return einops.rearrange(weight, "h e d -> (h e) d")
    return einops.rearrange(weight, "h d e -> d (h e)")


@dataclass(frozen=True)
class Spectra:
    singular_values: dict[str, Float[Tensor, " rank"]]  # descending, per weight matrix

    @property
    def stable_rank(self) -> dict[str, float]:
        """sum_i (sigma_i / sigma_max)^2 for every matrix."""
        return {name: (s / s[0]).square().sum().item() if s[0] > 0 else 0.0 for name, s in self.singular_values.items()}

    @property
    def mean_stable_rank(self) -> float:
        """The stable rank averaged over the weight matrices: one number for how simple they are."""
        ranks = self.stable_rank
        return sum(ranks.values()) / len(ranks)

    def to_dict(self) -> dict:
        return {"stable_rank": self.stable_rank}


def spectra(model: Model) -> Spectra:
    """Singular values of every weight matrix (embeddings, W_Q/K/V/O, MLP, unembedding)."""
    params = tl_params(model)
    return Spectra({name: torch.linalg.svdvals(_as_matrix(name, params[name].detach())) for name in weight_names(model)})


@dataclass(frozen=True)
class Complexity:
    condensation: Condensation
    embedding: EmbeddingStructure
    spectra: Spectra

    def to_dict(self) -> dict:
        return {"wq_condensation": self.condensation.to_dict(), "embedding": self.embedding.to_dict(), **self.spectra.to_dict()}


def weight_complexity(model: Model, task: AnchorTask = AnchorTask(), threshold: float = CONDENSATION_THRESHOLD) -> Complexity:
    """All three measures (first-layer W_Q condensation at `threshold`)."""
    return Complexity(wq_condensation(model, 0, threshold), embedding_structure(model, task), spectra(model))
