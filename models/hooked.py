"""The one place that builds TransformerLens models: config, gamma initialization, checkpoints.

Every other module gets its HookedTransformer from here, so moving to TransformerLens'
TransformerBridge later touches this file only.

Checkpoint folder (loads without this package too):
    config.json        kwargs for HookedTransformerConfig(**cfg)
    model.safetensors  HookedTransformer.state_dict()
    card.json          how it was made: command, seed, time, measured accuracies, gamma, std
"""

from __future__ import annotations

import dataclasses
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

from models.files import OutputPathError, check_folder, default_mode
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
    architecture from ARCH_DEFAULTS, anything else from `overrides`; checked (`check_arch`)
    before any model is built."""
    cfg = dict(ARCH_DEFAULTS, n_layers=n_layers, d_vocab=task.vocab_size, n_ctx=task.seq_len)
    cfg.update(overrides)
    check_arch(cfg)
    return cfg


MAX_PARAMS = 500_000_000  # ~2 GB of float32 weights, far beyond anything this task needs
_SIZES = ("n_layers", "d_model", "d_head", "n_heads", "d_mlp", "d_vocab", "n_ctx")


def check_arch(cfg: dict[str, Any]) -> None:
    """Refuse, with one line naming the setting, an architecture that cannot be built or
    cannot hold the task: sizes that are not positive integers, a vocabulary or context that
    an unknown activation, a model too large to build."""
    for name in _SIZES:
        value = cfg.get(name)
        if name == "d_mlp" and (value is None or cfg.get("attn_only")):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    try:
        with _quiet_deprecation():
            checked = HookedTransformerConfig(**cfg)
    except (AssertionError, TypeError, ValueError) as err:
        raise ValueError(f"invalid architecture: {err}") from None
    n_params = checked.n_params + 2 * cfg["d_vocab"] * cfg["d_model"] + cfg["n_ctx"] * cfg["d_model"]
    if n_params > MAX_PARAMS:
        raise ValueError(f"the architecture has {n_params:.3g} weights (more than {MAX_PARAMS:.0e}): too large to build here")


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
        # On CPU unless the config says otherwise: left unset, TransformerLens picks the GPU
        # when there is one and then sends every input there, while these weights stay here.
        # `model.to("cuda")` moves a model and its config together.
        return HookedTransformer(HookedTransformerConfig(**{"device": "cpu", **cfg}), move_to_device=False)


# ---- checkpoints ------------------------------------------------------------------------
def save(model: HookedTransformer, out: str | os.PathLike, card: dict[str, Any], config: dict[str, Any], overwrite: bool = False) -> Path:
    """Write a checkpoint folder atomically: everything goes to a temporary sibling folder
    that replaces `out` by renames, so a crash never leaves half a checkpoint. Replacing an
    old checkpoint moves it aside to `.NAME.old` first; if the process dies between the two
    renames, the old checkpoint is moved back by the next `save`, `load` or `resolve`. A
    symlinked `out` is followed (the link stays). Folder and files get the umask's
    permissions."""
    out = _real_folder(Path(out))
    _check_out_dir(out, config, card, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    old = _old_of(out)
    moved = False
    try:
        os.chmod(tmp, default_mode("folder"))  # mkdtemp makes it private
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE))
        os.chmod(tmp / WEIGHTS_FILE, default_mode())
        _write_json(tmp / CONFIG_FILE, config)
        _write_json(tmp / CARD_FILE, card)
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            moved = True
            tmp.rename(out)
            shutil.rmtree(old)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if moved:
            _recover(out)
        raise
    return out


def _real_folder(out: Path) -> Path:
    """`out` with symlinks followed (a link to a checkpoint folder is written through), after
    putting back an old checkpoint a crash left aside."""
    out = Path(os.path.realpath(out))
    _recover(out)
    return out


def _old_of(out: Path) -> Path:
    return out.with_name(f".{out.name}.old")


def _recover(out: Path) -> None:
    """If a `save` died between moving the old checkpoint aside and moving the new one in,
    only `.NAME.old` is left: move it back."""
    old = _old_of(out)
    if old.is_dir() and not os.path.lexists(out):
        old.rename(out)


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _check_out_dir(out: Path, config: dict, card: dict, overwrite: bool) -> None:
    """Refuse, before any work, a checkpoint folder that cannot be written (a file, a parent
    that is a file, no permission) or that holds another model: another config, recipe,
    seed or torch thread count (the thread count changes the float summation order, hence
    the weights)."""
    out = _real_folder(out)
    check_folder(out.parent)
    if out.exists() and not out.is_dir():
        raise OutputPathError(f"{out} exists and is not a folder")
    if not out.exists() or overwrite:
        return
    if not any(out.iterdir()):
        return
    try:
        old_config, old_card = read_json(out / CONFIG_FILE), read_json(out / CARD_FILE)
    except (CheckpointError, OSError):
        raise FileExistsError(f"{out} is not empty and holds no checkpoint of ours; pass overwrite to replace it") from None
    same_recipe = old_config == config and all(old_card.get(k) == card.get(k) for k in ("recipe", "seed"))
    other_threads = "threads" in card and old_card.get("threads") != card["threads"]
    if not same_recipe or other_threads:
        why = (f" (same recipe and seed, but made with {old_card.get('threads')} torch threads, not {card['threads']}: "
               "the weights differ)") if same_recipe else ""
        raise FileExistsError(
            f"{out} already holds a different model ({old_card.get('command', 'unknown command')}){why}; "
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
    _recover(path)
    if not path.is_dir():
        shipped = sorted(p.name for p in ZOO.iterdir() if p.is_dir()) if ZOO.is_dir() else []
        raise CheckpointError(f"no checkpoint folder at {name_or_path!r} (shipped models: {', '.join(shipped) or 'none'})")
    return path


def load(name_or_path: str | os.PathLike) -> HookedTransformer:
    """A checkpoint as a HookedTransformer, checked against its config; its card (which
    names the task) is checked too, so a folder that `classify` or `report` would trip on
    is refused here."""
    path = resolve(name_or_path)
    config = read_json(path / CONFIG_FILE)
    task_of(path)
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
    """A checkpoint's card, checked: a JSON object whose `task`, if any, is a valid AnchorTask."""
    path = resolve(name_or_path) / CARD_FILE
    if not path.is_file():
        raise CheckpointError(f"checkpoint file missing: {path} (a checkpoint folder holds {CONFIG_FILE}, {WEIGHTS_FILE} "
                              f"and {CARD_FILE}, whose 'task' says which task the model was trained on)")
    info = read_json(path)
    if not isinstance(info, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(info).__name__}")
    if "task" in info:
        _task_from_card(info["task"], path)
    return info


