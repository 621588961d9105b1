"""Activation patching: where does the model keep the key, and each anchor? For each kind of
prompt pair (change the key, change the first or second anchor), patch every site of the
clean run into the corrupted run, on both shipped models.

    python examples/activation_patching.py [MODEL ...] [-n 512]
    (default: both shipped models; figures in out/probes/)

Metric: the normalised logit difference between the clean and the corrupted answer (1 =
restored, 0 = untouched), by residual-stream site (rows) and role of the position.
"""

from example_args import example_args

args = example_args(__doc__, "out/probes", lambda p: p.add_argument("-n", type=int, default=512, help="prompt pairs per kind (default %(default)s)"))

from pathlib import Path  # noqa: E402  (after the arguments: --help needs no torch)

import models  # noqa: E402
import probes  # noqa: E402
from probes.figures import write_html  # noqa: E402

PAIRS = ["change_key", "change_anchor1", "change_anchor2"]  # probes.PAIR_KINDS

for name in args.models:
    model, task = models.load(name), models.hooked.task_of(name)
    for kind in PAIRS:
        result = probes.patch_sweep(model, probes.make_pairs(task, kind, n=args.n), title=f"{name}: activation patching ({kind})")
        print(result.summary())
        print(f"  written {write_html(result.figure(), args.out / f'patching_{kind}_{Path(name).name}.html')}")
