"""trace_flow: the patterns are the hooks' own, the derived views are right on models whose
attention is set by hand, the route rule names known routes, and bad input is refused."""

import dataclasses

import pytest
import torch

from interp.flow import (
    FlowBatch,
    combine_heads,
    flow_prompts,
    role_flow,
    rollout,
    route_of,
    trace_flow,
    trace_flows,
    uniform_flow,
    uniform_role_flow,
    value_weighted,
)
from handmade import TASK as HANDMADE_TASK
from handmade import composer, lookup
import models
from models import hooked
from models.task import ROLES, AnchorTask, role_membership

TASK = AnchorTask()
PROMPT = "23 1 2 43 46 74 54 44 72"


@pytest.fixture(scope="module")
def deep_model():
    """3 layers, 2 heads: nothing here may assume the paper's 2 x 1 shape."""
    return hooked.build(0.3, n_layers=3, seed=1, n_heads=2, d_head=16, d_model=32, d_mlp=64)


def set_attention(model, pattern_of):
    """Overwrite every layer's attention pattern: pattern_of(n_pos) -> [dst, src]."""

    def hook(pattern, hook):
        return pattern_of(pattern.shape[-1]).expand_as(pattern).clone()

    for layer in range(model.cfg.n_layers):
        model.add_hook(f"blocks.{layer}.attn.hook_pattern", hook, is_permanent=True)
    return model


def test_attention_is_the_cached_hook_pattern(deep_model):
    flow = trace_flow(deep_model, PROMPT)
    _, cache = deep_model.run_with_cache(TASK.prompt(PROMPT).tokens)
    assert flow.attention.shape == (3, 2, 9, 9)
    for layer in range(3):
        assert torch.equal(flow.attention[layer], cache["pattern", layer][0])


def test_rows_sum_to_one_and_respect_the_causal_mask(deep_model):
    flows = trace_flows(deep_model, TASK.sample(64, torch.Generator().manual_seed(0)).tokens)
    for view in (flows.attention, flows.flow("attention"), flows.flow("value"), flows.rollout("attention"), flows.rollout("value")):
        torch.testing.assert_close(view.sum(-1), torch.ones(view.shape[:-1]))
        above_diagonal = torch.ones(9, 9, dtype=torch.bool).triu(1)
        assert (view[..., above_diagonal] == 0).all()


def test_rollout_of_identity_attention_is_identity(deep_model):
    model = set_attention(hooked.build(0.3, n_layers=3, seed=1, n_heads=2, d_head=16, d_model=32, d_mlp=64), lambda n: torch.eye(n))
    flow = trace_flow(model, PROMPT)
    assert torch.equal(flow.attention, torch.eye(9).expand(3, 2, 9, 9))
    torch.testing.assert_close(flow.rollout("attention"), torch.eye(9).expand(3, 9, 9))


def test_rollout_of_attention_to_the_first_position():
    """All attention on position 0: with the residual each layer keeps half of what a
    position holds, so after l + 1 layers position i > 0 is 1 - 0.5^(l+1) token 0."""
    first = lambda n: torch.zeros(n, n).index_fill_(1, torch.tensor([0]), 1.0)  # noqa: E731
    model = set_attention(hooked.build(0.3, n_layers=3, seed=1, n_heads=2, d_head=16, d_model=32, d_mlp=64), first)
    roll = trace_flow(model, PROMPT).rollout("attention")
    for layer in range(3):
        expected = torch.eye(9) * 0.5 ** (layer + 1)
        expected[:, 0] = 1 - 0.5 ** (layer + 1)
        expected[0, 0] = 1.0
        torch.testing.assert_close(roll[layer], expected)


def test_rollout_multiplies_layers_in_order():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # layer 0: position 1 reads position 0
    b = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # layer 1: identity
    mixed_a = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    torch.testing.assert_close(rollout(torch.stack([a, b])), torch.stack([mixed_a, mixed_a]))


