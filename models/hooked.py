"""The one place that builds TransformerLens models: config, gamma initialization, checkpoints.

Every other module gets its HookedTransformer from here, so moving to TransformerLens'
TransformerBridge later touches this file only.

Checkpoint folder (loads without this package too):
    config.json        kwargs for HookedTransformerConfig(**cfg)
    model.safetensors  HookedTransformer.state_dict()
    card.json          how it was made: command, seed, time, measured accuracies, gamma, std
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # transformers' import-time chatter is not ours to show
    from transformer_lens import HookedTransformer, HookedTransformerConfig

from models.task import AnchorTask

ZOO = Path(__file__).parent / "zoo"
CONFIG_FILE, WEIGHTS_FILE, CARD_FILE = "config.json", "model.safetensors", "card.json"

# Architecture defaults: the paper's model (1 head, MLP 3x, ReLU, learned positions, no
# biases) at a width that trains in minutes on 2 CPU cores. Pre-LN is what
# HookedTransformer has (the paper's is post-LN; its follow-up used pre-LN too).
ARCH_DEFAULTS: dict[str, Any] = dict(
    d_model=128,
    n_heads=1,
    d_head=64,
    d_mlp=384,
    act_fn="relu",
    normalization_type="LN",
)
GAMMA_RANGE = (0.05, 3.0)  # outside this, std = fan_in^-gamma is ~1 or ~0: nothing trains
BIAS_NAMES = ("b_Q", "b_K", "b_V", "b_O", "b_in", "b_out", "b_U")


class CheckpointError(ValueError):
    """A checkpoint folder that is missing, truncated, or disagrees with itself."""


@contextmanager
def _quiet_deprecation():
    # TransformerLens 3.x deprecates HookedTransformer in favour of TransformerBridge; we
    # build it on purpose, so silence that warning here and only here.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*HookedTransformer.*deprecated", category=DeprecationWarning)
        yield


def hooked_config(task: AnchorTask = AnchorTask(), n_layers: int = 2, **overrides) -> dict[str, Any]:
    """JSON-able kwargs for HookedTransformerConfig: vocabulary and context from the task,
    architecture from ARCH_DEFAULTS, anything else from `overrides`."""
    cfg = dict(ARCH_DEFAULTS, n_layers=n_layers, d_vocab=task.vocab_size, n_ctx=task.seq_len)
    cfg.update(overrides)
    if cfg["n_layers"] < 1:
        raise ValueError(f"n_layers must be >= 1, got {cfg['n_layers']}")
    return cfg


def fan_in(name: str, param: torch.Tensor, cfg: HookedTransformerConfig) -> int:
    """True fan-in of a weight matrix: the size of the vector it multiplies."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf in ("W_E", "W_pos"):
        return cfg.d_model  # the paper's convention for embeddings
    if leaf == "W_O":
        return cfg.n_heads * cfg.d_head
    if leaf in ("W_Q", "W_K", "W_V", "W_in", "W_U"):
        return cfg.d_model
    if leaf == "W_out":
        return cfg.d_mlp
    raise KeyError(f"no fan-in rule for parameter {name}")


def weight_names(model: HookedTransformer) -> list[str]:
    """Every weight matrix the gamma rule applies to."""
    return [n for n, _ in model.named_parameters() if n.rsplit(".", 1)[-1].startswith("W_")]


def init_std(name: str, model: HookedTransformer, gamma: float) -> float:
    param = dict(model.named_parameters())[name]
    return fan_in(name, param, model.cfg) ** -gamma


def build(gamma: float, n_layers: int = 2, seed: int = 0, task: AnchorTask = AnchorTask(), **overrides) -> HookedTransformer:
    """A HookedTransformer for `task` whose every weight matrix is drawn from
    N(0, fan_in^(-2 gamma)), biases zero (and frozen: the paper's model has none),
    LayerNorm weights one."""
    check_gamma(gamma)
    model = from_config(hooked_config(task, n_layers, **overrides))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf.startswith("W_"):
                param.copy_(torch.randn(param.shape, generator=generator) * fan_in(name, param, model.cfg) ** -gamma)
            elif leaf in BIAS_NAMES or leaf == "b":  # b: LayerNorm bias
                param.zero_()
            elif leaf == "w":  # LayerNorm weight
                param.fill_(1.0)
            else:
                raise KeyError(f"no initialization rule for parameter {name}")
    freeze_biases(model)
    return model


def check_gamma(gamma: float) -> None:
    lo, hi = GAMMA_RANGE
    if not isinstance(gamma, (int, float)) or not math.isfinite(gamma) or not lo <= gamma <= hi:
        raise ValueError(f"gamma must be a number in [{lo}, {hi}] (std = fan_in^-gamma), got {gamma!r}")


