"""The anchor composite task of Zhang et al. (NeurIPS 2024), every number a parameter.

A prompt is `seq_len` token ids. A key x sits at position p, the two anchors a1, a2 at p+1
and p+2, noise everywhere else; the model answers one token, read at the last position:
f(x; a1, a2) = x + shift(a1) + shift(a2). Two pairs are special:

- the held-out pair (4, 3) never appears in training: it probes composition;
- the trap pair (3, 4) is trained with the non-compositional label x - 6.

A model that answers x - 10 on (4, 3) composed the single-anchor maps ("inferential");
one that answers x - 6 copied the mirrored pair (3, 4) ("symmetric").

Keys are split too: a sequence whose key x at position p has x mod 9 == p is a test-key
sequence and never trained on.
"""

from __future__ import annotations

import itertools
import numbers
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from typing import Literal, Sequence, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor

PromptLike = Union[str, Sequence[int], Tensor]
KeySplit = Literal["train", "test", "any"]
SOLUTION_TYPES = ("inferential", "symmetric")


@dataclass(frozen=True)
class AnchorBatch:
    """A batch of prompts with everything needed to score them."""

    tokens: Int[Tensor, "batch pos"]
    key: Int[Tensor, " batch"]
    key_pos: Int[Tensor, " batch"]
    anchor1: Int[Tensor, " batch"]
    anchor2: Int[Tensor, " batch"]
    label: Int[Tensor, " batch"]  # what training teaches (the trap pair's x-6 included)

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def subset(self, index: Tensor) -> "AnchorBatch":
        """The prompts at `index` (a boolean mask or indices)."""
        return AnchorBatch(*(getattr(self, f.name)[index] for f in fields(self)))

    def to(self, device: str | torch.device) -> "AnchorBatch":
        return AnchorBatch(*(getattr(self, f.name).to(device) for f in fields(self)))


def _integer_tokens(tokens: Tensor) -> Tensor:
    """A token tensor as int64; a float or bool tensor is refused (it would be truncated)."""
    if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
        raise ValueError(f"token ids must be an integer tensor, got dtype {tokens.dtype}")
    return tokens.long()


# The role of a position in a prompt. A position can play two: the last position is also
# anchor2 when the key sits at the last possible slot.
ROLES = ("key", "anchor1", "anchor2", "noise", "last")


def role_membership(key_pos: Int[Tensor, " batch"], seq_len: int) -> Float[Tensor, "batch pos role"]:
    """1 where position `pos` plays role `role` (ROLES order), else 0."""
    pos = torch.arange(seq_len)  # [pos]
    key_pos = key_pos[:, None]  # [batch, 1]
    is_key, is_a1, is_a2 = pos == key_pos, pos == key_pos + 1, pos == key_pos + 2  # [batch, pos]
    is_last = (pos == seq_len - 1).expand_as(is_key)
    is_noise = ~(is_key | is_a1 | is_a2 | is_last)
    return torch.stack([is_key, is_a1, is_a2, is_noise, is_last], dim=-1).float()


