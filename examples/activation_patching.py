"""Activation patching: where does the model keep the key, and each anchor? For each kind of
prompt pair (change the key, change the first or second anchor), patch every site of the
clean run into the corrupted run, on both shipped models.

    python examples/activation_patching.py [MODEL ...]     (default: both shipped models; figures in out/probes/)

Metric: the normalised logit difference between the clean and the corrupted answer (1 =
restored, 0 = untouched), by residual-stream site (rows) and role of the position.
"""

import sys
from pathlib import Path

import models
import probes
from probes.figures import write_html

OUT = Path("out/probes")
PAIRS = ["change_key", "change_anchor1", "change_anchor2"]  # probes.PAIR_KINDS

for name in sys.argv[1:] or ["inferential", "symmetric"]:
    model, task = models.load(name), models.hooked.task_of(name)
    for kind in PAIRS:
        result = probes.patch_sweep(model, probes.make_pairs(task, kind, n=512), title=f"{name}: activation patching ({kind})")
        print(result.summary())
        print(f"  written {write_html(result.figure(), OUT / f'patching_{kind}_{Path(name).name}.html')}")