def test_value_weighted_flow_is_attention_when_value_norms_are_equal(deep_model):
    attention = trace_flow(deep_model, PROMPT).attention
    torch.testing.assert_close(value_weighted(attention, torch.full((3, 2, 9), 2.5)), combine_heads(attention))
    # In a model: every position writes the same value vector, and both heads share W_O.
    model = hooked.build(0.3, n_layers=2, seed=2, n_heads=2, d_head=16, d_model=32, d_mlp=64)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.W_O[1] = block.attn.W_O[0]
    for layer in range(2):
        model.add_hook(f"blocks.{layer}.attn.hook_v", lambda v, hook: v[:, :1, :1].expand_as(v).clone(), is_permanent=True)
    flow = trace_flow(model, PROMPT)
    assert torch.allclose(flow.value_norms, flow.value_norms[..., :1, :1])
    torch.testing.assert_close(flow.value_flow, flow.layer_flow)


def test_value_weighted_flow_follows_the_value_norms(deep_model):
    attention = torch.full((1, 1, 2, 2), 0.5).tril()
    attention[..., 0, 0] = 1.0
    norms = torch.tensor([[[1.0, 3.0]]])  # position 1 writes 3x more than position 0
    torch.testing.assert_close(value_weighted(attention, norms)[0, 1], torch.tensor([0.25, 0.75]))


def test_batched_flow_equals_one_prompt_at_a_time(deep_model):
    prompts = TASK.sample(5, torch.Generator().manual_seed(3))
    flows = trace_flows(deep_model, prompts)
    for i in range(5):
        one = trace_flow(deep_model, prompts.tokens[i])
        torch.testing.assert_close(flows[i].attention, one.attention)
        torch.testing.assert_close(flows[i].value_norms, one.value_norms)
        assert flows[i].prediction == one.prediction
        assert flows[i].roles == one.roles


def test_roles_of_a_prompt():
    flow = trace_flow(hooked.build(0.5, seed=0), PROMPT)
    assert flow.roles == ["key", "anchor1", "anchor2", "noise", "noise", "noise", "noise", "noise", "last"]
    assert trace_flow(hooked.build(0.5, seed=0), "50 60 70 80 90 55 23 1 2").roles[-3:] == ["key", "anchor1", "anchor2+last"]


def test_role_flow_of_uniform_attention():
    """Key at 0: under uniform causal attention anchor1 (position 1) draws 1/2 from the key
    and the last position (8) 1/9 from each single position, 5/9 from the noise."""
    membership = role_membership(torch.tensor([0]), 9)
    shares = uniform_role_flow(membership, n_layers=2)
    key, a1, a2, noise, last = range(5)
    assert shares.shape == (2, 5, 5)
    assert shares[0, a1, key] == pytest.approx(0.5)
    assert shares[1, last, key] == pytest.approx(1 / 9) and shares[1, last, noise] == pytest.approx(5 / 9)
    torch.testing.assert_close(role_flow(uniform_flow(9).expand(1, 2, 9, 9), membership), shares)


# ---- the route rule ----------------------------------------------------------------------------
def routed_flows(edges_by_layer: list[dict[str, str]], n: int = 200, seed: int = 0) -> FlowBatch:
    """A FlowBatch whose attention follows `edges_by_layer`: in each layer, role dst attends
    entirely to role src (both anchors: half each); other positions attend to themselves."""
    prompts = TASK.sample(n, torch.Generator().manual_seed(seed), pairs=TASK.pairs, keys="any")
    n_layers = len(edges_by_layer)
    attention = torch.eye(9).repeat(n, n_layers, 1, 1, 1)  # [batch, layer, head, dst, src]
    rows = torch.arange(n)
    where = {"key": prompts.key_pos, "anchor1": prompts.key_pos + 1, "anchor2": prompts.key_pos + 2, "last": torch.full((n,), 8)}
    for layer, edges in enumerate(edges_by_layer):
        for dst, src in edges.items():
            d = where[dst]
            attention[rows, layer, 0, d, :] = 0
            for s in src.split("+"):
                attention[rows, layer, 0, d, where[s]] += 1 / len(src.split("+"))
    return FlowBatch(prompts, attention, torch.ones(n, n_layers, 1, 9), torch.zeros(n, dtype=torch.long))


