"""Activation patching: prompt pairs, the metric, agreement with transformer_lens.patching, the
order probe and the command line, on handmade models whose mechanism is known."""

import pytest
import torch
from transformer_lens import patching as tl_patching

from handmade import TASK, composer, lookup, save
from interp.cli import main
from models.task import ROLES, AnchorTask
from probes.patching import PAIR_KINDS, PromptPairs, logit_diff, make_pairs, order_probe, patch_sweep, prompt_pairs
from probes.sites import Site, by_role

DEFAULT_TASK = AnchorTask()
KEY, A1, A2, NOISE, LAST = (ROLES.index(role) for role in ("key", "anchor1", "anchor2", "noise", "last"))


@pytest.fixture(scope="module")
def composer_model():
    return composer()


@pytest.fixture(scope="module")
def lookup_model():
    return lookup()


def _outside(batch, other, n_pos):
    """[pair, pos] True where neither prompt of the pair has its key or an anchor."""
    pos = torch.arange(n_pos)
    inside = lambda b: (pos >= b.key_pos[:, None]) & (pos <= b.key_pos[:, None] + 2)
    return ~inside(batch) & ~inside(other)


@pytest.mark.parametrize("kind", PAIR_KINDS)
def test_pairs_differ_in_exactly_one_factor(kind):
    pairs = make_pairs(DEFAULT_TASK, kind, 300, seed=3, keys="train")
    clean, corrupted = pairs.clean, pairs.corrupted
    assert len(pairs) == 300 and pairs.kind == kind
    same = _outside(clean, corrupted, DEFAULT_TASK.seq_len)
    assert torch.equal(clean.tokens[same], corrupted.tokens[same]), "same noise wherever both prompts have noise"
    changed = {
        "key": clean.key != corrupted.key,
        "key_pos": clean.key_pos != corrupted.key_pos,
        "anchor1": clean.anchor1 != corrupted.anchor1,
        "anchor2": clean.anchor2 != corrupted.anchor2,
    }
    expected = {
        "swap_order": {"anchor1", "anchor2"},
        "change_anchor1": {"anchor1"},
        "change_anchor2": {"anchor2"},
        "change_anchors": {"anchor1", "anchor2"},
        "change_key": {"key"},
        "move_key": {"key_pos"},
    }[kind]
    for factor, differs in changed.items():
        assert bool(differs.all() if factor in expected else not differs.any()), factor
    if kind == "swap_order":
        assert torch.equal(corrupted.anchor1, clean.anchor2) and torch.equal(corrupted.anchor2, clean.anchor1)
    # the key split is kept (train keys: x mod 9 != p) in both prompts
    assert not DEFAULT_TASK.is_test_key(corrupted.key, corrupted.key_pos).any()


def test_pairs_at_one_key_position_and_from_given_anchor_pairs():
    pairs = make_pairs(DEFAULT_TASK, "change_key", 64, key_pos=5, pairs=[(2, 1)])
    assert (pairs.clean.key_pos == 5).all() and (pairs.corrupted.key_pos == 5).all()
    assert (pairs.clean.anchor1 == 2).all() and (pairs.clean.anchor2 == 1).all()
    assert torch.equal(make_pairs(DEFAULT_TASK, "change_key", 64, seed=1).corrupted.tokens, make_pairs(DEFAULT_TASK, "change_key", 64, seed=1).corrupted.tokens)


