"""Ablation: which heads, MLPs and residual positions does each solution need? Mean-ablate
(or zero / resample) every head x layer x position, one at a time, on both shipped models,
and show seen-pair accuracy and (4,3) inferential / symmetric accuracy as one heatmap.

    python examples/ablation_sweep.py [MODEL ...] [--kind mean] [-n 512]
    (default: both shipped models; figures in out/probes/)
"""

from example_args import example_args

args = example_args(__doc__, "out/probes", lambda p: (
    p.add_argument("--kind", default="mean", choices=("zero", "mean", "resample"), help="ablation (default %(default)s)"),
    p.add_argument("-n", type=int, default=512, help="prompts per accuracy (default %(default)s)"),
))

from pathlib import Path  # noqa: E402  (after the arguments: --help needs no torch)

import models  # noqa: E402
import probes  # noqa: E402
from probes.figures import write_html  # noqa: E402

for name in args.models:
    model, task = models.load(name), models.hooked.task_of(name)
    sweep = probes.ablation_sweep(model, task, args.kind, n=args.n)
    print(f"{name}: {sweep.summary()}")
    print(f"  written {write_html(sweep.figure(), args.out / f'ablation_{args.kind}_{Path(name).name}.html')}")
