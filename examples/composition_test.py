"""Does the model carry the single-anchor intermediate g(x; a1)? The composition test
(an interchange intervention) on both shipped models.

    python examples/composition_test.py [MODEL ...] [-n 512]
    (default: both shipped models; figures in out/probes/)

Reading: per residual-stream point (rows) and role (key, anchor1, anchor2, noise, last), the fraction of
prompt pairs (A into B) whose answer becomes g(g(x_A; a1_A); a2_B). A composing model has a
high site at anchor1 after the first attention layer; a lookup model none.
"""

from example_args import example_args

args = example_args(__doc__, "out/probes", lambda p: p.add_argument("-n", type=int, default=512, help="prompt pairs (default %(default)s)"))

from pathlib import Path  # noqa: E402  (after the arguments: --help needs no torch)

import models  # noqa: E402
import probes  # noqa: E402
from probes.figures import write_html  # noqa: E402

for name in args.models:
    model, task = models.load(name), models.hooked.task_of(name)
    result = probes.composition_test(model, task, n=args.n)
    print(f"{name}: {result.summary()}")
    print(f"  written {write_html(result.figure(), args.out / f'composition_{Path(name).name}.html')}")
