"""Model construction (the gamma rule), checkpoints and their failure modes."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

import models
from models import hooked
from models.task import AnchorTask

import reference_logits

TOKENS = AnchorTask().grid([(1, 2), (4, 3)], "any").tokens[:256]


@pytest.mark.parametrize("gamma", [0.3, 0.8])
def test_every_weight_matrix_follows_the_gamma_rule(gamma):
    model = models.build(gamma, n_layers=3, seed=0, d_model=96, d_head=48, n_heads=2, d_mlp=200)
    cfg = model.cfg
    fan_in = {"W_E": 96, "W_pos": 96, "W_Q": 96, "W_K": 96, "W_V": 96, "W_O": 2 * 48, "W_in": 96, "W_out": 200, "W_U": 96}
    seen = set()
    for name, param in hooked.tl_params(model).items():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in fan_in:
            seen.add(leaf)
            expected = fan_in[leaf] ** -gamma
            assert param.std().item() == pytest.approx(expected, rel=0.15 if param.numel() < 2000 else 0.05), name
            assert abs(param.mean().item()) < 4 * expected / param.numel() ** 0.5, name
        elif leaf.startswith("b") or leaf == "b":
            assert torch.all(param == 0), name
        elif leaf == "w":
            assert torch.all(param == 1), name
        else:
            pytest.fail(f"parameter {name} has no rule")
    assert seen == set(fan_in)
    assert cfg.n_layers == 3 and cfg.d_vocab == 201 and cfg.n_ctx == 9
    assert all(not p.requires_grad for n, p in hooked.tl_params(model).items() if n.rsplit(".", 1)[-1] in hooked.BIAS_NAMES)


def test_build_is_seeded():
    a, b = models.build(0.5, seed=3), models.build(0.5, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(hooked.tl_state_dict(a).values(), hooked.tl_state_dict(b).values()))
    assert not torch.equal(a.embed.W_E, models.build(0.5, seed=4).embed.W_E)


@pytest.mark.parametrize("gamma", [0, -1, 10, float("nan"), "0.5"])
def test_absurd_gamma_is_refused(gamma):
    with pytest.raises(ValueError, match="gamma"):
        models.build(gamma)


def _save(model, path, **card):
    cfg = hooked.hooked_config(n_layers=model.cfg.n_layers)
    return hooked.save(model, path, {"recipe": {}, "seed": 0, **card}, cfg)


def test_save_load_round_trip_gives_identical_logits(tmp_path):
    model = models.build(0.5, seed=1)
    _save(model, tmp_path / "ckpt")
    loaded = models.load(tmp_path / "ckpt")
    assert torch.equal(model(TOKENS), loaded(TOKENS))
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["card.json", "config.json", "model.safetensors", "tokenizer.json"]
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir()), "no temporary folder left behind"


def test_checkpoint_loads_without_our_package(tmp_path):
    model = models.build(0.5, seed=2)
    _save(model, tmp_path / "ckpt")
    torch.save(TOKENS, tmp_path / "tokens.pt")
    torch.save(model(TOKENS), tmp_path / "logits.pt")
    script = f"""
import json, sys, torch, warnings
sys.path = [p for p in sys.path if p not in ('', {str(hooked.ZOO.parent.parent)!r})]
warnings.simplefilter('ignore')
from safetensors.torch import load_file
d = {str(tmp_path / 'ckpt')!r}
config, state = json.load(open(d + '/config.json')), load_file(d + '/model.safetensors')
if {hooked.TL4}:  # the recipe the README gives for TransformerLens 4
    from transformer_lens import TransformerBridge, TransformerBridgeConfig
    from transformer_lens.utilities.tl_checkpoint_conversion import convert_tl_checkpoint
    cfg = TransformerBridgeConfig(**config)
    model = TransformerBridge.boot_native(cfg)
    model.load_state_dict(convert_tl_checkpoint({{k: v for k, v in state.items() if not k.endswith(('.mask', '.IGNORE'))}}, cfg))
else:
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    model = HookedTransformer(HookedTransformerConfig(**config))
    model.load_state_dict(state)