def _task_from_card(task: Any, path: Path) -> AnchorTask:
    known = {f.name for f in dataclasses.fields(AnchorTask)}
    if not isinstance(task, dict):
        raise CheckpointError(f"{path}: 'task' must be an object of AnchorTask settings ({', '.join(sorted(known))}), got {task!r}")
    unknown = sorted(set(task) - known)
    if unknown:
        raise CheckpointError(f"{path}: unknown task settings {unknown} (known: {', '.join(sorted(known))})")
    try:
        return AnchorTask.from_dict(task)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: invalid task: {err}") from None


def task_of(name_or_path: str | os.PathLike) -> AnchorTask:
    """The task a checkpoint was trained on (from its card), or the paper's default."""
    info = card(name_or_path)
    return _task_from_card(info["task"], resolve(name_or_path) / CARD_FILE) if "task" in info else AnchorTask()


def check_model_fits_task(model: HookedTransformer | dict[str, Any], task: AnchorTask) -> None:
    """Refuse a model (or HookedTransformerConfig kwargs) whose context or vocabulary cannot
    hold the task's prompts."""
    n_ctx, d_vocab = (model["n_ctx"], model["d_vocab"]) if isinstance(model, dict) else (model.cfg.n_ctx, model.cfg.d_vocab)
    if n_ctx != task.seq_len or d_vocab < task.vocab_size:
        raise ValueError(
            f"model (n_ctx {n_ctx}, d_vocab {d_vocab}) does not match the task "
            f"(seq_len {task.seq_len}, vocab_size {task.vocab_size}): it needs n_ctx {task.seq_len} and d_vocab >= {task.vocab_size}"
        )
