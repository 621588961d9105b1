"""Path patching: the paths add up to the whole effect where the last layer is linear, and find
the route a hand-built composer sends the key along."""

import pytest
import torch

from handmade import TASK, composer
from models import hooked
from models.task import ROLES, AnchorTask
from probes.paths import ROUTES, path_effects, path_pairs, path_patching, senders


def linear_last_layer_model():
    """Random weights (layer 0 untouched: attention and ReLU MLP), but a last layer that is
    linear in its input: no LayerNorm, an attention pattern fixed by position (zero queries
    and keys: uniform over the past) and an MLP that ignores its input."""
    model = hooked.build(0.3, n_layers=2, seed=4, normalization_type=None)
    gen = torch.Generator().manual_seed(5)
    params = hooked.tl_params(model)  # on TransformerLens 4, views: in-place writes reach the bridge
    with torch.no_grad():
        params["blocks.1.attn.W_Q"].zero_()
        params["blocks.1.attn.W_K"].zero_()
        params["blocks.1.mlp.W_in"].zero_()
        params["blocks.1.mlp.b_in"].copy_(torch.randn(params["blocks.1.mlp.b_in"].shape, generator=gen))  # a constant the MLP adds
        params["blocks.0.mlp.b_in"].copy_(0.3 * torch.randn(params["blocks.0.mlp.b_in"].shape, generator=gen))
    return model


@pytest.mark.parametrize("kind", ["change_key", "change_anchors"])
def test_paths_add_up_to_the_whole_effect_when_the_last_layer_is_linear(kind):
    model, task = linear_last_layer_model(), AnchorTask()
    result = path_effects(model, path_pairs(task, kind, 64, seed=1))  # an untrained model: its own answers, whatever they are
    assert result.effect.shape == (len(senders(model)), len(ROLES), result.total.shape[0]) and len(result.total) >= 16
    assert (result.effect.abs().mean(-1) > 1e-3).sum() >= 3  # several paths carry something: the sum is not trivial
    # pair by pair, the paths' effects sum to the clean-minus-corrupted logit difference
    # (to float32 rounding: logits reach ~100 without LayerNorm, and 4.x sums in another order)
    torch.testing.assert_close(result.effect.sum((0, 1)), result.total, rtol=1e-3, atol=1e-3)
    assert abs(result.interaction) < 1e-3


def test_composer_sends_the_key_through_the_first_anchor():
    result = path_patching(composer(), TASK, n=48, kinds=("change_key",)).results[0]
    routes = result.route_shares()
    assert routes[ROUTES["anchor1"]] > 0.95  # the intermediate y, computed at a1, read by layer 1
    assert abs(routes[ROUTES["key"]]) < 0.05 and abs(routes[ROUTES["last"]]) < 0.05
    share = dict(zip(result.senders, result.share[:, ROLES.index("anchor1")].tolist()))
    assert share["L0 mlp_out"] > 0.95  # written by the MLP there (attention only brought x)


def test_pairs_avoid_the_special_pairs_and_the_last_key_position():
    task = AnchorTask()
    for kind in ("change_key", "change_anchors"):
        pairs = path_pairs(task, kind, 200, seed=2)
        for batch in (pairs.clean, pairs.corrupted):
            assert (batch.key_pos < task.n_key_positions - 1).all()
            for pair in zip(batch.anchor1.tolist(), batch.anchor2.tolist()):
                assert pair not in (task.trap_pair, task.held_out_pair)
    with pytest.raises(ValueError, match="unknown path-patching pair kind"):
        path_pairs(task, "swap_order")


@pytest.mark.skipif(hooked.TL4, reason="use_split_qkv_input is TransformerLens 3.x's; 4.x's bridge keeps those hooks behind other flags")
def test_a_path_into_the_last_layer_is_its_keys_and_values_at_that_position():
    """The sender's change added to the last layer's input at a position other than the last
    reaches the answer only through that layer's keys and values there: the same as patching
    TransformerLens' split key and value inputs (use_split_qkv_input) at that position alone."""
    from test_hooks import random_model

    from probes.patching import logit_diff
    from probes.sites import cache_of

    model = random_model(n_layers=2)
    result = path_effects(model, path_pairs(AnchorTask(), "change_key", 48, seed=3))
    pairs, (answer, other) = result.pairs, result.answers
    hook = "blocks.0.hook_attn_out"
    delta = cache_of(model, pairs.clean.tokens, {hook})[hook] - cache_of(model, pairs.corrupted.tokens, {hook})[hook]  # [pair, pos, d_model]
    rows, at = torch.arange(len(pairs)), pairs.corrupted.key_pos + 1  # the first anchor's position

    def add_delta(activation, hook):  # [pair, pos, head, d_model]
        activation[rows, at] += delta[rows, at][:, None]
        return activation

    model.cfg.use_split_qkv_input = True
    try:
        with torch.no_grad():
            corrupted = model(pairs.corrupted.tokens)[:, -1]
            patched = model.run_with_hooks(pairs.corrupted.tokens, fwd_hooks=[("blocks.1.hook_k_input", add_delta), ("blocks.1.hook_v_input", add_delta)])[:, -1]
    finally:
        model.cfg.use_split_qkv_input = False
    expected = logit_diff(patched, answer, other) - logit_diff(corrupted, answer, other)
    got = result.effect[result.senders.index("L0 attn_out"), ROLES.index("anchor1")]
    assert expected.abs().max() > 1e-3  # the path does something
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
