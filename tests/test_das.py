"""DAS finds a planted subspace in a hand-built model, finds no intermediate in a lookup model,
and its short forward computes what the hooked forward does."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from handmade import TASK, lookup, scalar_composer
from models.task import AnchorTask
from probes.composition import composition_pairs, composition_rows
from probes.das import DasSite, _prepare, das, fit_basis, interchange, interchange_logits, split_runs
from probes.sites import cache_of, last_logits_with
from test_hooks import CONFIGS, random_model

SMALL = dict(n_train=192, n_test=48, epochs=15, batch_size=32, lr=0.05, progress=False)  # ~90 steps


def test_das_finds_the_planted_direction():
    model = scalar_composer()
    # What layer 0's MLP writes at the first anchor: y along one direction, and a constant flag.
    # (Further on, the residual stream there also holds the key as a one-hot, whose held-out
    # keys' directions training never sees, so a basis could not be checked on them.)
    planted = DasSite.parse("mlp_out:0@anchor1")
    result = das(model, TASK, sites=[planted, "resid_pre:1@key"], dims=(1,), variables=("y1",), **SMALL)
    assert result.at("y1", planted, 1) >= 0.95
    basis = result.bases[("y1", planted.label, 1)]  # [d_model, 1]
    assert basis[model.planted, 0].abs() > 0.99  # the one direction that holds y
    assert result.at("y1", DasSite.parse("resid_pre:1@key"), 1) < 0.1  # the key alone is not y
    assert result.best("y1")[0] == planted
    summary = result.to_dict()
    assert summary["site"] == "L0 mlp_out @ anchor1" and summary["dims"] == 1 and summary["iia"] >= 0.95


def test_lookup_model_has_no_intermediate():
    # where its anchors meet (the bag at the last position) and where its key travels (anchor1)
    result = das(lookup(), TASK, sites=["attn_out:0@last", "resid_pre:1@anchor1"], dims=(4,), variables=("y1",), **SMALL)
    assert result.iia.max() < 0.2


@pytest.mark.parametrize("config", [*CONFIGS, "SiLU MLP (the hooked path)"])
def test_interchanging_every_direction_equals_patching_the_whole_activation(config):
    """With a full basis the interchange IS the composition test's whole-activation patch: the
    short forward (and the hooked one, for an architecture it does not cover) must give the
    hooked forward's logits at every stream point and role."""
    arch = CONFIGS.get(config, dict(n_layers=2, act_fn="silu"))
    model, task = random_model(**arch), AnchorTask()
    pairs = composition_pairs(task, 24, seed=3, key_pos=2)
    runs = split_runs(model, pairs)
    everything = torch.eye(model.cfg.d_model)  # [d_model, d_model]
    for row in composition_rows(model):
        source = cache_of(model, pairs.clean.tokens, {row.hook_name})[row.hook_name]
        for role in ("key", "anchor2", "last"):
            where = DasSite(row, role)
            data = _prepare(runs, where)
            expected = last_logits_with(model, pairs.corrupted.tokens, [(row.at(int(data.positions[0])), source)])
            with torch.no_grad():
                got = interchange_logits(model, where, data.positions, data.base, data.source, everything)
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4, msg=f"{row} @ {role}")


def test_sites_and_dims_are_checked():
    with pytest.raises(ValueError, match="KIND:LAYER@ROLE"):
        DasSite.parse("attn_out:0")
    with pytest.raises(ValueError, match="unknown role"):
        DasSite.parse("attn_out:0@noise")
    with pytest.raises(ValueError, match="d_model-wide stream point"):
        das(scalar_composer(), TASK, sites=["z:0:head=0@key"], **SMALL)
    with pytest.raises(ValueError, match="unknown causal variable"):
        das(scalar_composer(), TASK, variables=("x",), **SMALL)


# ---- against TransformerLens 4's fit_das ------------------------------------------------------
TL4_PYTHON = Path(os.environ.get("ANCHOR_INTERP_TL4_PYTHON", Path(__file__).parents[1] / ".venv-tl4" / "bin" / "python"))
TL4_SCRIPT = Path(__file__).with_name("tl4_fit_das.py")


def _tl4_available() -> bool:
    if not TL4_PYTHON.exists():
        return False
    check = "import transformer_lens.tools.analysis.interchange as m; m.fit_das"
    return subprocess.run([str(TL4_PYTHON), "-c", check], capture_output=True).returncode == 0


@pytest.mark.skipif(not _tl4_available(), reason=f"needs TransformerLens 4 in {TL4_PYTHON} (set ANCHOR_INTERP_TL4_PYTHON)")
def test_fit_basis_matches_transformer_lens_4_fit_das(tmp_path):
    """The same toy network, pairs, targets, seed and budget through our fit_basis here and
    TransformerLens 4's fit_das in its own environment: the same basis comes out."""
    sys.path.insert(0, str(TL4_SCRIPT.parent))
    from tl4_fit_das import toy_problem, toy_logits

    problem = toy_problem()
    torch.save(problem, tmp_path / "problem.pt")
    done = subprocess.run([str(TL4_PYTHON), str(TL4_SCRIPT), str(tmp_path / "problem.pt"), str(tmp_path / "theirs.pt")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    theirs = torch.load(tmp_path / "theirs.pt")
    source_hidden = toy_logits(problem, problem["source"], hidden_only=True)  # [pair, d]

    def run(basis, batch):
        return toy_logits(problem, problem["base"][batch], patch=lambda h: interchange(h, source_hidden[batch], basis))

    ours = fit_basis(run, problem["targets"], problem["d"], problem["rank"], problem["epochs"], problem["batch_size"], problem["lr"], problem["seed"])
    torch.testing.assert_close(ours, theirs["basis"], rtol=0, atol=1e-4)
    assert theirs["accuracy"] >= 0.9  # and the basis does the job


def test_cli_prints_the_summary_as_the_last_line_of_json(tmp_path, capsys):
    import json

    from handmade import composer, save
    from interp.cli import main

    save(scalar_composer(), tmp_path / "scalar")
    out = tmp_path / "das.html"
    assert main(["probe", "das", str(tmp_path / "scalar"), "--site", "mlp_out:0@anchor1", "--dims", "1,2", "-n", "96", "--json", "--quiet", "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["site"] == "L0 mlp_out @ anchor1" and summary["dims"] in (1, 2) and 0 <= summary["iia"] <= 1
    assert {"lookup_iia", "lookup_site", "train_iia"} <= set(summary) and out.is_file()
    save(composer(), tmp_path / "composer")
    assert main(["probe", "paths", str(tmp_path / "composer"), "-n", "32", "--json", "--quiet", "--out", str(tmp_path / "paths.html")]) == 0
    paths = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(paths) == {"change_key", "change_anchors"} and paths["change_key"]["routes"]["via the anchor positions"] > 0.9
    assert (tmp_path / "paths.html").is_file()
    assert main(["probe", "order", str(tmp_path / "composer"), "--json", "--quiet"]) == 2  # --json is for das and paths
    assert main(["probe", "das", str(tmp_path / "scalar"), "--site", "mlp_out:0"]) == 2