assert 'models' not in sys.modules and 'interp' not in sys.modules
logits = model(torch.load({str(tmp_path / 'tokens.pt')!r}))
assert torch.allclose(logits, torch.load({str(tmp_path / 'logits.pt')!r}), atol=1e-5)
print('ok')
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_missing_checkpoint_is_named(tmp_path):
    with pytest.raises(models.CheckpointError, match="no checkpoint folder"):
        models.load(tmp_path / "nothing")
    with pytest.raises(models.CheckpointError, match="shipped models"):
        models.load("no-such-model")


def test_truncated_weights_are_refused(tmp_path):
    path = _save(models.build(0.5), tmp_path / "ckpt")
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(models.CheckpointError, match="truncated or corrupt"):
        models.load(path)


def test_truncated_config_is_refused(tmp_path):
    path = _save(models.build(0.5), tmp_path / "ckpt")
    text = (path / "config.json").read_text()
    (path / "config.json").write_text(text[: len(text) // 2])
    with pytest.raises(models.CheckpointError, match="not valid JSON"):
        models.load(path)


def test_missing_weights_are_refused(tmp_path):
    path = _save(models.build(0.5), tmp_path / "ckpt")
    (path / "model.safetensors").unlink()
    with pytest.raises(models.CheckpointError, match="missing"):
        models.load(path)


def test_weights_from_another_config_are_refused(tmp_path):
    path = _save(models.build(0.5), tmp_path / "ckpt")
    other = _save(models.build(0.5, d_model=64, d_head=32, d_mlp=128), tmp_path / "other")
    shutil.copy(other / "model.safetensors", path / "model.safetensors")
    with pytest.raises(models.CheckpointError, match="does not match config.json"):
        models.load(path)
    deeper = _save(models.build(0.5, n_layers=3), tmp_path / "deeper")
    shutil.copy(deeper / "model.safetensors", path / "model.safetensors")
    with pytest.raises(models.CheckpointError, match="unexpected"):
        models.load(path)


def test_invalid_config_is_refused(tmp_path):
    path = _save(models.build(0.5), tmp_path / "ckpt")
    cfg = json.loads((path / "config.json").read_text())
    cfg["no_such_setting"] = 1
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(models.CheckpointError, match=f"not a valid {hooked.LensConfig.__name__}"):
        models.load(path)


def test_output_folder_holding_another_model_is_refused_unless_overwrite(tmp_path):
    first = models.build(0.5, seed=1)
    _save(first, tmp_path / "ckpt", command="first")
    with pytest.raises(FileExistsError, match="different model"):
        _save(models.build(0.5, seed=2), tmp_path / "ckpt", seed=2)
    assert torch.equal(models.load(tmp_path / "ckpt")(TOKENS), first(TOKENS)), "refusal leaves the old model intact"
    second = models.build(0.5, seed=2)
    hooked.save(second, tmp_path / "ckpt", {"recipe": {}, "seed": 2}, hooked.hooked_config(), overwrite=True)
    assert torch.equal(models.load(tmp_path / "ckpt")(TOKENS), second(TOKENS))


def test_folder_with_foreign_files_is_refused(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds no checkpoint"):
        _save(models.build(0.5), tmp_path / "ckpt")
    assert (tmp_path / "ckpt" / "notes.txt").read_text() == "mine"


def test_a_crash_while_saving_leaves_the_old_checkpoint(tmp_path, monkeypatch):
    first = models.build(0.5, seed=1)
    _save(first, tmp_path / "ckpt")

    def explode(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(hooked, "_write_json", explode)
    with pytest.raises(RuntimeError, match="disk full"):
        hooked.save(models.build(0.5, seed=2), tmp_path / "ckpt", {"recipe": {}, "seed": 2}, hooked.hooked_config(), overwrite=True)
    assert torch.equal(models.load(tmp_path / "ckpt")(TOKENS), first(TOKENS))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_model_that_does_not_fit_the_task_is_refused():
    with pytest.raises(ValueError, match="does not match the task"):
        hooked.check_model_fits_task(models.build(0.5, n_ctx=12), AnchorTask())


def test_checkpoint_gets_normal_permissions(tmp_path):
    import os
    import stat

    out = _save(models.build(0.5), tmp_path / "ckpt")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == dict.fromkeys(
        ["card.json", "config.json", "model.safetensors", "tokenizer.json"], 0o666 & ~umask)


def test_a_symlinked_checkpoint_folder_is_written_through(tmp_path):
    real = _save(models.build(0.5, seed=1), tmp_path / "real")
    (tmp_path / "link").symlink_to(real)
    second = models.build(0.5, seed=2)
    hooked.save(second, tmp_path / "link", {"recipe": {}, "seed": 2}, hooked.hooked_config(), overwrite=True)
    assert (tmp_path / "link").is_symlink()
    assert torch.equal(models.load(real)(TOKENS), second(TOKENS))


def test_an_overwrite_interrupted_between_its_renames_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    from pathlib import Path

    first = models.build(0.5, seed=1)
    out = _save(first, tmp_path / "ckpt")
    rename = Path.rename

    def interrupted(self, target):  # Ctrl-C right after the old checkpoint was moved aside
        if self.name.startswith(".ckpt.") and not self.name.endswith(".old"):
            raise KeyboardInterrupt
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", interrupted)
    with pytest.raises(KeyboardInterrupt):
        hooked.save(models.build(0.5, seed=2), out, {"recipe": {}, "seed": 2}, hooked.hooked_config(), overwrite=True)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
    assert torch.equal(models.load(out)(TOKENS), first(TOKENS))

    # kill -9 at the same point leaves only the hidden old folder: the next load puts it back.
    out.rename(tmp_path / ".ckpt.old")
    assert torch.equal(models.load(out)(TOKENS), first(TOKENS))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_same_recipe_with_another_thread_count_is_not_silently_overwritten(tmp_path):
    _save(models.build(0.5, seed=1), tmp_path / "ckpt", threads=1)
    _save(models.build(0.5, seed=1), tmp_path / "ckpt", threads=1)  # the same run again: fine
    with pytest.raises(FileExistsError, match="made with 1 torch threads, not 2"):
        _save(models.build(0.5, seed=1), tmp_path / "ckpt", threads=2)


@pytest.mark.parametrize(
    "card, message",
    [
        (None, "checkpoint file missing: .*card.json"),
        ({"task": [1]}, "'task' must be an object of AnchorTask settings"),
        ({"task": {"vocab_size": 201, "colour": 3}}, r"unknown task settings \['colour'\]"),
        ({"task": {"seq_len": 2}}, "invalid task: seq_len must be >= 3"),
        ([1, 2], "must hold a JSON object"),
    ],
)
def test_a_bad_or_missing_card_is_refused_at_load(tmp_path, card, message):
    out = _save(models.build(0.5), tmp_path / "ckpt")
    if card is None:
        (out / "card.json").unlink()
    else:
        (out / "card.json").write_text(json.dumps(card))
    for read in (models.load, hooked.task_of):
        with pytest.raises(models.CheckpointError, match=message):
            read(out)


@pytest.mark.parametrize(
    "arch, message",
    [
        (dict(d_model=0), "d_model must be a positive integer, got 0"),
        (dict(d_model=-8), "d_model must be a positive integer, got -8"),
        (dict(d_model=1e12), "d_model must be a positive integer, got 1000000000000.0"),
        (dict(d_model=10**7), "too large to build"),
        (dict(n_heads=0), "n_heads must be a positive integer"),
        (dict(act_fn="nonsense"), "act_fn=nonsense must be one of"),
    ],
)
def test_impossible_architectures_are_refused_before_building(arch, message):
    with pytest.raises(ValueError, match=message):
        hooked.hooked_config(**arch)


def test_a_seed_gives_the_transformer_lens_3_9_initial_weights():
    """Same draws in the same order on either line (tests/reference_logits.py holds 3.9's)."""
    torch.testing.assert_close(reference_logits.init_sums(), reference_logits.reference()["init_sums"], rtol=0, atol=1e-9)
