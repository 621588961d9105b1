"""Ablation (zero, mean, resample) on a handmade composer whose every part is known."""

import pytest
import torch

from handmade import TASK, composer
from models import hooked
from probes.ablation import METRICS, ablate, ablation_sources, ablation_sweep
from probes.figures import write_html
from probes.sites import Site


@pytest.fixture(scope="module")
def model():
    return composer()


def test_ablating_what_the_answer_needs_breaks_it_and_noise_does_not(model):
    intact = {m: 1.0 if m != "symmetric" else 0.0 for m in METRICS}
    # Head 0 of layer 1 brings y = g(x; a1) to the last position: without it, nothing is right.
    result = ablate(model, Site("z", 1, head=0), "zero", TASK, n=32)
    assert result.baseline == intact
    assert result.ablated == {"seen": 0.0, "inferential": 0.0, "symmetric": 0.0}
    # Key at position 2: position 6 is noise, whose mean changes nothing.
    result = ablate(model, Site("resid_pre", 0, pos=6), "mean", TASK, n=32, key_pos=2)
    assert result.ablated == intact
    # The key's position once the key has moved into the first anchor: no longer read.
    assert ablate(model, Site("resid_pre", 1, pos=2), "resample", TASK, n=32, key_pos=2).ablated == intact
    # The first anchor's position then carries y: another prompt's y gives another answer.
    assert ablate(model, Site("resid_pre", 1, pos=3), "resample", TASK, n=32, key_pos=2).ablated["seen"] < 0.2
    assert "zero ablation of z:1:head=0: seen 1.00 -> 0.00" in ablate(model, Site("z", 1, head=0), "zero", TASK, n=8).summary()


def test_ablation_sources(model):
    tokens = TASK.sample(20, torch.Generator().manual_seed(0), pairs=TASK.pairs, keys="any").tokens
    site = Site("mlp_out", 0)
    _, cache = model.run_with_cache(tokens)
    (_, zero), = ablation_sources(model, [site], "zero", tokens, 5)
    (_, mean), = ablation_sources(model, [site], "mean", tokens, 5)
    (_, resample), = ablation_sources(model, [site], "resample", tokens, 5, seed=1)
    assert zero.shape == (1, 9, model.cfg.d_model) and not zero.any()
    torch.testing.assert_close(mean, cache["mlp_out", 0].mean(0, keepdim=True))
    assert resample.shape == (5, 9, model.cfg.d_model)
    assert all(any(torch.equal(row, ref) for ref in cache["mlp_out", 0]) for row in resample)  # whole reference prompts


def test_sweep_over_every_head_layer_and_position(model, tmp_path):
    sweep = ablation_sweep(model, TASK, "mean", n=24, key_pos=2, progress=False)
    labels, accuracy = sweep.columns()
    assert [row.label for row in sweep.rows] == ["L0 resid_pre", "L0 z H0", "L0 z H1", "L0 mlp_out", "L1 resid_pre", "L1 z H0", "L1 z H1", "L1 mlp_out"]
    assert labels == ["0", "1", "2 key", "3 anchor1", "4 anchor2", "5", "6", "7", "8 last"]
    seen = dict(zip([row.label for row in sweep.rows], accuracy["seen"].tolist()))
    assert all(seen[row][p] == 1.0 for row in seen for p in (0, 1, 5, 6, 7))  # noise positions: never needed
    assert seen["L1 z H0"][8] < 0.2 and seen["L1 z H1"][8] < 0.5  # both layer-1 heads feed the last position
    assert seen["L0 z H0"][3] < 0.2  # the previous-token head at a1 brings the key
    assert seen["L0 z H1"][3] == 1.0  # the unused head
    # Mixed key positions: columns become roles.
    mixed = ablation_sweep(model, TASK, "zero", kinds=["mlp_out"], n=16, progress=False)
    labels, accuracy = mixed.columns()
    assert labels == ["key", "anchor1", "anchor2", "noise", "last"] and accuracy["inferential"].shape == (2, 5)
    assert accuracy["seen"][0, 1] < 0.2 and accuracy["seen"][0, 3] == 1.0  # layer 0's MLP at anchor1 (writes y); noise
    summary = mixed.summary()
    assert "accuracy before -> after ablating the site" in summary and "(4,3) answered x-10" in summary
    row, col, after = mixed.largest_changes("seen")[0]
    assert f"{row} @ {col} {mixed.baseline['seen']:.2f} -> {after:.2f}" in summary
    html = write_html(sweep.figure(), tmp_path / "sweep.html").read_text()
    assert "plotly" in html and "<script src=" not in html


def test_bad_ablations_are_refused(model):
    with pytest.raises(ValueError, match="unknown ablation 'median'; known: zero, mean, resample"):
        ablate(model, Site("mlp_out", 0), "median", TASK, n=4)
    with pytest.raises(ValueError, match="no sites to ablate"):
        ablate(model, [], "zero", TASK, n=4)
    with pytest.raises(ValueError, match="head 2 out of range, the model has 2 heads"):
        ablate(model, Site("z", 0, head=2), "zero", TASK, n=4)
    with pytest.raises(ValueError, match="position 9 out of range"):
        ablate(model, Site("mlp_out", 0, pos=9), "zero", TASK, n=4)
    with pytest.raises(ValueError, match="does not match the task"):
        ablation_sweep(hooked.build(0.5, n_ctx=10), n=4, progress=False)
