"""Which sites carry the anchor ORDER? Patch the (3,4) run into the (4,3) run site by site and
see which sites turn x-10 into x-6, on both shipped models.

    python examples/order_probe.py [MODEL ...] [-n 512]
    (default: both shipped models; figures in out/probes/)

The probe is undefined for a model that answers x-6 on (4,3) already (the symmetric one):
order makes no difference to it, and the script says so.
"""

from example_args import example_args

args = example_args(__doc__, "out/probes", lambda p: p.add_argument("-n", type=int, default=512, help="prompt pairs (default %(default)s)"))

from pathlib import Path  # noqa: E402  (after the arguments: --help needs no torch)

import models  # noqa: E402
import probes  # noqa: E402
from probes.figures import notice, write_html  # noqa: E402

for name in args.models:
    model, task = models.load(name), models.hooked.task_of(name)
    try:
        result = probes.order_probe(model, task, n=args.n)
        print(f"{name}: {result.summary()}")
        figure = result.figure()
    except ValueError as err:  # answers x-6 on (4,3) already: nothing to restore
        print(f"{name}: order probe undefined: {err}")
        figure = notice(f"{name}: order probe", f"undefined for this model:<br>{err}")
    print(f"  written {write_html(figure, args.out / f'order_{Path(name).name}.html')}")
