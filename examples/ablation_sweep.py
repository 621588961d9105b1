"""Ablation: which heads, MLPs and residual positions does each solution need? Mean-ablate
(or zero / resample) every head x layer x position, one at a time, on both shipped models,
and show seen-pair accuracy and (4,3) inferential / symmetric accuracy as one heatmap.

    python examples/ablation_sweep.py [--models inferential symmetric] [--kind mean] [--out out/probes]
"""

import argparse
from pathlib import Path

import models
import probes
from probes.figures import write_html

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--models", nargs="+", default=["inferential", "symmetric"], help="shipped names or checkpoint folders")
parser.add_argument("--kind", default="mean", choices=probes.ABLATIONS)
parser.add_argument("--out", default="out/probes", help="folder for the HTML figures")
args = parser.parse_args()

for name in args.models:
    model, task = models.load(name), models.hooked.task_of(name)
    sweep = probes.ablation_sweep(model, task, args.kind, n=512)
    print(f"{name}: {sweep.summary()}")
    print(f"  written {write_html(sweep.figure(), Path(args.out) / f'ablation_{args.kind}_{Path(name).name}.html')}")
