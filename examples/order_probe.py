"""Which sites carry the anchor ORDER? Patch the (3,4) run into the (4,3) run site by site and
see which sites turn x-10 into x-6, on both shipped models.

    python examples/order_probe.py [MODEL ...]     (default: both shipped models; figures in out/probes/)

The probe is undefined for a model that answers x-6 on (4,3) already (the symmetric one):
order makes no difference to it, and the script says so.
"""

import sys
from pathlib import Path

import models
import probes
from probes.figures import notice, write_html

OUT = Path("out/probes")

for name in sys.argv[1:] or ["inferential", "symmetric"]:
    model, task = models.load(name), models.hooked.task_of(name)
    try:
        result = probes.order_probe(model, task, n=512)
        print(f"{name}: {result.summary()}")
        figure = result.figure()
    except ValueError as err:  # answers x-6 on (4,3) already: nothing to restore
        print(f"{name}: order probe undefined: {err}")
        figure = notice(f"{name}: order probe", f"undefined for this model:<br>{err}")
    print(f"  written {write_html(figure, OUT / f'order_{Path(name).name}.html')}")
