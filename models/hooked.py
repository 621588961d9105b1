"""The one place that builds TransformerLens models: config, gamma initialization, checkpoints.

Both TransformerLens lines are supported, and this module is the only one that knows which
is installed:
- 3.9: models are `HookedTransformer`s;
- 4.x (which removed HookedTransformer): models are `TransformerBridge`s booted natively
  (`TransformerBridge.boot_native(TransformerBridgeConfig(**cfg))`) from the same config.
Hook names, `run_with_cache`, `run_with_hooks`, `cfg` and the `W_Q`/`W_E`/... weight
properties are the same on both. What differs is where the parameters live (the bridge's are
nn.Linear-shaped, under other names), so everything that reads or writes weights by name goes
through `tl_params` / `tl_state_dict` / `load_tl_state`, which speak HookedTransformer's names
and shapes on both lines.

Checkpoint folder (loads without this package too, on either line):
    config.json        kwargs for HookedTransformerConfig(**cfg) / TransformerBridgeConfig(**cfg)
    model.safetensors  HookedTransformer.state_dict() (TransformerLens 4 converts it on load:
                       transformer_lens.utilities.tl_checkpoint_conversion.convert_tl_checkpoint)
    tokenizer.json     the task's word-level tokenizer (models.tokenizer)
    card.json          how it was made: command, seed, time, measured accuracies, gamma, std
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import os
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from importlib.metadata import version
from typing import Any, Sequence, Union

import torch
from jaxtyping import Float, Int
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

TL_VERSION = version("transformer_lens")
TL4 = int(TL_VERSION.split(".")[0]) >= 4  # 4.0 removed HookedTransformer for TransformerBridge

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # transformers' import-time chatter is not ours to show
    if TL4:
        from transformer_lens import TransformerBridge
        from transformer_lens.config import TransformerBridgeConfig as LensConfig
        # the activations boot_native accepts (4.3 keeps the table private; its config checks none)
        from transformer_lens.model_bridge.sources.native.model import _ACTIVATIONS as NATIVE_ACTIVATIONS
        from transformer_lens.utilities.tl_checkpoint_conversion import convert_tl_checkpoint
    else:
        from transformer_lens import HookedTransformer
        from transformer_lens import HookedTransformerConfig as LensConfig

from models.files import OutputPathError, check_folder, default_mode
from models.task import AnchorTask
from models.tokenizer import TOKENIZER_FILE, AnchorTokenizer, load_tokenizer, save_tokenizer, task_tokenizer

# What `build` and `load` return: a HookedTransformer on TransformerLens 3.9, a
# TransformerBridge on 4.x. Use it for annotations; code that needs to tell them apart
# belongs in this module.
Model = Union["TransformerBridge", "HookedTransformer"]

ZOO = Path(__file__).parent / "zoo"
CONFIG_FILE, WEIGHTS_FILE, CARD_FILE = "config.json", "model.safetensors", "card.json"

# Architecture defaults: the paper's model (1 head, MLP 3x, ReLU, learned positions, no
# biases) at a width that trains in minutes on 2 CPU cores. Pre-LN is what HookedTransformer
# and 4.x's native bridge have (the paper's is post-LN; its follow-up used pre-LN too).
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


def config_fields() -> set[str]:
    """The settings a model config accepts (HookedTransformerConfig's or TransformerBridgeConfig's)."""
    inits = [vars(cls)["__init__"] for cls in LensConfig.__mro__ if "__init__" in vars(cls)]  # 4.x: d_mlp is the base's
    return {name for init in inits for name in inspect.signature(init).parameters} - {"self", "args", "kwargs"}


def hooked_config(task: AnchorTask = AnchorTask(), n_layers: int = 2, **overrides) -> dict[str, Any]:
    """JSON-able kwargs for the model config (either line): vocabulary and context from the task,
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
    n_params = _n_weights(cfg)
    if n_params > MAX_PARAMS:
        raise ValueError(f"the architecture has {n_params:.3g} weights (more than {MAX_PARAMS:.0e}): too large to build here")
    if TL4 and cfg.get("act_fn") not in NATIVE_ACTIVATIONS:  # 3.9's config checks this itself; 4.x's fails only at boot
        raise ValueError(f"invalid architecture: act_fn={cfg.get('act_fn')} must be one of {sorted(NATIVE_ACTIVATIONS)}")
    try:
        with _quiet_deprecation():
            LensConfig(**cfg)
    except (AssertionError, TypeError, ValueError) as err:
        raise ValueError(f"invalid architecture: {err}") from None


