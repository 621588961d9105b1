"""Two HookedTransformers wired by hand to solve the anchor task with a KNOWN mechanism, so the
causal probes can be checked against the answer they must find.

Both have 2 layers, no LayerNorm, one-hot residual sections and near-hard attention.

composer ("inferential"): layer 0 copies the key into the first anchor's position, whose MLP
    writes y = g(x; a1) there; layer 1 brings y and the second anchor to the last position,
    whose MLP answers g(y; a2). The trap pair (3,4) is handled by a flag "a1 is 3" that
    travels with y. So (4,3) -> x-10, and the intermediate y lives at (resid_mid 0, a1).
lookup ("symmetric"): layer 0 averages the two anchor tokens into an unordered bag at the last
    position and copies the key into the first anchor's position; layer 1 brings the key to
    the last position, whose MLP looks the answer up from (key, bag). (4,3) -> x-6.
"""

from __future__ import annotations

import torch

from models import hooked
from models.task import AnchorTask

# A small vocabulary keeps these wide one-hot models fast: keys 16..35, answers 0..45.
TASK = AnchorTask(vocab_size=48, key_min=16, key_max=35)
SHARP = 40.0  # attention logit of a wanted position; others get 0, so leakage is ~e^-40


class Layout:
    """Named slices of the residual stream."""

    def __init__(self, **sizes: int):
        self.start, at = {}, 0
        for name, size in sizes.items():
            self.start[name] = at
            at += size
        self.d_model = at

    def __getattr__(self, name: str) -> int:
        try:
            return self.__dict__["start"][name]
        except KeyError:
            raise AttributeError(name) from None


def _model(task: AnchorTask, layout: Layout, d_mlp: int, n_heads: int, d_head: int):
    cfg = hooked.hooked_config(task, n_layers=2, d_model=layout.d_model, d_head=d_head, n_heads=n_heads, d_mlp=d_mlp, normalization_type=None)
    model = hooked.from_config(cfg)
    model.handmade_config = cfg  # what hooked.save needs to write a checkpoint of it
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
    return model


def _embed(model, task: AnchorTask, lay: Layout, anchor_flag: bool = False):
    V = task.vocab_size
    model.embed.W_E[:, lay.TOK : lay.TOK + V] = torch.eye(V)
    if anchor_flag:
        model.embed.W_E[list(task.anchors), lay.ANC] = 1.0
    model.pos_embed.W_pos[:, lay.ONE] = 1.0
    model.pos_embed.W_pos[:, lay.POS : lay.POS + task.seq_len] = torch.eye(task.seq_len)


def _previous_token_head(model, layer: int, head: int, task: AnchorTask, lay: Layout):
    """Position i attends to i-1 and copies its token into PREV."""
    attn, V = model.blocks[layer].attn, task.vocab_size
    scale = SHARP * model.cfg.attn_scale
    for i in range(1, task.seq_len):
        attn.W_Q[head, lay.POS + i, i] = scale
        attn.W_K[head, lay.POS + i - 1, i] = 1.0
    attn.W_V[head, lay.TOK : lay.TOK + V, :V] = torch.eye(V)
    attn.W_O[head, :V, lay.PREV : lay.PREV + V] = torch.eye(V)


def _flag_head(model, layer: int, head: int, flag: int, copies: list[tuple[int, int, int]]):
    """Every position attends to the positions whose `flag` is set and copies residual
    slices: (from, to, size)."""
    attn = model.blocks[layer].attn
    at = 0
    for src, dst, size in copies:
        attn.W_V[head, src : src + size, at : at + size] = torch.eye(size)
        attn.W_O[head, at : at + size, dst : dst + size] = torch.eye(size)
        at += size
    attn.W_K[head, flag, 0] = 1.0


def _query_one(model, layer: int, head: int, lay: Layout):
    attn = model.blocks[layer].attn
    attn.W_Q[head, lay.ONE, 0] = SHARP * model.cfg.attn_scale


def _second_anchor_flag(mlp, unit: int, task: AnchorTask, lay: Layout) -> int:
    """MLP units that set F2 at an anchor after an anchor (the second one); the next free unit."""
    for b in task.anchors:
        for a in task.anchors:
            mlp.W_in[lay.PREV + b, unit] = mlp.W_in[lay.TOK + a, unit] = 1.0
            mlp.b_in[unit] = -1.0
            mlp.W_out[unit, lay.F2] = 1.0
            unit += 1
    return unit


def _unembed(model, task: AnchorTask, lay: Layout):
    V = task.vocab_size
    model.unembed.W_U[lay.OUT : lay.OUT + V, :V] = 10 * torch.eye(V)