def test_route_names_the_paper_inferential_route():
    route = routed_flows([{"anchor1": "key", "anchor2": "key"}, {"last": "anchor1+anchor2"}]).route()
    assert route.name == "inferential"
    assert set(route.layers[0].key_into) == {"anchor1", "anchor2"} and route.layers[1].last_reads == "anchors"


def test_route_names_the_paper_symmetric_route():
    route = routed_flows([{"last": "anchor1+anchor2"}, {"last": "key"}]).route()
    assert route.name == "symmetric"
    assert route.layers[0].fused_at == "last" and route.layers[1].last_reads == "key"


def test_route_in_a_deeper_model_and_other_routes():
    # Two idle layers around the inferential steps: still inferential.
    assert routed_flows([{}, {"anchor1": "key"}, {}, {"last": "anchor1+anchor2"}]).route().name == "inferential"
    assert routed_flows([{"last": "key"}, {"last": "anchor1+anchor2"}]).route().name == "other"
    assert routed_flows([{}, {}]).route().name == "other"
    # Key into the anchors; then anchors fused at the last position, which gets the key later too.
    assert routed_flows([{"anchor1": "key"}, {"last": "anchor1+anchor2"}, {"last": "key"}]).route().name == "mixed"


def test_anchors_at_the_last_position_before_the_key_make_a_lookup():
    """Bag the anchors at the last position first, copy the key into anchor1, then read it
    from there: the key reaches the last position through anchor1's position, but the pair
    was already fused without it: symmetric, not inferential."""
    route = routed_flows([{"last": "anchor1+anchor2", "anchor1": "key"}, {"last": "anchor1"}]).route()
    assert route.name == "symmetric"


@pytest.mark.parametrize("build, expected", [(composer, "inferential"), (lookup, "symmetric")])
def test_route_of_hand_wired_models(build, expected):
    """tests/handmade.py wires a composer and a lookup by hand (see its docstring)."""
    prompts = HANDMADE_TASK.sample(500, torch.Generator().manual_seed(0), pairs=HANDMADE_TASK.pairs, keys="any")
    flows = trace_flows(build(), prompts, HANDMADE_TASK)
    assert flows.route().name == expected
    # Key position 0: anchor1 has two positions to read, so the lookup's half-and-half
    # attention there equals uniform attention and carries no evidence either way.
    assert {r.name for p, r in flows.routes_by_key_position().items() if p > 0} == {expected}


def test_uniform_attention_has_no_route():
    flows = trace_flows(set_attention(hooked.build(0.5, seed=0), uniform_flow), TASK.sample(100, torch.Generator().manual_seed(0)).tokens)
    route = flows.route()
    assert route.name == "other" and all(not layer.edges for layer in route.layers)


def test_route_by_key_position_and_single_prompt():
    flows = routed_flows([{"anchor1": "key", "anchor2": "key"}, {"last": "anchor1+anchor2"}])
    by_position = flows.routes_by_key_position()
    assert sorted(by_position) == list(range(6))  # at key position 6 the second anchor is the last position
    assert flows.unrouted_key_positions() == [6]
    assert all(by_position[p].name == "inferential" for p in range(6))
    assert flows[int((flows.prompts.key_pos == 2).nonzero()[0])].route().name == "inferential"
    assert "key -> anchors, then anchors -> last" in str(flows.route())