def test_bad_prompt_pairs_are_refused_clearly():
    with pytest.raises(ValueError, match="unknown prompt-pair kind 'shuffle'"):
        make_pairs(DEFAULT_TASK, "shuffle")
    with pytest.raises(ValueError, match=r"two different anchors; pairs \[\(1, 1\)\]"):
        make_pairs(DEFAULT_TASK, "swap_order", pairs=[(1, 1)])
    with pytest.raises(ValueError, match="move_key cannot keep test keys"):
        make_pairs(DEFAULT_TASK, "move_key", keys="test")
    clean = make_pairs(DEFAULT_TASK, "change_key", 4).clean
    with pytest.raises(ValueError, match="4 clean prompts but 3 corrupted"):
        PromptPairs(clean, make_pairs(DEFAULT_TASK, "change_key", 3).clean)
    with pytest.raises(ValueError, match="a prompt must have 9 tokens, got 8"):
        prompt_pairs(DEFAULT_TASK, ["23 1 2 43 46 74 54 44 72"], ["23 1 2 43 46 74 54 44"])
    moved = prompt_pairs(DEFAULT_TASK, ["23 1 2 43 46 74 54 44 72"], ["43 23 1 2 46 74 54 44 72"])
    with pytest.raises(ValueError, match=r"needs the key and anchors at the same positions.*pair 0 has the key at position 0 \(clean\) and 1"):
        moved.require_aligned("this probe")


def test_unknown_or_impossible_sites_are_refused(composer_model):
    with pytest.raises(ValueError, match="unknown site kind 'attn'"):
        Site("attn", 0)
    with pytest.raises(ValueError, match="'z' needs a head"):
        Site("z", 0)
    with pytest.raises(ValueError, match="'mlp_out' has no heads"):
        Site("mlp_out", 0, head=1)
    with pytest.raises(ValueError, match="layer 2 out of range, the model has 2 layers"):
        Site("mlp_out", 2).check(composer_model)
    with pytest.raises(ValueError, match="cannot read site 'z/0'"):
        Site.parse("z/0")
    assert Site.parse("z:1:pos=3:head=0") == Site("z", 1, pos=3, head=0)
    assert str(Site("resid_pre", 1, pos=3)) == "resid_pre:1:pos=3"
    with pytest.raises(ValueError, match="unknown site kind 'bogus'"):
        patch_sweep(composer_model, make_pairs(TASK, "change_key", 8), kinds=["bogus"], progress=False)


def test_metric_is_refused_when_both_runs_give_the_same_answer(composer_model):
    # Moving the key changes nothing a perfect model answers: the metric has nothing to measure.
    with pytest.raises(ValueError, match="undefined: the clean and corrupted runs give the same answer on all 16 prompt pairs"):
        patch_sweep(composer_model, make_pairs(TASK, "move_key", 16), progress=False)


def test_sweep_equals_transformer_lens_patching(composer_model):
    model = composer_model
    result = patch_sweep(model, make_pairs(TASK, "change_key", 24, seed=1), kinds=["resid_pre", "attn_out", "mlp_out", "z"], progress=False)
    assert result.n_dropped == 0
    pairs = result.pairs
    _, clean_cache = model.run_with_cache(pairs.clean.tokens)

    def metric(logits):
        return logit_diff(logits[:, -1], result.clean_answer, result.corrupted_answer).mean()

    ours = result.patched_diff.mean(-1)  # [row, pos]
    row_of = {(row.kind, row.layer, row.head): i for i, row in enumerate(result.rows)}
    theirs = {
        "resid_pre": tl_patching.get_act_patch_resid_pre(model, pairs.corrupted.tokens, clean_cache, metric),  # [layer, pos]
        "attn_out": tl_patching.get_act_patch_attn_out(model, pairs.corrupted.tokens, clean_cache, metric),
        "mlp_out": tl_patching.get_act_patch_mlp_out(model, pairs.corrupted.tokens, clean_cache, metric),
        "z": tl_patching.get_act_patch_attn_head_out_by_pos(model, pairs.corrupted.tokens, clean_cache, metric),  # [layer, pos, head]
    }
    for kind, values in theirs.items():
        for layer in range(model.cfg.n_layers):
            for head in range(model.cfg.n_heads) if kind == "z" else [None]:
                expected = values[layer, :, head] if kind == "z" else values[layer]
                torch.testing.assert_close(ours[row_of[kind, layer, head]], expected, rtol=1e-4, atol=1e-4, msg=f"{kind} {layer} {head}")


