"""Ablation: which heads, MLPs and residual positions does each solution need? Mean-ablate
(or zero / resample) every head x layer x position, one at a time, on both shipped models,
and show seen-pair accuracy and (4,3) inferential / symmetric accuracy as one heatmap.

    python examples/ablation_sweep.py [MODEL ...]     (default: both shipped models; figures in out/probes/)
"""

import sys
from pathlib import Path

import models
import probes
from probes.figures import write_html

OUT = Path("out/probes")
KIND = "mean"  # or "zero", "resample" (probes.ABLATIONS)

for name in sys.argv[1:] or ["inferential", "symmetric"]:
    model, task = models.load(name), models.hooked.task_of(name)
    sweep = probes.ablation_sweep(model, task, KIND, n=512)
    print(f"{name}: {sweep.summary()}")
    print(f"  written {write_html(sweep.figure(), OUT / f'ablation_{KIND}_{Path(name).name}.html')}")
