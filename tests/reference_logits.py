"""References computed on TransformerLens 3.9 (HookedTransformer), which the installed line
(3.9 or 4.x's TransformerBridge) must reproduce: the shipped models' logits (test_zoo), and
the per-matrix sums of a gamma-init model's initial weights (test_models: same seed, same
weights on both lines).

Regenerate (on 3.9 only): python tests/reference_logits.py
Compare the installed line with it: python tests/reference_logits.py --compare
"""

import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

import models
from models import hooked

FILE = Path(__file__).parent / "data" / "zoo_logits.safetensors"
NAMES = ("inferential", "symmetric")


def prompts(name: str) -> torch.Tensor:
    """16 prompts of every pair (held-out and trap included), any key: [prompt, pos]."""
    task = hooked.task_of(name)
    return task.sample(16, torch.Generator().manual_seed(0), pairs=task.pairs, keys="any").tokens


def reference() -> dict[str, torch.Tensor]:
    """name -> its 3.9 logits at every position: [prompt, pos, d_vocab]; "init_sums": [matrix]."""
    return load_file(str(FILE))


def init_sums() -> torch.Tensor:
    """Sum of each weight matrix of build(0.8, seed=0), in HookedTransformer order: [matrix] (float64)."""
    model = models.build(0.8, seed=0)
    return torch.stack([t.detach().double().sum() for name, t in hooked.tl_params(model).items() if name in hooked.weight_names(model)])


def max_differences(names=NAMES) -> dict[str, float]:
    """name -> max |logit - 3.9 logit| of the installed line."""
    with torch.inference_mode():
        return {name: (models.load(name)(prompts(name)) - reference()[name]).abs().max().item() for name in names}


if __name__ == "__main__":
    if sys.argv[1:] == ["--compare"]:
        for name, difference in max_differences().items():
            print(f"{name}: max |logit difference| on transformer_lens {hooked.TL_VERSION} vs 3.9: {difference:.3g}")
        raise SystemExit(0)
    if hooked.TL4:
        raise SystemExit("the reference is TransformerLens 3.9's: run this in a 3.9 environment")
    with torch.inference_mode():
        save_file({**{name: models.load(name)(prompts(name)).contiguous() for name in NAMES}, "init_sums": init_sums()}, str(FILE))
    print(f"wrote {FILE} (transformer_lens {hooked.TL_VERSION})")
