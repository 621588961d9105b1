"""Which solution did a model learn? Accuracy is argmax of the last-position logits against a
target; the held-out pair (4,3) tells composition (x-10) from the mirrored lookup (x-6)."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

import torch
from jaxtyping import Int
from torch import Tensor

from models.hooked import Model, check_model_fits_task
from models.task import AnchorBatch, AnchorTask, eval_sets

UNFIT_THRESHOLD = 0.9  # seen-pair test-key accuracy below this: the model did not fit the task
LABELS = ("inferential", "symmetric", "other", "unfit")


@dataclass
class Classification:
    label: str  # inferential / symmetric / other / unfit
    seen_train_keys: float  # accuracy on the 15 trained pairs, train keys
    seen_test_keys: float  # ... test keys
    inferential_train_keys: float  # (4,3) answered x-10, train keys
    inferential_test_keys: float
    symmetric_train_keys: float  # (4,3) answered x-6
    symmetric_test_keys: float
    inferential_by_position: list[float]  # (4,3) test keys, per key position 0..seq_len-3
    symmetric_by_position: list[float]
    offset_histogram: dict[int, int]  # (4,3) test keys: prediction - key -> count
    n_prompts: int

    def to_dict(self) -> dict:
        d = asdict(self)
        d["offset_histogram"] = {str(k): v for k, v in sorted(self.offset_histogram.items())}
        return d

    def __str__(self) -> str:
        top = sorted(self.offset_histogram.items(), key=lambda kv: -kv[1])[:4]
        total = sum(self.offset_histogram.values())
        hist = ", ".join(f"{k:+d}: {v / total:.0%}" for k, v in top)
        return (
            f"solution            {self.label}\n"
            f"seen pairs          train keys {self.seen_train_keys:.3f}   test keys {self.seen_test_keys:.3f}\n"
            f"(4,3) inferential   train keys {self.inferential_train_keys:.3f}   test keys {self.inferential_test_keys:.3f}\n"
            f"(4,3) symmetric     train keys {self.symmetric_train_keys:.3f}   test keys {self.symmetric_test_keys:.3f}\n"
            f"by key position     inferential {' '.join(f'{a:.2f}' for a in self.inferential_by_position)}\n"
            f"                    symmetric   {' '.join(f'{a:.2f}' for a in self.symmetric_by_position)}\n"
            f"(4,3) pred - key    {hist}"
        )


def label_of(seen_test_keys: float, inferential: float, symmetric: float) -> str:
    """Unfit below the fit threshold; otherwise the plurality answer on (4,3) test keys
    (inferential x-10, symmetric x-6, or anything else)."""
    if seen_test_keys < UNFIT_THRESHOLD:
        return "unfit"
    other = 1.0 - inferential - symmetric
    return max((inferential, "inferential"), (symmetric, "symmetric"), (other, "other"))[1]


@torch.inference_mode()
def predict(model: Model, tokens: Int[Tensor, "batch pos"], batch_size: int = 1024) -> Int[Tensor, " batch"]:
    """argmax of the last-position logits, `batch_size` prompts at a time: 1024 keeps a chunk's
    activations ([1024, pos, d_mlp] fp32, 28 MB at the zoo's shape) under the mmap threshold
    that `models.train.keep_freed_memory` sets, so they are reused, not mapped and
    page-faulted afresh (classify 1.3x-1.5x faster than in chunks of 8192: bench/train_speed.py
    (g)); a prompt's logits do not depend on the chunk (tested)."""
    out = []
    for chunk in tokens.split(batch_size):
        out.append(model(chunk)[:, -1, :].argmax(-1).cpu())  # a model on a GPU answers there
    return torch.cat(out)


def _accuracy(pred: Tensor, target: Tensor) -> float:
    return (pred == target).float().mean().item()


def classify(model: Model, task: AnchorTask = AnchorTask(), n_noise: int = 4) -> Classification:
    """Seen-pair accuracy (train/test keys), (4,3) inferential and symmetric accuracy
    (train/test keys, and per key position), the (4,3) offset histogram, and the label.

    Every (pair, key, position) combination is evaluated; `n_noise` noise draws each for the
    test-key and held-out sets, which are small."""
    check_model_fits_task(model, task)
    was_training = model.training
    model.eval()
    try:
        sets = eval_sets(task, n_noise)
        pred = {name: predict(model, batch.tokens) for name, batch in sets.items()}
    finally:  # the caller's train/eval mode, even when the forward pass raises
        model.train(was_training)

    acc = {}
    for split in ("train", "test"):
        held = sets[f"held_{split}"]
        targets = task.solution_targets(held)
        acc[f"seen_{split}"] = _accuracy(pred[f"seen_{split}"], sets[f"seen_{split}"].label)
        for kind in ("inferential", "symmetric"):
            acc[f"{kind}_{split}"] = _accuracy(pred[f"held_{split}"], targets[kind])

    held = sets["held_test"]
    targets = task.solution_targets(held)
    by_position = {
        kind: [_accuracy(pred["held_test"][held.key_pos == p], targets[kind][held.key_pos == p]) for p in range(task.n_key_positions)]
        for kind in ("inferential", "symmetric")
    }
    histogram = Counter((pred["held_test"] - held.key).tolist())
    return Classification(
        label=label_of(acc["seen_test"], acc["inferential_test"], acc["symmetric_test"]),
        seen_train_keys=acc["seen_train"],
        seen_test_keys=acc["seen_test"],
        inferential_train_keys=acc["inferential_train"],
        inferential_test_keys=acc["inferential_test"],
        symmetric_train_keys=acc["symmetric_train"],
        symmetric_test_keys=acc["symmetric_test"],
        inferential_by_position=by_position["inferential"],
        symmetric_by_position=by_position["symmetric"],
        offset_histogram=dict(histogram),
        n_prompts=sum(len(b) for b in sets.values()),
    )


def card_metrics(model: Model, task: AnchorTask = AnchorTask()) -> dict:
    """What a model card and a sweep row record: `classify` as JSON."""
    return classify(model, task).to_dict()