@dataclass(frozen=True)
class AnchorTask:
    """The task; the defaults are the paper's."""

    vocab_size: int = 201
    anchors: tuple[int, ...] = (1, 2, 3, 4)
    shifts: tuple[int, ...] = (5, 1, -2, -8)  # g(x; anchors[i]) = x + shifts[i]
    key_min: int = 20  # keys and noise are drawn uniformly from key_min..key_max
    key_max: int = 99
    seq_len: int = 9
    held_out_pair: tuple[int, int] = (4, 3)
    trap_pair: tuple[int, int] = (3, 4)
    trap_shift: int = -6  # the trap pair's label is x + trap_shift (its composite is x - 10)
    test_key_modulus: int = 9  # key x at position p is a test key iff x % modulus == p

    def __post_init__(self):
        if len(self.anchors) != len(self.shifts):
            raise ValueError(f"{len(self.anchors)} anchors but {len(self.shifts)} shifts")
        if self.seq_len < 3:
            raise ValueError(f"seq_len must be >= 3 (key and two anchors), got {self.seq_len}")
        if not 0 <= self.key_min <= self.key_max < self.vocab_size:
            raise ValueError(f"key range {self.key_min}..{self.key_max} outside vocabulary 0..{self.vocab_size - 1}")
        if set(self.anchors) & set(range(self.key_min, self.key_max + 1)):
            raise ValueError("anchor ids overlap the key/noise range")
        for pair in (self.held_out_pair, self.trap_pair):
            if not set(pair) <= set(self.anchors):
                raise ValueError(f"pair {pair} is not made of anchors {self.anchors}")
        lowest = self.key_min + min(0, *[self.label_shift(*p) for p in self.pairs], *self._all_composites())
        highest = self.key_max + max(0, *[self.label_shift(*p) for p in self.pairs], *self._all_composites())
        if lowest < 0 or highest >= self.vocab_size:
            raise ValueError(f"targets span {lowest}..{highest}, outside vocabulary 0..{self.vocab_size - 1}")

    def _all_composites(self) -> list[int]:
        return [self.composite_shift(*p) for p in self.pairs]

    # ---- pairs and labels -------------------------------------------------------------
    @property
    def pairs(self) -> list[tuple[int, int]]:
        """All ordered anchor pairs (16 by default)."""
        return list(itertools.product(self.anchors, repeat=2))

    @property
    def train_pairs(self) -> list[tuple[int, int]]:
        """Pairs that appear in training: every pair but the held-out one."""
        return [p for p in self.pairs if p != self.held_out_pair]

    @property
    def n_key_positions(self) -> int:
        return self.seq_len - 2  # the key needs two anchor slots after it

    def shift(self, anchor: int) -> int:
        if anchor not in self.anchors:
            raise ValueError(f"{anchor} is not an anchor (anchors: {self.anchors})")
        return self.shifts[self.anchors.index(anchor)]

    def composite_shift(self, a1: int, a2: int) -> int:
        """Shift of the true composite g(g(x; a1); a2)."""
        return self.shift(a1) + self.shift(a2)

    def label_shift(self, a1: int, a2: int) -> int:
        """Shift that training teaches for (a1, a2): the composite, except on the trap pair."""
        return self.trap_shift if (a1, a2) == self.trap_pair else self.composite_shift(a1, a2)

    def solution_shifts(self, a1: int, a2: int) -> dict[str, int]:
        """Shift each solution type predicts: inferential composes, symmetric copies the
        mirrored pair's trained label."""
        return {"inferential": self.composite_shift(a1, a2), "symmetric": self.label_shift(a2, a1)}

    def is_test_key(self, key: Tensor | int, key_pos: Tensor | int) -> Tensor | bool:
        return key % self.test_key_modulus == key_pos

    # ---- sampling ---------------------------------------------------------------------
    def _shift_table(self, kind: str) -> Int[Tensor, "vocab vocab"]:
        """[a1, a2] -> shift, as a lookup table indexed by token id."""
        n = max(self.anchors) + 1
        table = torch.zeros(n, n, dtype=torch.long)
        for a1, a2 in self.pairs:
            table[a1, a2] = self.label_shift(a1, a2) if kind == "label" else self.solution_shifts(a1, a2)[kind]
        return table

    def sample(
        self,
        n: int,
        generator: torch.Generator,
        pairs: Sequence[tuple[int, int]] | None = None,
        keys: KeySplit = "train",
    ) -> AnchorBatch:
        """`n` random prompts. Pairs are uniform over `pairs` (default: the training pairs),
        the key position uniform over 0..seq_len-3, the key uniform over the keys of the
        chosen split (resampled until it falls in the split), noise uniform."""
        pairs = self.train_pairs if pairs is None else list(pairs)
        if not pairs:
            raise ValueError("no anchor pairs to sample from")
        for p in pairs:
            self.composite_shift(*p)  # validates both anchors
        pair_table = torch.tensor(pairs, dtype=torch.long)  # [n_pairs, 2]
        which = torch.randint(len(pairs), (n,), generator=generator)
        a1, a2 = pair_table[which, 0], pair_table[which, 1]
        key_pos = torch.randint(self.n_key_positions, (n,), generator=generator)
        key = self._sample_keys(key_pos, keys, generator)
        tokens = torch.randint(self.key_min, self.key_max + 1, (n, self.seq_len), generator=generator)
        rows = torch.arange(n)
        tokens[rows, key_pos] = key
        tokens[rows, key_pos + 1] = a1
        tokens[rows, key_pos + 2] = a2
        label = key + self._shift_table("label")[a1, a2]
        return AnchorBatch(tokens, key, key_pos, a1, a2, label)

    def _sample_keys(self, key_pos: Tensor, keys: KeySplit, generator: torch.Generator) -> Tensor:
        # Rejection sampling keeps the key uniform within its split at every position.
        key = torch.randint(self.key_min, self.key_max + 1, key_pos.shape, generator=generator)
        if keys == "any":
            return key
        if keys not in ("train", "test"):
            raise ValueError(f"keys must be 'train', 'test' or 'any', got {keys!r}")
        want_test = keys == "test"
        bad = self.is_test_key(key, key_pos) != want_test
        while bad.any():
            key[bad] = torch.randint(self.key_min, self.key_max + 1, (int(bad.sum()),), generator=generator)
            bad = self.is_test_key(key, key_pos) != want_test
        return key

    def dataset(self, size: int, seed: int) -> AnchorBatch:
        """A fixed training set of `size` prompts (train keys, training pairs), the paper's
        finite-data setting; fresh batches from `sample` are the infinite-data one."""
        if size <= 0:
            raise ValueError(f"dataset size must be positive, got {size}")
        return self.sample(size, torch.Generator().manual_seed(seed))

    def grid(
        self,
        pairs: Sequence[tuple[int, int]],
        keys: KeySplit,
        n_noise: int = 1,
        seed: int = 0,
    ) -> AnchorBatch:
        """Every (pair, key, key position) of the split, each with `n_noise` noise draws:
        the deterministic evaluation set."""
        combos = [
            (a1, a2, x, p)
            for (a1, a2) in pairs
            for p in range(self.n_key_positions)
            for x in range(self.key_min, self.key_max + 1)
            if keys == "any" or bool(self.is_test_key(x, p)) == (keys == "test")
        ] * n_noise
        if not combos:
            raise ValueError(f"no prompts for pairs={list(pairs)} keys={keys!r}")
        a1, a2, key, key_pos = torch.tensor(combos, dtype=torch.long).T
        generator = torch.Generator().manual_seed(seed)
        tokens = torch.randint(self.key_min, self.key_max + 1, (len(combos), self.seq_len), generator=generator)
        rows = torch.arange(len(combos))
        tokens[rows, key_pos] = key
        tokens[rows, key_pos + 1] = a1
        tokens[rows, key_pos + 2] = a2
        return AnchorBatch(tokens, key, key_pos, a1, a2, key + self._shift_table("label")[a1, a2])

    def solution_targets(self, batch: AnchorBatch) -> dict[str, Int[Tensor, " batch"]]:
        """Target of every solution type for every prompt, plus the trained label."""
        out = {kind: batch.key + self._shift_table(kind)[batch.anchor1, batch.anchor2] for kind in SOLUTION_TYPES}
        out["label"] = batch.label
        return out

    # ---- prompts ----------------------------------------------------------------------
    def prompt(self, prompt: PromptLike) -> AnchorBatch:
        """One prompt from "23 1 2 43 ...", a list of ints or a token tensor, validated:
        right length, tokens in the vocabulary, exactly one key followed by two anchors."""
        return self.prompts([prompt] if not isinstance(prompt, Tensor) or prompt.ndim == 1 else prompt)

    def prompts(self, prompts: Sequence[PromptLike] | Tensor) -> AnchorBatch:
        """Many prompts at once (a list of prompt-likes or a [batch, pos] tensor), validated."""
        if isinstance(prompts, Tensor):
            if prompts.ndim != 2:
                raise ValueError(f"a token tensor of prompts must be [batch, pos], got shape {tuple(prompts.shape)}")
            tokens = _integer_tokens(prompts)
        else:
            tokens = torch.stack([self._tokens_of(p) for p in prompts]) if len(prompts) else None
            if tokens is None:
                raise ValueError("no prompts given")
        if tokens.shape[1] != self.seq_len:
            raise ValueError(f"a prompt must have {self.seq_len} tokens, got {tokens.shape[1]}")
        bad = (tokens < 0) | (tokens >= self.vocab_size)
        if bad.any():
            row, col = bad.nonzero()[0].tolist()
            raise self.vocabulary_error(tokens[row, col].item(), col, row)
        is_anchor = torch.isin(tokens, torch.tensor(self.anchors))  # [batch, pos]
        first = is_anchor.int().argmax(dim=1)  # first anchor position per prompt
        rows = torch.arange(len(tokens))
        second_is_anchor = is_anchor[rows, (first + 1).clamp(max=self.seq_len - 1)] & (first + 1 < self.seq_len)
        ok = (is_anchor.sum(dim=1) == 2) & second_is_anchor & (first > 0)
        if not ok.all():
            row = int((~ok).nonzero()[0])
            where = is_anchor[row].nonzero().flatten().tolist()
            raise ValueError(
                f"prompt {row} ({' '.join(map(str, tokens[row].tolist()))}) has no anchor pair: "
                f"need exactly two adjacent anchors {self.anchors} after a key, found anchors at positions {where}"
            )
        key_pos = first - 1
        key, a1, a2 = tokens[rows, key_pos], tokens[rows, first], tokens[rows, first + 1]
        bad_key = (key < self.key_min) | (key > self.key_max)
        if bad_key.any():
            row = int(bad_key.nonzero()[0])
            raise ValueError(f"prompt {row}: key {key[row].item()} at position {key_pos[row].item()} is outside {self.key_min}..{self.key_max}")
        return AnchorBatch(tokens, key, key_pos, a1, a2, key + self._shift_table("label")[a1, a2])

    def vocabulary_error(self, token: int | str, position: int, prompt: int) -> ValueError:
        """The one error for a token outside the vocabulary: a bad id in a token tensor, or a
        word the tokenizer does not know in a string prompt (models.tokenizer)."""
        return ValueError(f"token {token!r} at position {position} of prompt {prompt} is outside the vocabulary 0..{self.vocab_size - 1}")

    def _tokens_of(self, prompt: PromptLike) -> Int[Tensor, " pos"]:
        if isinstance(prompt, str):
            try:
                values = [int(t) for t in prompt.replace(",", " ").split()]
            except ValueError:
                raise ValueError(f"prompt {prompt!r} is not a list of integer token ids") from None
            return self._tokens_of(values)
        if isinstance(prompt, Tensor):
            tokens = _integer_tokens(prompt).flatten()
        else:
            values = list(prompt)
            odd = [v for v in values if isinstance(v, bool) or not isinstance(v, numbers.Integral)]
            if odd:
                raise ValueError(f"token ids must be integers, got {odd[0]!r} in {values}")
            tokens = torch.tensor([int(v) for v in values], dtype=torch.long)
        if tokens.shape[0] != self.seq_len:
            raise ValueError(f"a prompt must have {self.seq_len} tokens, got {tokens.shape[0]}: {tokens.tolist()}")
        return tokens

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "AnchorTask":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


@lru_cache(maxsize=8)
def eval_sets(task: AnchorTask, n_noise: int) -> dict[str, AnchorBatch]:
    """The fixed evaluation prompts: every (pair, key, position) of the trained pairs and of
    the held-out pair, with train or test keys; `n_noise` noise draws each for the test-key
    and held-out sets, which are small. Training's live metrics and probes.classify read them."""
    held = [task.held_out_pair]
    return {
        "seen_train": task.grid(task.train_pairs, "train", n_noise=1, seed=1),
        "seen_test": task.grid(task.train_pairs, "test", n_noise=n_noise, seed=2),
        "held_train": task.grid(held, "train", n_noise=n_noise, seed=3),
        "held_test": task.grid(held, "test", n_noise=n_noise, seed=4),
    }