def _n_weights(cfg: dict[str, Any]) -> int:
    """Weights of a standard block stack plus embeddings and unembedding: a size guard, so
    the same on both TransformerLens lines (4.x's config does not count them)."""
    d_model, n_layers = cfg["d_model"], cfg["n_layers"]
    attention = 4 * d_model * cfg["d_head"] * cfg["n_heads"]
    mlp = 0 if cfg.get("attn_only") else 2 * d_model * (cfg.get("d_mlp") or 4 * d_model)
    return n_layers * (attention + mlp) + 2 * cfg["d_vocab"] * d_model + cfg["n_ctx"] * d_model


def fan_in(name: str, param: torch.Tensor, cfg: Any) -> int:
    """True fan-in of a weight matrix (HookedTransformer name): the size of the vector it multiplies."""
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


# ---- parameters under HookedTransformer's names, on either line ------------------------
# HookedTransformer's parameter order inside a block. The gamma init draws the weight
# matrices in this order on both lines, so a seed gives the same initial weights on each.
_BLOCK_ORDER = ("ln1.w", "ln1.b", "ln2.w", "ln2.b", "attn.W_Q", "attn.W_O", "attn.b_Q", "attn.b_O",
                "attn.W_K", "attn.W_V", "attn.b_K", "attn.b_V", "mlp.W_in", "mlp.b_in", "mlp.W_out", "mlp.b_out")
_TOP_ORDER = ("embed.W_E", "pos_embed.W_pos", "blocks", "ln_final.w", "ln_final.b", "unembed.W_U", "unembed.b_U")


def _order_key(name: str) -> tuple:
    if name.startswith("blocks."):
        _, layer, rest = name.split(".", 2)
        return (_TOP_ORDER.index("blocks"), int(layer), _BLOCK_ORDER.index(rest) if rest in _BLOCK_ORDER else len(_BLOCK_ORDER), rest)
    return (_TOP_ORDER.index(name) if name in _TOP_ORDER else len(_TOP_ORDER), 0, 0, name)


def tl_params(model: Model) -> dict[str, torch.Tensor]:
    """Every parameter under its HookedTransformer name and shape ("blocks.0.attn.W_Q":
    [head, d_model, d_head], ...), in HookedTransformer's order. On 3.9 these are the
    parameters themselves; on 4.x they are differentiable views of the bridge's parameters
    (a gradient through them lands on the parameter the optimizer updates)."""
    params = dict(model.get_params()) if TL4 else dict(model.named_parameters())
    if TL4:  # get_params zero-fills biases a component lacks; only the bridge's own tensors here
        own = _bridge_tensors(model, params)
        params = {name: t for name, t in params.items() if name in own}
    return {name: params[name] for name in sorted(params, key=_order_key)}