def test_key_route_of_the_composer(composer_model):
    """The composer moves the key into the first anchor in layer 0 and reads it there in layer 1."""
    result = patch_sweep(composer_model, make_pairs(TASK, "change_key", 32), progress=False)
    metric = dict(zip([row.label for row in result.rows], result.metric_by_role.tolist()))  # row -> value per role (ROLES)
    assert metric["L0 resid_pre"][KEY] == pytest.approx(1, abs=1e-3)  # the key token itself
    assert metric["L1 resid_pre"][KEY] == pytest.approx(0, abs=1e-3)  # ... no longer needed at its own position
    assert metric["L1 resid_pre"][A1] == pytest.approx(1, abs=1e-3)  # it now lives at anchor1
    assert metric["L1 z H0"][LAST] == pytest.approx(1, abs=1e-3)  # head 0 brings it to the last position
    assert metric["L1 z H1"][LAST] == pytest.approx(0, abs=1e-3)  # head 1 (the second anchor) does not
    assert result.metric_by_role[:, NOISE].abs().max() < 1e-3  # noise carries nothing
    assert result.restored_by_role[result.rows.index(Site("resid_pre", 1)), A1] == 1.0
    assert result.metric.shape == (len(result.rows), TASK.seq_len)


def test_order_probe_finds_where_order_is_read(composer_model, lookup_model):
    result = order_probe(composer_model, TASK, 32, progress=False)
    assert result.answer_names == ("x-6", "x-10") and result.n_dropped == 0
    restored = dict(zip([row.label for row in result.rows], result.restored_by_role.tolist()))
    # The composer keeps order as two facts at two positions (y and "a1 is 3" at a1, the
    # token at a2): no single site before layer 1's attention output turns x-10 into x-6...
    assert all(max(restored[f"L{layer} {kind}"]) == 0 for layer in (0, 1) for kind in ("resid_pre",)) and max(restored["L0 resid_mid"]) == 0
    # ...the last position after layer 1's attention does, completely.
    assert restored["L1 resid_mid"][LAST] == 1.0 and restored["L1 attn_out"][LAST] == 1.0
    # The figure: the metric on a diverging -1..1 scale, the fraction on a sequential 0..1 one.
    metric, fraction = result.figure().data
    assert (metric.zmin, metric.zmax, metric.zmid) == (-1, 1, 0) and (fraction.zmin, fraction.zmax, fraction.zmid) == (0, 1, None)
    assert fraction.colorscale[0][1] != metric.colorscale[0][1] and fraction.showscale and metric.showscale
    # A lookup model answers x-6 on (4,3) already: the question has no answer.
    with pytest.raises(ValueError, match="undefined: no pair where the clean run answers x-6 and the corrupted run x-10"):
        order_probe(lookup_model, TASK, 16, progress=False)


def test_roles_line_up_prompts_with_different_key_positions():
    batch = make_pairs(DEFAULT_TASK, "change_key", 50).clean
    values = torch.arange(9.0)[:, None].expand(9, 50)  # value = position
    roles = by_role(values, batch)  # [role, batch]
    assert torch.equal(roles[KEY], batch.key_pos.float()) and torch.equal(roles[A2], batch.key_pos + 2.0)
    assert (roles[LAST] == 8).all()
    noise = [sum(p for p in range(9) if p not in (k, k + 1, k + 2, 8)) / len([p for p in range(9) if p not in (k, k + 1, k + 2, 8)]) for k in batch.key_pos.tolist()]
    torch.testing.assert_close(roles[NOISE], torch.tensor(noise))


def test_cli_probe_writes_a_self_contained_figure(composer_model, tmp_path, capsys):
    save(composer_model, tmp_path / "composer")
    out = tmp_path / "order.html"
    assert main(["probe", "order", str(tmp_path / "composer"), "-n", "16", "--quiet", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "order probe: (3, 4) patched into (4, 3): 16 pairs" in printed and "L1 " in printed
    html = out.read_text()
    assert "plotly" in html and "<script src=" not in html  # plotly.js inlined: opens offline
    assert main(["probe", "patching", str(tmp_path / "composer"), "--pairs", "shuffle", "--quiet"]) == 2
    assert "anchor-interp probe: error: unknown prompt-pair kind 'shuffle'" in capsys.readouterr().err