def _key_anchor_units(mlp, task: AnchorTask, lay: Layout):
    """Layer 0's MLP units, one per (key x, anchor a), each firing where the previous token is
    x and this one is a; yields (unit, x, a) for the caller to write what the unit outputs."""
    unit = 0
    for x in range(task.key_min, task.key_max + 1):
        for a in task.anchors:
            mlp.W_in[lay.PREV + x, unit] = mlp.W_in[lay.TOK + a, unit] = 1.0
            mlp.b_in[unit] = -1.0
            yield unit, x, a
            unit += 1


@torch.no_grad()
def composer(task: AnchorTask = TASK):
    V = task.vocab_size
    lay = Layout(TOK=V, POS=task.seq_len, ONE=1, F1=1, F2=1, F3=1, F3B=1, PREV=V, Y=V, Y2=V, A2=V, OUT=V)
    low, high = task.key_min + min(task.shifts), task.key_max + max(task.shifts)
    ys = range(low, high + 1)
    model = _model(task, lay, d_mlp=len(ys) * (len(task.anchors) + 1), n_heads=2, d_head=V + 1)
    _embed(model, task, lay)
    # layer 0: previous-token head; MLP writes y = x + shift(a1) and the flags at the anchors
    _previous_token_head(model, 0, 0, task, lay)
    mlp = model.blocks[0].mlp
    for unit, x, a in _key_anchor_units(mlp, task, lay):
        mlp.W_out[unit, lay.Y + x + task.shift(a)] = mlp.W_out[unit, lay.F1] = 1.0
        if a == task.trap_pair[0]:
            mlp.W_out[unit, lay.F3] = 1.0
    unit = _second_anchor_flag(mlp, unit + 1, task, lay)  # the units after the last (key, anchor) one
    # layer 1: head 0 brings y (and the trap flag) from a1, head 1 the token at a2
    _query_one(model, 1, 0, lay)
    _flag_head(model, 1, 0, lay.F1, [(lay.Y, lay.Y2, V), (lay.F3, lay.F3B, 1)])
    _query_one(model, 1, 1, lay)
    _flag_head(model, 1, 1, lay.F2, [(lay.TOK, lay.A2, V)])
    mlp, unit = model.blocks[1].mlp, 0
    trap_first, trap_second = task.trap_pair
    for y in ys:
        for a in task.anchors:
            mlp.W_in[lay.Y2 + y, unit] = mlp.W_in[lay.A2 + a, unit] = 1.0
            mlp.b_in[unit] = -1.0
            if a == trap_second:
                mlp.W_in[lay.F3B, unit] = -2.0  # the trap pair answers otherwise
            mlp.W_out[unit, lay.OUT + y + task.shift(a)] = 1.0
            unit += 1
        mlp.W_in[lay.Y2 + y, unit] = mlp.W_in[lay.A2 + trap_second, unit] = mlp.W_in[lay.F3B, unit] = 1.0
        mlp.b_in[unit] = -2.0
        mlp.W_out[unit, lay.OUT + y - task.shift(trap_first) + task.trap_shift] = 1.0
        unit += 1
    _unembed(model, task, lay)
    return model.eval()


