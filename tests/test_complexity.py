"""Complexity measures on weights built to have a known structure."""

import pytest
import torch

from interp.complexity import embedding_structure, spectra, weight_complexity, wq_condensation
from models import hooked
from models.task import AnchorTask

TASK = AnchorTask()


@pytest.fixture
def model():
    return hooked.build(0.5, n_layers=2, seed=0, d_model=64, d_head=16, n_heads=2, d_mlp=128)


def test_condensed_query_neurons_form_their_groups(model):
    gen = torch.Generator().manual_seed(0)
    directions = torch.randn(3, 64, generator=gen)
    which = torch.tensor([0] * 16 + [1] * 10 + [2] * 6)  # 32 neurons in 3 directions
    neurons = directions[which] * torch.rand(32, 1, generator=gen).add(0.5) + 0.05 * torch.randn(32, 64, generator=gen)
    with torch.no_grad():
        model.blocks[0].attn.W_Q.copy_(neurons.reshape(2, 16, 64).transpose(1, 2))  # [head, d_model, d_head]
    cond = wq_condensation(model)
    assert cond.group_sizes == [16, 10, 6]
    assert cond.to_dict()["largest_group_fraction"] == pytest.approx(0.5)
    grouped = cond.group[cond.order]
    assert (grouped[1:] >= grouped[:-1]).all()


def test_random_query_neurons_do_not_condense(model):
    cond = wq_condensation(model, layer=1, threshold=0.7)
    assert cond.n_groups == 32 and cond.cosine.shape == (32, 32)


def test_bad_layer_or_threshold_is_refused(model):
    with pytest.raises(ValueError, match="layer 2 does not exist: the model has 2 layers"):
        wq_condensation(model, layer=2)
    with pytest.raises(ValueError, match="threshold must be in"):
        wq_condensation(model, threshold=1.0)


def test_ordinal_key_embeddings_are_found(model):
    keys = torch.arange(TASK.key_min, TASK.key_max + 1, dtype=torch.float)
    direction = torch.nn.functional.normalize(torch.randn(64, generator=torch.Generator().manual_seed(1)), dim=0)
    with torch.no_grad():
        model.embed.W_E[TASK.key_min : TASK.key_max + 1] = keys[:, None] * direction + 0.01 * torch.randn(80, 64)
    emb = embedding_structure(model, TASK)
    assert emb.ordinal_r2 > 0.99
    assert emb.explained[0] > 0.95
    assert emb.coords.shape == (80, 3)
    assert embedding_structure(hooked.build(0.5, d_model=64, d_head=16, n_heads=2, d_mlp=128, seed=3), TASK).ordinal_r2 < 0.3


def test_stable_rank_of_known_matrices(model):
    with torch.no_grad():
        model.blocks[0].mlp.W_in.copy_(torch.outer(torch.arange(64.0), torch.ones(128)))  # rank 1
        model.blocks[1].mlp.W_in.zero_()
        model.blocks[1].mlp.W_in[:, :64] = torch.eye(64)  # 64 equal singular values
    spec = spectra(model)
    assert set(spec.singular_values) == set(hooked.weight_names(model))
    assert spec.stable_rank["blocks.0.mlp.W_in"] == pytest.approx(1.0, rel=1e-4)
    assert spec.stable_rank["blocks.1.mlp.W_in"] == pytest.approx(64.0, rel=1e-4)
    assert spec.singular_values["blocks.0.attn.W_Q"].shape == (32,)  # [d_model, heads x d_head]
    assert spec.singular_values["blocks.0.attn.W_O"].shape == (32,)
    s = spec.singular_values["embed.W_E"]
    assert (s[:-1] >= s[1:]).all()


def test_weight_complexity_summary(model):
    summary = weight_complexity(model, TASK).to_dict()
    assert set(summary) == {"wq_condensation", "embedding", "stable_rank"}
    assert summary["wq_condensation"]["n_neurons"] == 32


def test_every_spectrum_line_and_key_colour_is_told_apart():
    from interp import figures

    deep = hooked.build(0.5, n_layers=4, d_model=16, d_head=8, d_mlp=32)  # 2 + 4 x 6 + 1 = 27 matrices: more than 24 colours
    measured = weight_complexity(deep, AnchorTask())
    fig = figures.spectra_figure(measured.spectra)
    styles = {(trace.line.color, trace.line.dash) for trace in fig.data}
    assert len(fig.data) == 27 and len(styles) == 27
    embedding = figures.embedding_figure(measured.embedding)
    scatter = embedding.data[1].marker
    assert scatter.showscale and scatter.colorbar.title.text == "key"
