"""The composition test tells a composing model from a lookup model, on handmade models of each."""

import pytest
import torch

from handmade import TASK, composer, lookup
from models import hooked
from models.task import AnchorTask
from probes.composition import OUTCOMES, composition_pairs, composition_test
from probes.sites import Site


@pytest.fixture(scope="module")
def composer_result():
    return composition_test(composer(), TASK, n=48, progress=False)


@pytest.fixture(scope="module")
def lookup_result():
    return composition_test(lookup(), TASK, n=48, progress=False)


def _table(result, outcome):
    labels, fractions = result.columns()
    assert labels == ["key", "anchor1", "anchor2", "noise", "last"]
    return {row.label: dict(zip(labels, values.tolist())) for row, values in zip(result.rows, fractions[outcome])}


def test_composer_carries_the_intermediate_at_the_first_anchor(composer_result):
    result = composer_result
    assert [row.label for row in result.rows] == [
        "L0 resid_pre", "L0 attn_out", "L0 resid_mid", "L0 mlp_out", "L1 resid_pre", "L1 attn_out", "L1 resid_mid", "L1 mlp_out", "L1 resid_post",
    ]
    compositional = _table(result, "compositional")
    # Once layer 0's attention brought the key to a1, a1 holds y = g(x; a1) (written by the
    # MLP there): B answers g(y_A; a2_B).
    assert compositional["L0 resid_mid"]["anchor1"] == 1.0 and compositional["L1 resid_pre"]["anchor1"] == 1.0
    assert compositional["L0 mlp_out"]["anchor1"] == 1.0
    assert _table(result, "key_only")["L0 attn_out"]["anchor1"] == 1.0  # attention alone brings just the key
    assert result.best()[1:] == ("anchor1", 1.0)
    # Before that, a1 is only the anchor token, the key position only the key.
    assert _table(result, "anchor_only")["L0 resid_pre"]["anchor1"] == 1.0
    assert _table(result, "key_only")["L0 resid_pre"]["key"] == 1.0
    # After layer 1's attention the last position holds A's whole answer.
    assert _table(result, "copied_a")["L1 resid_post"]["last"] == 1.0
    assert _table(result, "unchanged")["L1 resid_pre"]["noise"] == 1.0
    assert "most compositional site L0 resid_mid @ anchor1: 1.00" in result.summary()


def test_lookup_model_has_no_compositional_site(lookup_result):
    result = lookup_result
    assert result.best()[2] < 0.1
    # Its anchors fuse, order-free, at the last position before the key arrives.
    assert _table(result, "pair_only")["L0 attn_out"]["last"] > 0.8 and _table(result, "pair_only")["L1 resid_pre"]["last"] > 0.8
    assert _table(result, "key_only")["L1 resid_pre"]["anchor1"] == 1.0  # anchor1 only relays the key
    fractions = result.columns()[1]
    torch.testing.assert_close(sum(fractions[o] for o in OUTCOMES), torch.ones_like(fractions["other"]))
    torch.testing.assert_close(result.fraction_by_role("pair_only"), fractions["pair_only"])  # mixed key positions: roles


def test_pairs_make_every_outcome_distinguishable():
    task = AnchorTask()
    pairs = composition_pairs(task, 400, seed=1)
    a, b = pairs.clean, pairs.corrupted
    assert pairs.aligned
    assert ((a.tokens == b.tokens).sum(1) == task.seq_len - 3).all()  # same noise; key and both anchors differ
    assert (a.key != b.key).all() and (a.anchor1 != b.anchor1).all() and (a.anchor2 != b.anchor2).all()
    excluded = {task.trap_pair, task.held_out_pair}
    for a1, a2 in [*zip(a.anchor1.tolist(), a.anchor2.tolist()), *zip(b.anchor1.tolist(), b.anchor2.tolist()), *zip(a.anchor1.tolist(), b.anchor2.tolist())]:
        assert (a1, a2) not in excluded
    at_key_pos = composition_pairs(task, 50, key_pos=6)
    assert (at_key_pos.clean.key_pos == 6).all() and (at_key_pos.corrupted.key_pos == 6).all()


def test_single_key_position_gives_position_columns():
    result = composition_test(composer(), TASK, n=16, key_pos=1, progress=False)
    labels, fractions = result.columns()
    assert labels == ["0", "1 key", "2 anchor1", "3 anchor2", "4", "5", "6", "7", "8 last"]
    assert fractions["compositional"][result.rows.index(Site("resid_mid", 0)), 2] == 1.0


def test_undefined_and_unknown_are_refused():
    untrained = hooked.build(0.5, task=TASK, n_layers=2, d_model=32, d_head=16, d_mlp=32)
    with pytest.raises(ValueError, match="undefined: the model answers none of the 8 prompt pairs correctly"):
        composition_test(untrained, TASK, n=8, progress=False)
    result = composition_test(composer(), TASK, n=4, progress=False)
    with pytest.raises(ValueError, match="unknown outcome 'copied'"):
        result.fraction("copied")


def test_report_sections_show_every_probe_and_say_when_one_is_undefined():
    import plotly.graph_objects as go

    from probes import report_sections

    for name, make in (("composer", composer), ("lookup", lookup)):
        sections = report_sections(name, make(), TASK, n=16)
        titles = [title for title, _ in sections]
        assert titles == [f"{name}: composition test", f"{name}: order probe: (3,4) patched into (4,3)", f"{name}: key route", f"{name}: mean-ablation sweep",
                          f"{name}: DAS: a subspace that carries g(x; a1)", f"{name}: path patching: the routes to the answer"]
        assert all(isinstance(figure, go.Figure) and figure.layout.title.text.startswith(name) for _, figure in sections[:4])
        das_cell, paths_cell = sections[4][1], sections[5][1]  # tables
        assert "y1 = g(x; a1) (composition): best site, k, held-out IIA" in das_cell and "key changed" in paths_cell
        order = sections[1][1]
        undefined = "undefined for this model" in str(order.layout.annotations)
        assert undefined == (name == "lookup")  # the lookup model answers x-6 on (4,3) already


def probes_separate(inferential, symmetric, task=AnchorTask(), n=128):
    """The causal figures that tell the two solutions apart (README: probes)."""
    from probes import order_probe

    composes = composition_test(inferential, task, n, progress=False)
    looks_up = composition_test(symmetric, task, n, progress=False)
    assert composes.best()[2] > 0.8, composes.summary()  # a site carries g(x; a1) and composes with B's a2
    assert looks_up.best()[2] < 0.2, looks_up.summary()  # none does
    assert _table(looks_up, "pair_only")["L0 attn_out"]["last"] > 0.5  # its anchors fuse at the last position first
    order = order_probe(inferential, task, n, kinds=("resid_pre", "resid_mid"), progress=False)
    assert order.restored.max() > 0.9, order.summary()  # one site carries the order that turns x-10 into x-6
    try:
        eligible = len(order_probe(symmetric, task, n, kinds=("resid_pre",), progress=False).pairs)
    except ValueError:  # it answers x-6 on (4,3) already: order makes no difference
        eligible = 0
    assert eligible < 0.2 * n


def test_probes_separate_the_shipped_models():
    import models

    probes_separate(models.load("inferential"), models.load("symmetric"), models.hooked.task_of("inferential"))


@pytest.mark.parametrize("probe", ["composition_test", "order_probe"])
def test_a_model_for_another_task_is_refused(probe):
    import probes

    with pytest.raises(ValueError, match="does not match the task"):
        getattr(probes, probe)(hooked.build(0.5, n_ctx=10), n=4, progress=False)
