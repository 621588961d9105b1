"""The task's labels and splits, exactly as the paper defines them."""

import pytest
import torch

from models.task import AnchorTask

TASK = AnchorTask()
SHIFT = {1: 5, 2: 1, 3: -2, 4: -8}


def test_paper_defaults():
    assert TASK.vocab_size == 201 and TASK.seq_len == 9
    assert TASK.anchors == (1, 2, 3, 4) and (TASK.key_min, TASK.key_max) == (20, 99)
    assert len(TASK.pairs) == 16 and len(TASK.train_pairs) == 15
    assert (4, 3) not in TASK.train_pairs and (3, 4) in TASK.train_pairs


@pytest.mark.parametrize("pair", AnchorTask().pairs)
def test_every_pair_label_and_solution_targets(pair):
    a1, a2 = pair
    composite = SHIFT[a1] + SHIFT[a2]
    assert TASK.composite_shift(a1, a2) == composite
    assert TASK.label_shift(a1, a2) == (-6 if pair == (3, 4) else composite)
    shifts = TASK.solution_shifts(a1, a2)
    assert shifts["inferential"] == composite
    # the symmetric solution copies the mirrored pair's trained label
    assert shifts["symmetric"] == TASK.label_shift(a2, a1)


def test_the_trap_and_the_probe():
    assert TASK.label_shift(3, 4) == -6 and TASK.composite_shift(3, 4) == -10
    assert TASK.solution_shifts(4, 3) == {"inferential": -10, "symmetric": -6}


def test_paper_example_prompt():
    batch = TASK.prompt("23 1 2 43 46 74 54 44 72")
    assert batch.key.item() == 23 and batch.key_pos.item() == 0
    assert batch.label.item() == 29  # 23 + 5 + 1


def _check_batch(batch, task=TASK):
    rows = torch.arange(len(batch))
    assert (batch.tokens[rows, batch.key_pos] == batch.key).all()
    assert (batch.tokens[rows, batch.key_pos + 1] == batch.anchor1).all()
    assert (batch.tokens[rows, batch.key_pos + 2] == batch.anchor2).all()
    is_anchor = torch.isin(batch.tokens, torch.tensor(task.anchors))
    assert (is_anchor.sum(1) == 2).all(), "noise never looks like an anchor"
    noise = batch.tokens[~is_anchor]
    assert ((noise >= task.key_min) & (noise <= task.key_max)).all()
    expected = torch.tensor([batch.key[i] + task.label_shift(int(batch.anchor1[i]), int(batch.anchor2[i])) for i in range(len(batch))])
    assert (batch.label == expected).all()


def test_training_batches_hold_only_train_keys_and_never_the_held_out_pair():
    batch = TASK.sample(20000, torch.Generator().manual_seed(0))
    _check_batch(batch)
    assert not TASK.is_test_key(batch.key, batch.key_pos).any()
    assert not ((batch.anchor1 == 4) & (batch.anchor2 == 3)).any()
    seen = set(zip(batch.anchor1.tolist(), batch.anchor2.tolist()))
    assert seen == set(TASK.train_pairs)
    assert set(batch.key_pos.tolist()) == set(range(7))
    trap = (batch.anchor1 == 3) & (batch.anchor2 == 4)
    assert (batch.label[trap] == batch.key[trap] - 6).all()


def test_key_split_is_x_mod_9_equals_position():
    test = TASK.sample(5000, torch.Generator().manual_seed(1), keys="test")
    assert (test.key % 9 == test.key_pos).all()
    grid = TASK.grid(TASK.pairs, "any")
    n_test = int(TASK.is_test_key(grid.key, grid.key_pos).sum())
    assert n_test == 16 * sum(1 for p in range(7) for x in range(20, 100) if x % 9 == p)
    _check_batch(grid)


def test_fixed_dataset_is_reproducible_and_from_the_training_distribution():
    a, b = TASK.dataset(1000, seed=3), TASK.dataset(1000, seed=3)
    assert torch.equal(a.tokens, b.tokens)
    assert not torch.equal(a.tokens, TASK.dataset(1000, seed=4).tokens)
    assert not TASK.is_test_key(a.key, a.key_pos).any()
    _check_batch(a)


def test_sampling_is_seeded():
    a = TASK.sample(64, torch.Generator().manual_seed(7))
    b = TASK.sample(64, torch.Generator().manual_seed(7))
    assert torch.equal(a.tokens, b.tokens)


def test_solution_targets_of_a_prompt():
    targets = TASK.solution_targets(TASK.prompt([50, 4, 3, 30, 30, 30, 30, 30, 30]))
    assert targets["inferential"].item() == 40 and targets["symmetric"].item() == 44
    assert targets["label"].item() == 40  # untrained pair: its label is the composite


@pytest.mark.parametrize(
    "prompt, message",
    [
        ("23 1 2 43", "must have 9 tokens"),
        ([23, 1, 2, 43, 46, 74, 54, 44, 72, 5], "must have 9 tokens"),
        ("23 1 2 43 46 74 54 44 999", "outside the vocabulary"),
        ("23 1 2 43 46 74 54 44 -1", "outside the vocabulary"),
        ("23 41 42 43 46 74 54 44 72", "no anchor pair"),
        ("1 2 23 43 46 74 54 44 72", "no anchor pair"),  # no key before the anchors
        ("23 1 43 2 46 74 54 44 72", "no anchor pair"),  # anchors not adjacent
        ("23 1 2 3 46 74 54 44 72", "no anchor pair"),  # three anchors
        ("23 x 2 43 46 74 54 44 72", "not a list of integer"),
        ("150 1 2 43 46 74 54 44 72", "outside 20..99"),
    ],
)
def test_bad_prompts_are_refused_by_name(prompt, message):
    with pytest.raises(ValueError, match=message):
        TASK.prompt(prompt)


def test_every_number_is_a_parameter():
    task = AnchorTask(anchors=(1, 2), shifts=(3, -3), held_out_pair=(2, 1), trap_pair=(1, 2), trap_shift=1, seq_len=6, test_key_modulus=4)
    batch = task.sample(2000, torch.Generator().manual_seed(0))
    _check_batch(batch, task)
    assert task.solution_shifts(2, 1) == {"inferential": 0, "symmetric": 1}
    with pytest.raises(ValueError, match="outside vocabulary"):
        AnchorTask(vocab_size=100)
    with pytest.raises(ValueError, match="not an anchor"):
        TASK.shift(7)
