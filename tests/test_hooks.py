"""Hook correctness: every hook the probes read or overwrite holds exactly what the forward pass
computes, and the probes' patched forward passes do what they claim."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from einops import einsum

from handmade import TASK, composer
from models import hooked
from models.task import AnchorTask
from probes.ablation import ablate, ablation_sources, ablation_sweep
from probes.composition import composition_test
from probes.patching import make_pairs, order_probe, patch_sweep
from probes.sites import Site, cache_of, last_logits_with, resid_pre_cache, stream_rows, sweep_rows

DEFAULT_TASK = AnchorTask()
CONFIGS = {
    "default": dict(n_layers=2),  # the shipped architecture: 2 layers, 1 head, pre-LN
    "3 layers, 2 heads": dict(n_layers=3, n_heads=2, d_model=48, d_head=16, d_mlp=96),
}


def random_model(n_layers=2, **arch):
    """A model whose biases and LayerNorm parameters are random too, so that no term of the
    forward pass can be skipped unnoticed."""
    model = hooked.build(0.3, n_layers=n_layers, seed=1, **arch)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, param in hooked.tl_params(model).items():  # on TransformerLens 4, views: add_ writes through
            if not name.rsplit(".", 1)[-1].startswith("W_"):
                param.add_(0.3 * torch.randn(param.shape, generator=gen))
    return model


def tokens(n=64, seed=0):
    return DEFAULT_TASK.sample(n, torch.Generator().manual_seed(seed), pairs=DEFAULT_TASK.pairs, keys="any").tokens


def close(actual, expected, **kw):
    # float32 on both sides, summed in different orders: agree to ~1e-5 of values of order 1-10
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4, **kw)


def layer_norm(x, ln, eps):
    centred = x - x.mean(-1, keepdim=True)
    return centred / (centred.pow(2).mean(-1, keepdim=True) + eps).sqrt() * ln.w + ln.b


@pytest.mark.parametrize("config", CONFIGS)
def test_hooks_hold_the_forward_pass_recomputed_from_the_weights(config):
    model, toks = random_model(**CONFIGS[config]), tokens()
    cfg = model.cfg
    with torch.no_grad():
        logits, cache = model.run_with_cache(toks)
        resid = model.embed.W_E[toks] + model.pos_embed.W_pos  # [batch, pos, d_model]
        causal = torch.ones(cfg.n_ctx, cfg.n_ctx, dtype=torch.bool).tril()
        for layer, block in enumerate(model.blocks):
            attn, mlp = block.attn, block.mlp
            close(cache["resid_pre", layer], resid)
            x = layer_norm(resid, block.ln1, cfg.eps)
            q = einsum(x, attn.W_Q, "b p d, h d e -> b p h e") + attn.b_Q
            k = einsum(x, attn.W_K, "b p d, h d e -> b p h e") + attn.b_K
            v = einsum(x, attn.W_V, "b p d, h d e -> b p h e") + attn.b_V
            scores = einsum(q, k, "b q h e, b k h e -> b h q k") / cfg.d_head**0.5
            pattern = scores.masked_fill(~causal, float("-inf")).softmax(-1)  # [batch, head, q, k]
            close(cache["pattern", layer], pattern)
            z = einsum(pattern, v, "b h q k, b k h e -> b q h e")
            close(cache["z", layer], z)
            attn_out = einsum(z, attn.W_O, "b p h e, h e d -> b p d") + attn.b_O
            close(cache["attn_out", layer], attn_out)
            resid = resid + attn_out
            close(cache["resid_mid", layer], resid)
            mlp_out = F.relu(layer_norm(resid, block.ln2, cfg.eps) @ mlp.W_in + mlp.b_in) @ mlp.W_out + mlp.b_out
            close(cache["mlp_out", layer], mlp_out)
            resid = resid + mlp_out
            close(cache["resid_post", layer], resid)
        expected = layer_norm(resid, model.ln_final, cfg.eps) @ model.unembed.W_U + model.unembed.b_U
    close(logits, expected)
    # The probes' own forward (last position only, optionally from a cached layer) agrees.
    close(last_logits_with(model, toks, []), expected[:, -1])


@pytest.mark.parametrize("config", CONFIGS)
def test_patching_a_prompts_own_activations_changes_nothing(config):
    model, toks = random_model(**CONFIGS[config]), tokens(16)
    rows = sweep_rows(model, ["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "z"])
    own = cache_of(model, toks, {row.hook_name for row in rows})
    start = resid_pre_cache(model, toks)
    baseline = last_logits_with(model, toks, [])
    for row, pos in itertools.product(rows, [None, 0, 4, model.cfg.n_ctx - 1]):
        site = row.at(pos)
        for from_cache in (None, start):
            patched = last_logits_with(model, toks, [(site, own[site.hook_name])], from_cache)
            torch.testing.assert_close(patched, baseline, rtol=0, atol=1e-5, msg=f"{site}")


@pytest.mark.parametrize("config", CONFIGS)
def test_patching_the_whole_residual_stream_restores_the_clean_logits(config):
    model = random_model(**CONFIGS[config])
    clean, corrupted = tokens(seed=1), tokens(seed=2)
    clean_logits = last_logits_with(model, clean, [])
    assert not torch.allclose(clean_logits, last_logits_with(model, corrupted, []))
    rows = stream_rows(model)
    source = cache_of(model, clean, {row.hook_name for row in rows})
    start = resid_pre_cache(model, corrupted)
    for row in rows:
        for from_cache in (None, start):
            patched = last_logits_with(model, corrupted, [(row, source[row.hook_name])], from_cache)
            torch.testing.assert_close(patched, clean_logits, rtol=0, atol=1e-5, msg=f"{row}")


@pytest.mark.parametrize("config", CONFIGS)
def test_a_write_to_resid_mid_reaches_the_stream_as_one_to_attn_out_does(config):
    """resid_mid = resid_pre + attn_out: the same vector added at either point changes the
    output alike. (TransformerLens 4.3's hook_resid_mid alone is read-only; models.hooked
    routes writes there through attn_out.)"""
    model, prompts = random_model(**CONFIGS[config]), tokens()
    delta = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(3))  # [d_model]

    def add(activation, hook):
        return activation + delta

    unpatched = hooked.final_residual(model, prompts)
    for layer in range(model.cfg.n_layers):
        via_mid = hooked.final_residual(model, prompts, [(f"blocks.{layer}.hook_resid_mid", add)])
        via_attn_out = hooked.final_residual(model, prompts, [(f"blocks.{layer}.hook_attn_out", add)])
        assert (via_mid - unpatched).abs().max() > 0.1, f"layer {layer}: the write to resid_mid was lost"
        close(via_mid, via_attn_out, msg=f"layer {layer}")


@pytest.mark.parametrize("config", CONFIGS)
def test_zero_ablating_every_head_equals_a_model_whose_W_O_is_zero(config):
    model, toks = random_model(**CONFIGS[config]), tokens()
    no_output = random_model(**CONFIGS[config])
    with torch.no_grad():
        for block in no_output.blocks:
            block.attn.W_O.zero_()
    heads = [Site("z", layer, head=h) for layer in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    patches = ablation_sources(model, heads, "zero", toks, len(toks))
    ablated = last_logits_with(model, toks, patches)
    torch.testing.assert_close(ablated, last_logits_with(no_output, toks, []), rtol=0, atol=1e-5)
    assert not torch.allclose(ablated, last_logits_with(model, toks, []))


def torch_hooks(model) -> set[tuple[str, str, int]]:
    """Every torch hook on the model's modules: (module, kind, handle id)."""
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks")
    return {(name, kind, key) for name, module in model.named_modules() for kind in kinds for key in getattr(module, kind)}