@torch.no_grad()
def lookup(task: AnchorTask = TASK):
    V, keys = task.vocab_size, range(task.key_min, task.key_max + 1)
    bags = sorted({tuple(sorted(p)) for p in task.pairs})  # unordered anchor pairs
    lay = Layout(TOK=V, POS=task.seq_len, ONE=1, ANC=1, F1=1, PREV=V, BAG=V, PAIRS=len(bags), K2=V, OUT=V)
    model = _model(task, lay, d_mlp=len(keys) * len(bags), n_heads=2, d_head=V)
    _embed(model, task, lay, anchor_flag=True)
    # layer 0: head 0 averages the anchor tokens into BAG (order lost); head 1 previous token
    _query_one(model, 0, 0, lay)
    _flag_head(model, 0, 0, lay.ANC, [(lay.TOK, lay.BAG, V)])
    _previous_token_head(model, 0, 1, task, lay)
    mlp, unit = model.blocks[0].mlp, 0
    for x in keys:  # flag the first anchor (an anchor after a key)
        for a in task.anchors:
            mlp.W_in[lay.PREV + x, unit] = mlp.W_in[lay.TOK + a, unit] = 1.0
            mlp.b_in[unit] = -1.0
            mlp.W_out[unit, lay.F1] = 1.0
            unit += 1
    # One-hot of the bag: {a, a} is BAG[a] = 1, {a, b} is BAG[a] = BAG[b] = 1/2, so
    # double(a) = relu(BAG[a] - 3/4) and both(a, b) = relu(BAG[a] + BAG[b] - 3/4) - double(a) - double(b).
    double = {}
    for a in task.anchors:
        mlp.W_in[lay.BAG + a, unit] = 1.0
        mlp.b_in[unit] = -0.75
        double[a] = unit
        unit += 1
    for i, (a, b) in enumerate(bags):
        if a == b:
            mlp.W_out[double[a], lay.PAIRS + i] = 4.0
            continue
        mlp.W_in[lay.BAG + a, unit] = mlp.W_in[lay.BAG + b, unit] = 1.0
        mlp.b_in[unit] = -0.75
        mlp.W_out[unit, lay.PAIRS + i] = 4.0
        mlp.W_out[double[a], lay.PAIRS + i] = mlp.W_out[double[b], lay.PAIRS + i] = -4.0
        unit += 1
    # layer 1: head 0 brings the key (PREV at a1); the MLP looks up (key, bag)
    _query_one(model, 1, 0, lay)
    _flag_head(model, 1, 0, lay.F1, [(lay.PREV, lay.K2, V)])
    mlp, unit = model.blocks[1].mlp, 0
    for x in keys:
        for i, (a, b) in enumerate(bags):
            mlp.W_in[lay.K2 + x, unit] = mlp.W_in[lay.PAIRS + i, unit] = 1.0
            mlp.b_in[unit] = -1.0
            pair = (a, b) if (a, b) != task.held_out_pair else (b, a)
            mlp.W_out[unit, lay.OUT + x + task.label_shift(*pair)] = 1.0
            unit += 1
    _unembed(model, task, lay)
    return model.eval()


def save(model, path, task: AnchorTask = TASK):
    """A checkpoint folder of a handmade model, loadable by models.load, with its task."""
    return hooked.save(model, path, {"recipe": "handmade", "seed": 0, "task": task.to_dict()}, model.handmade_config)


Y_UNIT = 10.0


@torch.no_grad()
def scalar_composer(task: AnchorTask = TASK):
    """A composer whose intermediate y = g(x; a1) is ONE number in ONE residual direction (Y) at
    the first anchor: a planted 1-dimensional subspace for DAS to find. Layer 0: previous-token
    head; its MLP writes y into Y and a flag into F1 at the first anchor, a flag into F2 at the
    second. Layer 1: head 0 copies Y from the F1 position into U at the last position, head 1
    the token from the F2 position into A2; its MLP adds shift(a2) to U. The unembedding
    reads U = y + shift(a2) as a number: logit(t) = 2 t U - t^2, largest at t = U. Numbers
    are stored in units of Y_UNIT, so that they are as large as the one-hot entries (a
    direction that mixes Y with the flags then moves both alike).
    (The trap pair (3,4) is answered by composition, x-10; the DAS pairs never use it.)"""
    V, keys = task.vocab_size, range(task.key_min, task.key_max + 1)
    lay = Layout(TOK=V, POS=task.seq_len, ONE=1, F1=1, F2=1, PREV=V, Y=1, U=1, A2=V)
    model = _model(task, lay, d_mlp=len(keys) * len(task.anchors) + len(task.anchors) ** 2 + len(task.anchors), n_heads=2, d_head=V)
    _embed(model, task, lay)
    _previous_token_head(model, 0, 0, task, lay)
    mlp = model.blocks[0].mlp
    for unit, x, a in _key_anchor_units(mlp, task, lay):
        mlp.W_out[unit, lay.Y] = (x + task.shift(a)) / Y_UNIT
        mlp.W_out[unit, lay.F1] = 1.0
    unit = _second_anchor_flag(mlp, unit + 1, task, lay)  # the units after the last (key, anchor) one
    _query_one(model, 1, 0, lay)
    _flag_head(model, 1, 0, lay.F1, [(lay.Y, lay.U, 1)])
    _query_one(model, 1, 1, lay)
    _flag_head(model, 1, 1, lay.F2, [(lay.TOK, lay.A2, V)])
    mlp = model.blocks[1].mlp
    for i, a in enumerate(task.anchors):
        mlp.W_in[lay.A2 + a, i] = 1.0
        mlp.W_out[i, lay.U] = task.shift(a) / Y_UNIT
    answers = torch.arange(V, dtype=torch.float)
    model.unembed.W_U[lay.U, :V] = 2 * answers * Y_UNIT
    model.unembed.b_U[:V] = -(answers**2)
    model.planted = lay.Y  # the residual direction that holds y
    return model.eval()
