"""Anchor vectors: read from the right hook and position, and the scores measure what they say
on vectors built to have (or lack) the structure."""

import pytest
import torch

from interp.vectors import AnchorVectors, anchor_grid, anchor_vectors
from models import hooked
from models.task import AnchorTask

TASK = AnchorTask()


@pytest.fixture(scope="module")
def model():
    return hooked.build(0.5, n_layers=2, seed=0, d_model=32, d_head=16, n_heads=2, d_mlp=64)


def test_grid_is_every_key_and_pair_with_shared_noise():
    grid = anchor_grid(TASK, key_pos=3)
    assert len(grid) == 16 * 80
    assert (grid.key_pos == 3).all()
    assert set(zip(grid.anchor1.tolist(), grid.anchor2.tolist())) == set(TASK.pairs)
    noise = torch.tensor([0, 1, 2, 6, 7, 8])
    assert (grid.tokens[:, noise] == grid.tokens[0, noise]).all()
    with pytest.raises(ValueError, match="key position 7 does not exist"):
        anchor_grid(TASK, key_pos=7)


def test_vectors_are_the_cached_activations(model):
    grid = anchor_grid(TASK, keys=[30, 31], pairs=[(1, 2), (4, 3)])
    vecs = anchor_vectors(model, TASK, prompts=grid)
    assert vecs.hooks == ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post")
    _, cache = model.run_with_cache(grid.tokens)
    for i, hook in enumerate(vecs.hooks):
        torch.testing.assert_close(vecs.vectors[i], cache[hook][:, -1])
    at_anchor = anchor_vectors(model, TASK, hooks=["blocks.1.attn.hook_v"], position="anchor1", prompts=grid)
    assert at_anchor.vectors.shape == (1, 4, 2 * 16)  # heads flattened
    torch.testing.assert_close(at_anchor.vectors[0], cache["blocks.1.attn.hook_v"][:, 3].flatten(1))


def test_bad_hook_position_or_index_is_refused(model):
    with pytest.raises(ValueError, match=r"unknown hook name\(s\) \['blocks.2.hook_resid_post'\]; valid hooks: (.*, )?hook_embed,"):
        anchor_vectors(model, TASK, hooks=["blocks.2.hook_resid_post"])
    with pytest.raises(ValueError, match="attention patterns"):
        anchor_vectors(model, TASK, hooks=["blocks.0.attn.hook_pattern"])
    with pytest.raises(ValueError, match="position must be"):
        anchor_vectors(model, TASK, position="anchor3")
    with pytest.raises(ValueError, match="position 9 does not exist"):
        anchor_vectors(model, TASK, position=9)
    vecs = anchor_vectors(model, TASK, prompts=anchor_grid(TASK, keys=[30]))
    with pytest.raises(ValueError, match="was not collected"):
        vecs.at("blocks.0.hook_mlp_out")
    with pytest.raises(ValueError, match="hook index 2 does not exist"):
        vecs.at(2)


def made_vectors(direction_of, keys=range(30, 50)) -> AnchorVectors:
    """AnchorVectors whose vector for each prompt is direction_of(prompt fields)."""
    grid = anchor_grid(TASK, keys=list(keys))
    vectors = torch.stack([direction_of(*f) for f in zip(grid.key.tolist(), grid.anchor1.tolist(), grid.anchor2.tolist(), grid.label.tolist())])
    return AnchorVectors(("made",), "last", vectors[None], grid, TASK)


DIRECTIONS = torch.nn.functional.normalize(torch.randn(300, 256, generator=torch.Generator().manual_seed(0)), dim=-1)


def test_parallel_score_is_high_when_equal_targets_share_a_direction():
    by_label = made_vectors(lambda x, a1, a2, label: DIRECTIONS[label])
    assert by_label.parallel_score(0) > 0.95
    noise = torch.Generator().manual_seed(1)
    unrelated = made_vectors(lambda x, a1, a2, label: torch.randn(256, generator=noise))
    assert abs(unrelated.parallel_score(0)) < 0.05