def assert_no_hooks(model, own_hooks: set):
    """No hook point holds a hook, and no torch hook is left but `own_hooks`: the ones the
    model keeps itself (TransformerLens 4's bridge wires a few at its first forward)."""
    for name, hook_point in model.hook_dict.items():
        assert not hook_point.fwd_hooks and not hook_point.bwd_hooks, f"hook left on {name}"
    left = torch_hooks(model) - own_hooks
    assert not left, f"torch hooks left on {sorted(left)[:3]}"
    # 3.9 flags a cache left on; 4.x's bridge has no such flag (its cache lives in the hook-point hooks checked above)
    assert not getattr(model, "is_caching", False)


PROBE_RUNS = {
    "patch_sweep": lambda m: patch_sweep(m, make_pairs(TASK, "change_key", 16), progress=False),
    "order_probe": lambda m: order_probe(m, TASK, 16, progress=False),
    "composition_test": lambda m: composition_test(m, TASK, 16, progress=False),
    "ablate": lambda m: ablate(m, Site("mlp_out", 1), "resample", TASK, 16),
    "ablation_sweep": lambda m: ablation_sweep(m, TASK, "mean", n=16, progress=False),
}


@pytest.fixture(scope="module")
def handmade_composer():
    return composer()


@pytest.mark.parametrize("probe", PROBE_RUNS)
def test_hooks_are_removed_after_every_probe_even_when_it_raises(probe, handmade_composer):
    model = handmade_composer
    model(TASK.sample(4, torch.Generator().manual_seed(0), pairs=TASK.pairs, keys="any").tokens)
    own_hooks = torch_hooks(model)
    PROBE_RUNS[probe](model)
    assert_no_hooks(model, own_hooks)

    def fail_when_hooked(module, args):  # fails in the first forward pass run with the probe's hooks on
        if any(hook_point.fwd_hooks for hook_point in model.hook_dict.values()):
            raise RuntimeError("boom")

    # a torch pre-hook, not a patched forward: TransformerLens 4's bridge modules forward attributes
    failure = model.blocks[1].mlp.register_forward_pre_hook(fail_when_hooked)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            PROBE_RUNS[probe](model)
    finally:
        failure.remove()
    assert_no_hooks(model, own_hooks)
