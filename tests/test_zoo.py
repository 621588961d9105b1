"""The shipped reference models: made by the repo's own train command, and meeting their
targets under an independent evaluation (probes.classify on a fresh grid of prompts), with
the validation distribution of their commands in their cards."""

import json
import shlex
from pathlib import Path

import pytest
import torch

import models
from interp import cli
from models import hooked
from models.sweep import results
from models.train import TrainConfig
from probes.solution import classify

import reference_logits

TARGETS = {"inferential": "inferential_test_keys", "symmetric": "symmetric_test_keys"}


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_shipped_model_meets_its_target(name):
    result = classify(models.load(name), models.hooked.task_of(name), n_noise=8)
    assert result.label == name
    assert getattr(result, TARGETS[name]) >= 0.95
    assert result.seen_test_keys >= 0.98 and result.seen_train_keys >= 0.98


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_card_names_the_command_that_made_it(name):
    card = models.card(name)
    args = cli.build_parser().parse_args(shlex.split(card["command"])[1:])
    assert shlex.split(card["command"])[:2] == ["anchor-interp", "train"]
    assert args.seed == card["seed"] and args.out == f"models/zoo/{name}"
    assert args.gamma == card["gamma"]
    # The command's settings are the recipe recorded beside it, and build this config.
    config = TrainConfig.from_recipe(card["recipe"], card["seed"])
    assert config.gamma == args.gamma and config.lr == args.lr and config.weight_decay == args.weight_decay
    assert hooked.read_json(hooked.resolve(name) / hooked.CONFIG_FILE) == config.hooked_config()
    assert card["wall_seconds"] > 0 and card["metrics"]["label"] == name
    assert card["init_std"]["embed.W_E"] == pytest.approx(config.hooked_config()["d_model"] ** -config.gamma)


def test_shipped_models_differ_only_where_the_recipe_says():
    inferential, symmetric = (models.card(n)["recipe"] for n in ("inferential", "symmetric"))
    differing = {k for k in inferential if inferential[k] != symmetric[k]}
    assert "gamma" in differing
    shared = models.load("inferential").cfg
    assert (shared.d_model, shared.n_layers) == (models.load("symmetric").cfg.d_model, models.load("symmetric").cfg.n_layers)


def test_shipped_models_answer_the_paper_example():
    # 23 1 2 ... -> 23 + 5 + 1 = 29, a trained pair with a train key.
    for name in TARGETS:
        logits = models.load(name)(models.AnchorTask().prompt("23 1 2 43 46 74 54 44 72").tokens)
        assert int(logits[0, -1].argmax()) == 29
        assert torch.isfinite(logits).all()


def validation_db() -> Path:
    """The database both cards' validation distributions were read from (one for the zoo)."""
    databases = {models.card(name)["validation"]["database"] for name in TARGETS}
    assert len(databases) == 1, databases
    return Path(models.__file__).parents[1] / databases.pop()


def test_the_validation_database_holds_the_shipped_commands_on_a_declared_validation_range():
    import tomllib

    from interp.seeds import PROTOCOL, seed_list

    _, rows = results(validation_db())
    recipes = {models.card(name)["gamma"]: TrainConfig.from_recipe(models.card(name)["recipe"], 0).recipe() for name in TARGETS}
    assert {r["gamma"] for r in rows} == set(recipes)
    ranges = [set(seed_list(name)) for name in tomllib.loads(PROTOCOL.read_text())["ranges"] if name.startswith("validation")]
    assert any({r["seed"] for r in rows} <= seeds for seeds in ranges)  # one declared range, never tuning seeds
    for row in rows:
        assert row["config"].recipe() == recipes[row["gamma"]], row["params"]


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_each_card_reports_the_validation_of_its_command(name):
    from interp.seeds import card_validation, seed_groups

    card = models.card(name)
    _, rows = results(validation_db())
    groups = seed_groups(rows, {card["gamma"]: name})
    expected = card_validation(card, groups, rows, card["validation"]["database"])
    assert card["validation"] == json.loads(json.dumps(expected))
    assert card["validation"]["solution"] == name and card["validation"]["runs"] >= 1


@pytest.mark.parametrize("name", reference_logits.NAMES)
def test_shipped_model_gives_the_transformer_lens_3_9_logits(name):
    """On either TransformerLens line, the logits TransformerLens 3.9 gave (tests/reference_logits.py)."""
    assert reference_logits.max_differences([name])[name] <= 1e-4


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_a_zoo_model_on_a_validation_seed_is_that_validation_run(name):
    """The zoo's seed is a validation seed (README "Which seed, and why"): training is
    deterministic, so the card's run is the database's run of that seed, step for step."""
    card = models.card(name)
    _, rows = results(validation_db())
    (row,) = [r for r in rows if r["seed"] == card["seed"] and r["gamma"] == card["gamma"]]
    assert row["steps"] == card["steps"] and row["threads"] == card["threads"]
    for key in ("seen_test_keys", "inferential_test_keys", "symmetric_test_keys", "inferential_by_position"):
        assert row["metrics"][key] == pytest.approx(card["metrics"][key]), key
