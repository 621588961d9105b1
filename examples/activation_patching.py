"""Activation patching: where does the model keep the key, and each anchor? For each kind of
prompt pair (change the key, change the first or second anchor), patch every site of the
clean run into the corrupted run, on both shipped models.

    python examples/activation_patching.py [--models inferential symmetric] [--pairs change_key change_anchor1]

Metric: the normalised logit difference between the clean and the corrupted answer (1 =
restored, 0 = untouched), by residual-stream site (rows) and role of the position.
"""

import argparse
from pathlib import Path

import models
import probes
from probes.figures import write_html

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--models", nargs="+", default=["inferential", "symmetric"], help="shipped names or checkpoint folders")
parser.add_argument("--pairs", nargs="+", default=["change_key", "change_anchor1", "change_anchor2"], choices=probes.PAIR_KINDS)
parser.add_argument("--out", default="out/probes", help="folder for the HTML figures")
args = parser.parse_args()

for name in args.models:
    model, task = models.load(name), models.hooked.task_of(name)
    for kind in args.pairs:
        result = probes.patch_sweep(model, probes.make_pairs(task, kind, n=512), title=f"{name}: activation patching ({kind})")
        print(result.summary())
        print(f"  written {write_html(result.figure(), Path(args.out) / f'patching_{kind}_{Path(name).name}.html')}")