def _bridge_tensors(model: Model, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HookedTransformer name -> the bridge parameter (or buffer: 4.x keeps the unembedding
    bias as one) behind it, for the names in `params` that have one (4.x)."""
    own = model.state_dict(keep_vars=True)  # keep_vars: the tensors themselves, not detached copies
    keys = {name: next(iter(convert_tl_checkpoint({name: torch.empty(t.shape)}, model.cfg))) for name, t in params.items()}
    return {name: own[key] for name, key in keys.items() if key in own}


def tl_state_dict(model: Model) -> dict[str, torch.Tensor]:
    """The checkpoint format: HookedTransformer.state_dict(), on either line (4.x adds the
    attention buffers 3.9 keeps in it, so a 4.x checkpoint loads into a HookedTransformer)."""
    if not TL4:
        return {name: t.detach() for name, t in model.state_dict().items()}
    state = {name: t.detach().clone() for name, t in model.get_params().items()}
    for layer in range(model.cfg.n_layers):  # HookedTransformer's lazily built mask, and its -inf
        state[f"blocks.{layer}.attn.mask"] = torch.zeros((0, 0), dtype=torch.bool)
        state[f"blocks.{layer}.attn.IGNORE"] = torch.tensor(float("-inf"))
    return {name: state[name] for name in sorted(state, key=_order_key)}


_BUFFERS = (".attn.mask", ".attn.IGNORE")  # HookedTransformer buffers; the bridge rebuilds its own


def load_tl_state(model: Model, state: dict[str, torch.Tensor]) -> None:
    """Load a HookedTransformer state dict (a checkpoint, or new weights) into the model."""
    if not TL4:
        model.load_state_dict(state)
        return
    weights = {name: t for name, t in state.items() if not name.endswith(_BUFFERS)}
    model.load_state_dict(convert_tl_checkpoint(weights, model.cfg), strict=True)


def weight_names(model: Model) -> list[str]:
    """Every weight matrix the gamma rule applies to (HookedTransformer names)."""
    return [n for n in tl_params(model) if n.rsplit(".", 1)[-1].startswith("W_")]


def init_stds(model: Model, gamma: float) -> dict[str, float]:
    """The init std of every weight matrix, fan_in^-gamma (HookedTransformer names)."""
    params = tl_params(model)
    return {name: fan_in(name, params[name], model.cfg) ** -gamma for name in weight_names(model)}


def build(gamma: float, n_layers: int = 2, seed: int = 0, task: AnchorTask = AnchorTask(), **overrides) -> Model:
    """A model for `task` whose every weight matrix is drawn from N(0, fan_in^(-2 gamma)),
    biases zero (and frozen: the paper's model has none), LayerNorm weights one. The same
    seed gives the same weights on both TransformerLens lines."""
    check_gamma(gamma)
    model = from_config(hooked_config(task, n_layers, **overrides), task)
    generator = torch.Generator().manual_seed(seed)
    initial = {}
    for name, param in tl_params(model).items():
        leaf = name.rsplit(".", 1)[-1]
        if leaf.startswith("W_"):
            initial[name] = torch.randn(param.shape, generator=generator) * fan_in(name, param, model.cfg) ** -gamma
        elif leaf in BIAS_NAMES or leaf == "b":  # b: LayerNorm bias
            initial[name] = torch.zeros(param.shape)
        elif leaf == "w":  # LayerNorm weight
            initial[name] = torch.ones(param.shape)
        else:
            raise KeyError(f"no initialization rule for parameter {name}")
    load_tl_state(model, {**tl_state_dict(model), **initial})
    freeze_biases(model)
    return model


def check_gamma(gamma: float) -> None:
    lo, hi = GAMMA_RANGE
    if not isinstance(gamma, (int, float)) or not math.isfinite(gamma) or not lo <= gamma <= hi:
        raise ValueError(f"gamma must be a number in [{lo}, {hi}] (std = fan_in^-gamma), got {gamma!r}")


def freeze_biases(model: Model) -> None:
    params = tl_params(model)
    own = _bridge_tensors(model, params) if TL4 else params  # on 4.x, the parameters behind the views
    for name in params:
        if name.rsplit(".", 1)[-1] in BIAS_NAMES:
            own[name].requires_grad_(False)


def from_config(cfg: dict[str, Any], task: AnchorTask = AnchorTask(), tokenizer: AnchorTokenizer | None = None) -> Model:
    """An untrained model from config kwargs (TransformerLens' own init): a HookedTransformer
    on 3.9, a natively booted TransformerBridge on 4.x, with `tokenizer` (default: the
    task's) set the way each line sets one up. Prompts get no BOS (the task has none)."""
    tokenizer = task_tokenizer(task) if tokenizer is None else tokenizer
    # On CPU unless the config says otherwise: left unset, TransformerLens picks the GPU
    # when there is one and then sends every input there, while these weights stay here.
    # `model.to("cuda")` moves a model and its config together.
    cfg = {"device": "cpu", **cfg}
    if TL4:
        # set at boot, once: reassigning a bridge's tokenizer re-runs its set-up, which
        # would reload this one by name from the Hugging Face hub
        model = TransformerBridge.boot_native(LensConfig(**cfg), tokenizer=tokenizer)
        if model.cfg.use_attn_scale and model.cfg.attn_scale <= 0:
            # 4.x's "-1: sqrt(d_head)" sentinel, written out as 3.9 has it: the fused
            # training forward reads cfg.attn_scale
            model.cfg.attn_scale = model.cfg.d_head**0.5
    else:
        with _quiet_deprecation():
            model = HookedTransformer(LensConfig(**cfg), move_to_device=False)
        model.set_tokenizer(tokenizer)
    model.cfg.default_prepend_bos = False
    return model


def from_weights(cfg: dict[str, Any], weights: dict[str, torch.Tensor], task: AnchorTask = AnchorTask()) -> Model:
    """A model from config kwargs and HookedTransformer-format weights (`tl_state_dict`),
    biases frozen as `build` leaves them."""
    model = from_config(cfg, task)
    load_tl_state(model, weights)
    freeze_biases(model)
    return model


def is_hooked_transformer(model: Model) -> bool:
    """A TransformerLens 3.x HookedTransformer, whose blocks code may call directly (a 4.x
    bridge's blocks take other arguments)."""
    return not TL4 and isinstance(model, HookedTransformer)


def final_residual(
    model: Model,
    inputs: Int[Tensor, "batch pos"] | Float[Tensor, "batch pos d_model"],
    fwd_hooks: Sequence[tuple[str, Any]] = (),
    start_at_layer: int | None = None,
) -> Float[Tensor, "batch pos d_model"]:
    """The residual stream leaving the last block (before the final norm), with `fwd_hooks`
    applied and hooks removed afterwards even when the forward raises; `start_at_layer`
    makes `inputs` the residual entering that block. 3.9 stops at the last block
    (`stop_at_layer=n_layers`); 4.x runs to the end there, so the residual is read at the
    final norm's input instead."""
    if not TL4:
        return model.run_with_hooks(inputs, start_at_layer=start_at_layer, stop_at_layer=model.cfg.n_layers, fwd_hooks=list(fwd_hooks))
    captured = {}

    def keep(resid: Tensor, hook) -> None:
        captured["resid"] = resid

    where = "ln_final.hook_in" if "ln_final.hook_in" in model.hook_dict else "unembed.hook_in"
    model.run_with_hooks(inputs, start_at_layer=start_at_layer, fwd_hooks=[*_writable_resid_mid(fwd_hooks), (where, keep)], return_type=None)
    return captured["resid"]


def _writable_resid_mid(fwd_hooks: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """4.3's `blocks.L.hook_resid_mid` is a tap: it reads the stream, but what a hook returns
    there never reaches it (3.9's does; tests/test_hooks.py writes through every point on
    both lines). resid_mid = resid_pre + attn_out, so such a hook runs at `hook_attn_out`
    instead: it gets resid_pre + attn_out, and what it returns, less resid_pre, goes on as
    the attention output. Appended last, after any other hook at those points."""
    kept, moved = [], []
    for name, fn in fwd_hooks:
        block, _, point = name.rpartition(".")
        if point != "hook_resid_mid":
            kept.append((name, fn))
            continue
        pre: dict[str, Tensor] = {}

        def read_pre(resid: Tensor, hook, pre=pre) -> None:  # [batch, pos, d_model]
            pre["resid"] = resid

        def write_mid(attn_out: Tensor, hook, fn=fn, pre=pre) -> Tensor:
            mid = pre["resid"] + attn_out  # [batch, pos, d_model]
            patched = fn(mid, hook)
            return attn_out if patched is None else patched - pre["resid"]

        moved += [(f"{block}.hook_resid_pre", read_pre), (f"{block}.hook_attn_out", write_mid)]
    return kept + moved


# ---- checkpoints ------------------------------------------------------------------------
def save(model: Model, out: str | os.PathLike, card: dict[str, Any], config: dict[str, Any], overwrite: bool = False) -> Path:
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
        state = {k: v.contiguous() for k, v in tl_state_dict(model).items()}
        save_file(state, str(tmp / WEIGHTS_FILE))
        os.chmod(tmp / WEIGHTS_FILE, default_mode())
        save_tokenizer(model.tokenizer, tmp / TOKENIZER_FILE)
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


def load(name_or_path: str | os.PathLike) -> Model:
    """A checkpoint as a model (HookedTransformer or TransformerBridge, by the installed
    TransformerLens), checked against its config, with the checkpoint's tokenizer (the task's,
    for a folder saved before tokenizers were shipped); its card (which names the task) is
    checked too, so a folder that `classify` or `report` would trip on is refused here."""
    path = resolve(name_or_path)
    config = read_json(path / CONFIG_FILE)
    task = task_of(path)
    weights_path = path / WEIGHTS_FILE
    if not weights_path.is_file():
        raise CheckpointError(f"checkpoint file missing: {weights_path}")
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{weights_path} cannot be read (truncated or corrupt): {err}") from None
    try:
        tokenizer = load_tokenizer(path / TOKENIZER_FILE, task) if (path / TOKENIZER_FILE).is_file() else None
        model = from_config(config, task, tokenizer)
    except (TypeError, ValueError, AssertionError) as err:
        raise CheckpointError(f"{path / CONFIG_FILE} is not a valid {LensConfig.__name__}: {err}") from None
    expected = tl_state_dict(model)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [f"{k}: file {tuple(state[k].shape)} vs config {tuple(v.shape)}" for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{weights_path} does not match {CONFIG_FILE} (from another config?): "
            + "; ".join(filter(None, [missing and f"missing {missing[:5]}", unexpected and f"unexpected {unexpected[:5]}", "; ".join(wrong[:5])]))
        )
    load_tl_state(model, state)
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


def check_model_fits_task(model: Model | dict[str, Any], task: AnchorTask) -> None:
    """Refuse a model (or its config kwargs) whose context or vocabulary cannot
    hold the task's prompts."""
    n_ctx, d_vocab = (model["n_ctx"], model["d_vocab"]) if isinstance(model, dict) else (model.cfg.n_ctx, model.cfg.d_vocab)
    if n_ctx != task.seq_len or d_vocab < task.vocab_size:
        raise ValueError(
            f"model (n_ctx {n_ctx}, d_vocab {d_vocab}) does not match the task "
            f"(seq_len {task.seq_len}, vocab_size {task.vocab_size}): it needs n_ctx {task.seq_len} and d_vocab >= {task.vocab_size}"
        )
