"""Stacked training (models.stacked, the GPU path; tested here on the CPU): each run in a
stack is its own `train()` run, only the float summation order differs; the sweep's
stacked executor records each run as the local pool would."""

import pytest
import torch

from interp.sweep import run_cell, run_sweep
from models.stacked import clip_per_model, train_stacked
from models.sweep import SweepSpec, results
from models.train import TrainConfig, train

TINY = dict(arch=dict(d_model=32, d_head=16, d_mlp=64), batch_size=64, max_steps=12, warmup_steps=3, eval_every=4, precision="fp32")


def test_each_run_in_a_stack_is_its_own_train_run():
    configs = [TrainConfig(gamma=0.8, seed=1, **TINY), TrainConfig(gamma=0.3, seed=2, **TINY)]
    threads = torch.get_num_threads()
    try:
        stacked = train_stacked(configs, "cpu", progress=False)
        alone = [train(c, progress=False) for c in configs]
    finally:
        torch.set_num_threads(threads)
    for s, a in zip(stacked, alone):
        assert s.config == a.config and s.steps == a.steps == 12 and not s.stopped_early
        assert [r["step"] for r in s.history] == [r["step"] for r in a.history] == [4, 8, 12]
        for rs, ra in zip(s.history, a.history):  # same data, same updates: losses and accuracies agree
            assert rs["loss"] == pytest.approx(ra["loss"], rel=1e-4) and rs["lr"] == ra["lr"]
            assert all(abs(rs[k] - ra[k]) <= 0.01 for k in ("seen_test", "inferential", "symmetric"))
        for (name, ps), (_, pa) in zip(s.model.named_parameters(), a.model.named_parameters()):
            torch.testing.assert_close(ps, pa, atol=1e-4, rtol=1e-3, msg=name)
    assert stacked[0].model.cfg.device == "cpu"  # handed back as ordinary CPU models


def test_a_stack_holds_runs_that_differ_by_gamma_and_seed_only():
    with pytest.raises(ValueError, match=r"differ in gamma and seed only; these settings differ: \['lr'\]"):
        train_stacked([TrainConfig(**TINY), TrainConfig(lr=5e-4, **TINY)], "cpu", progress=False)
    with pytest.raises(ValueError, match="no runs"):
        train_stacked([], "cpu")
    with pytest.raises(ValueError, match="decay_after_solution gives each run its own lr schedule"):
        train_stacked([TrainConfig(decay_after_solution=4, **TINY)], "cpu", progress=False)
    with pytest.raises(ValueError, match="a stack trains eagerly"):
        train_stacked([TrainConfig(compiled=True, **TINY)], "cpu", progress=False)


def test_clipping_is_per_model_as_clip_grad_norm_does_it():
    torch.manual_seed(0)
    grads = [torch.randn(3, 4, 5), torch.randn(3, 7)]  # [model, ...] for 3 models
    grads[0][1] *= 1e-3  # model 1 is under the limit: left alone
    expected = []
    for m in range(3):
        own = [torch.nn.Parameter(torch.zeros_like(g[m])) for g in grads]
        for p, g in zip(own, grads):
            p.grad = g[m].clone()
        torch.nn.utils.clip_grad_norm_(own, 1.0)
        expected.append([p.grad for p in own])
    clip_per_model(grads, 1.0)
    for m in range(3):
        for g, e in zip(grads, expected[m]):
            torch.testing.assert_close(g[m], e)


def test_the_stacked_executor_records_every_run_with_where_it_trained(tmp_path):
    fixed = [f"{k}={v}" for k, v in TINY.items() if k != "arch"] + [f"{k}={v}" for k, v in TINY["arch"].items()]
    spec = SweepSpec.parse(["gamma=0.3,0.8", "seed=0,1"], fixed)
    summary = run_sweep(spec, tmp_path / "s.db", executor="stacked", device="cpu", stack_size=4, workers=1, progress=False)
    assert (summary.done, summary.failed) == (4, 0)
    _, rows = results(tmp_path / "s.db")
    assert all(r["steps"] == 12 and r["worker"].startswith("stacked on cpu") for r in rows)
    assert {r["versions"]["train_device"] for r in rows} == {"cpu (cpu)"}
    # the probes ran on the stacked run's model: the same cell trained alone measures alike
    threads = torch.get_num_threads()
    try:
        alone = run_cell(spec.cells()[0], threads=1)
    finally:
        torch.set_num_threads(threads)
    first = next(r for r in rows if r["id"] == 0)
    assert first["metrics"]["label"] == alone["metrics"]["label"]
    assert first["metrics"]["seen_test_keys"] == pytest.approx(alone["metrics"]["seen_test_keys"], abs=0.02)