def test_held_out_alignment_and_mirror_collapse_find_a_lookup():
    """A lookup: (4,3) is stored as (3,4), so its vector is that of label x-6."""
    lookup = made_vectors(lambda x, a1, a2, label: DIRECTIONS[x - 6] if (a1, a2) == (4, 3) else DIRECTIONS[label])
    align = lookup.held_out_alignment(0)
    assert align["symmetric"] > 0.95 and align["inferential"] < 0.2
    collapse = lookup.mirror_collapse(0)
    assert collapse["mirror"] > 0.95 and collapse["other_pairs"] < 0.2
    composer = made_vectors(lambda x, a1, a2, label: DIRECTIONS[label])  # (4,3) -> its composite x-10
    assert composer.held_out_alignment(0)["inferential"] > 0.95
    assert composer.mirror_collapse(0)["mirror"] < 0.2


def test_first_step_grouping():
    by_first_step = made_vectors(lambda x, a1, a2, label: DIRECTIONS[x + TASK.shift(a1)])
    assert by_first_step.group_score(0, by_first_step.first_step) > 0.95
    assert by_first_step.parallel_score(0) < 0.3


def test_order_puts_equal_targets_together():
    vecs = made_vectors(lambda x, a1, a2, label: DIRECTIONS[label], keys=range(30, 34))
    labels = vecs.labels[vecs.order()]
    assert (labels[1:] >= labels[:-1]).all()
    first_steps = vecs.first_step[vecs.order(vecs.first_step)]
    assert (first_steps[1:] >= first_steps[:-1]).all()


def test_pca_tsne_and_scores_shapes(model):
    vecs = anchor_vectors(model, TASK, prompts=anchor_grid(TASK, keys=range(30, 40)))
    coords, explained = vecs.pca(0, n_components=3)
    assert coords.shape == (160, 3) and explained.shape == (3,)
    assert (explained[:-1] >= explained[1:]).all() and explained.sum() <= 1 + 1e-6
    assert vecs.tsne(1, perplexity=10).shape == (160, 2)
    scores = vecs.scores()
    assert set(scores) == set(vecs.hooks)
    assert set(scores["blocks.1.hook_resid_post"]) >= {"parallel_score", "mirror_pair_cosine", "held_out_vs_symmetric_targets"}
    cos = vecs.cosine(0)
    torch.testing.assert_close(cos.diagonal(), torch.ones(160))


def test_group_score_equals_its_definition():
    """The O(n d) formula against the mean of the cosine matrix over same / different pairs."""
    gen = torch.Generator().manual_seed(2)
    vecs = made_vectors(lambda x, a1, a2, label: torch.randn(256, generator=gen) + DIRECTIONS[a1], keys=range(30, 36))
    cos, groups = vecs.cosine(0), vecs.prompts.anchor1
    same = groups[:, None] == groups[None, :]
    off_diagonal = ~torch.eye(len(groups), dtype=torch.bool)
    expected = cos[same & off_diagonal].mean() - cos[~same].mean()
    assert vecs.group_score(0, groups) == pytest.approx(expected.item(), abs=1e-5)
    keep = vecs.prompts.key < 33
    sub = cos[keep][:, keep]
    same, off_diagonal = same[keep][:, keep], off_diagonal[keep][:, keep]
    assert vecs.group_score(0, groups, keep) == pytest.approx((sub[same & off_diagonal].mean() - sub[~same].mean()).item(), abs=1e-5)


def test_select_keeps_prompts_and_vectors_together():
    vecs = made_vectors(lambda x, a1, a2, label: DIRECTIONS[label], keys=range(30, 34))
    keep = vecs.prompts.key == 31
    sub = vecs.select(keep)
    assert len(sub.prompts) == 16 and (sub.prompts.key == 31).all()
    torch.testing.assert_close(sub.vectors, vecs.vectors[:, keep])