def freeze_biases(model: HookedTransformer) -> None:
    for name, param in model.named_parameters():
        if name.rsplit(".", 1)[-1] in BIAS_NAMES:
            param.requires_grad_(False)


def from_config(cfg: dict[str, Any]) -> HookedTransformer:
    """An untrained HookedTransformer from config kwargs (TransformerLens' own init)."""
    with _quiet_deprecation():
        return HookedTransformer(HookedTransformerConfig(**cfg), move_to_device=False)


# ---- checkpoints ------------------------------------------------------------------------
def save(model: HookedTransformer, out: str | os.PathLike, card: dict[str, Any], config: dict[str, Any], overwrite: bool = False) -> Path:
    """Write a checkpoint folder atomically: everything goes to a temporary sibling folder
    that replaces `out` in one rename, so a crash never leaves half a checkpoint."""
    out = Path(out)
    _check_out_dir(out, config, card, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE))
        _write_json(tmp / CONFIG_FILE, config)
        _write_json(tmp / CARD_FILE, card)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _check_out_dir(out: Path, config: dict, card: dict, overwrite: bool) -> None:
    if not out.exists() or overwrite:
        return
    if not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    if not any(out.iterdir()):
        return
    try:
        old_config, old_card = read_json(out / CONFIG_FILE), read_json(out / CARD_FILE)
    except (CheckpointError, OSError):
        raise FileExistsError(f"{out} is not empty and holds no checkpoint of ours; pass overwrite to replace it") from None
    same = old_config == config and old_card.get("recipe") == card.get("recipe") and old_card.get("seed") == card.get("seed")
    if not same:
        raise FileExistsError(
            f"{out} already holds a different model ({old_card.get('command', 'unknown command')}); "
            "pass overwrite (--overwrite) to replace it"
        )


def read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(f"checkpoint file missing: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON (truncated?): {err}") from None


def resolve(name_or_path: str | os.PathLike) -> Path:
    """A shipped model's name ('inferential', 'symmetric') or a checkpoint folder."""
    path = Path(name_or_path)
    if not path.exists() and (ZOO / str(name_or_path)).is_dir():
        path = ZOO / str(name_or_path)
    if not path.is_dir():
        shipped = sorted(p.name for p in ZOO.iterdir() if p.is_dir()) if ZOO.is_dir() else []
        raise CheckpointError(f"no checkpoint folder at {name_or_path!r} (shipped models: {', '.join(shipped) or 'none'})")
    return path


def load(name_or_path: str | os.PathLike) -> HookedTransformer:
    """A checkpoint as a HookedTransformer, checked against its config."""
    path = resolve(name_or_path)
    config = read_json(path / CONFIG_FILE)
    weights_path = path / WEIGHTS_FILE
    if not weights_path.is_file():
        raise CheckpointError(f"checkpoint file missing: {weights_path}")
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{weights_path} cannot be read (truncated or corrupt): {err}") from None
    try:
        model = from_config(config)
    except (TypeError, ValueError, AssertionError) as err:
        raise CheckpointError(f"{path / CONFIG_FILE} is not a valid HookedTransformerConfig: {err}") from None
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [f"{k}: file {tuple(state[k].shape)} vs config {tuple(v.shape)}" for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{weights_path} does not match {CONFIG_FILE} (from another config?): "
            + "; ".join(filter(None, [missing and f"missing {missing[:5]}", unexpected and f"unexpected {unexpected[:5]}", "; ".join(wrong[:5])]))
        )
    model.load_state_dict(state)
    freeze_biases(model)
    model.eval()
    return model


def card(name_or_path: str | os.PathLike) -> dict[str, Any]:
    return read_json(resolve(name_or_path) / CARD_FILE)


def task_of(name_or_path: str | os.PathLike) -> AnchorTask:
    """The task a checkpoint was trained on (from its card), or the paper's default."""
    info = card(name_or_path)
    return AnchorTask.from_dict(info["task"]) if "task" in info else AnchorTask()


def check_model_fits_task(model: HookedTransformer, task: AnchorTask) -> None:
    """Refuse a model whose context or vocabulary cannot hold the task's prompts."""
    if model.cfg.n_ctx != task.seq_len or model.cfg.d_vocab < task.vocab_size:
        raise ValueError(
            f"model (n_ctx {model.cfg.n_ctx}, d_vocab {model.cfg.d_vocab}) does not match the task "
            f"(seq_len {task.seq_len}, vocab_size {task.vocab_size})"
        )