# ---- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "prompt, message",
    [
        ("23 1 2 43", "must have 9 tokens"),
        ("23 1 2 43 46 74 54 44 999", "outside the vocabulary"),
        ("23 24 25 43 46 74 54 44 72", "no anchor pair"),
        ("23 1 x 43 46 74 54 44 72", "not a list of integer token ids"),
    ],
)
def test_bad_prompts_are_refused(prompt, message):
    with pytest.raises(ValueError, match=message):
        trace_flow(hooked.build(0.5, seed=0), prompt)


def test_model_that_does_not_fit_the_task_is_refused():
    with pytest.raises(ValueError, match="n_ctx 12"):
        trace_flow(hooked.build(0.5, seed=0, n_ctx=12), PROMPT)


def test_missing_head_layer_or_kind_is_refused(deep_model):
    flow = trace_flow(deep_model, PROMPT)
    assert torch.equal(flow.head(2, 1), flow.attention[2, 1])
    with pytest.raises(ValueError, match="layer 3 does not exist: the model has 3 layers"):
        flow.head(3, 0)
    with pytest.raises(ValueError, match="head 2 does not exist: the model has 2 heads"):
        flow.head(0, 2)
    with pytest.raises(ValueError, match="flow kind must be"):
        flow.flow("keys")
    with pytest.raises(ValueError, match="threshold"):
        route_of(torch.zeros(1, 5, 5), torch.zeros(1, 5, 5), threshold=1.5)


def test_roles_constant_matches_membership_order():
    membership = role_membership(torch.tensor([6]), 9)[0]  # key at the last slot
    assert ROLES == ("key", "anchor1", "anchor2", "noise", "last")
    assert membership[8].tolist() == [0, 0, 1, 0, 1]  # anchor2 and last at once


def test_flow_figure_draws_every_layer(deep_model):
    fig = trace_flow(deep_model, PROMPT).figure()
    assert list(fig.layout.xaxis.ticktext) == ["tokens", "after layer 0", "after layer 1", "after layer 2"]
    assert len(fig.layout.shapes) > 9  # residual guides plus flow lines


# ---- the shipped models ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["inferential", "symmetric"])
def test_shipped_models_take_the_route_the_paper_describes(name):
    """inferential: layer 0 key -> anchors, layer 1 anchors -> last; symmetric: layer 0
    anchors -> last, layer 1 key -> last. Needs the shipped checkpoints (models/zoo)."""
    model, task = models.load(name), hooked.task_of(name)
    flows = trace_flows(model, flow_prompts(task, 2000), task)
    assert flows.route().name == name, str(flows.route())


@pytest.mark.parametrize("token, message", [(-1, "token -1 at position 0"), (500, "token 500 at position 0")])
def test_an_anchor_batch_is_validated_too(token, message):
    batch = AnchorTask().prompts([PROMPT, PROMPT])
    tokens = batch.tokens.clone()
    tokens[1, 0] = token
    with pytest.raises(ValueError, match=message):
        trace_flows(hooked.build(0.5, seed=0), dataclasses.replace(batch, tokens=tokens))


@pytest.mark.parametrize(
    "prompt, message",
    [
        (torch.tensor([23.7, 1, 2, 43, 46, 74, 54, 44, 72]), "integer tensor, got dtype torch.float32"),
        (torch.tensor([[23.0, 1, 2, 43, 46, 74, 54, 44, 72]]), "integer tensor, got dtype torch.float32"),
        ([23.7, 1, 2, 43, 46, 74, 54, 44, 72], "token ids must be integers, got 23.7"),
        (AnchorTask().prompts([PROMPT, PROMPT]).tokens, r"trace_flow takes one prompt, got 2 \(a tensor of shape \(2, 9\)\); use trace_flows"),
    ],
)
def test_float_tokens_and_several_prompts_are_refused_by_trace_flow(prompt, message):
    with pytest.raises(ValueError, match=message):
        trace_flow(hooked.build(0.5, seed=0), prompt)
    assert trace_flow(hooked.build(0.5, seed=0), AnchorTask().prompts([PROMPT]).tokens).tokens.tolist() == [int(t) for t in PROMPT.split()]
