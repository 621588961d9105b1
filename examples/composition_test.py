"""Does the model carry the single-anchor intermediate g(x; a1)? The composition test
(an interchange intervention) on both shipped models.

    python examples/composition_test.py [MODEL ...]     (default: both shipped models; figures in out/probes/)

Reading: per residual-stream point (rows) and role (key, anchor1, anchor2, noise, last), the fraction of
prompt pairs (A into B) whose answer becomes g(g(x_A; a1_A); a2_B). A composing model has a
high site at anchor1 after the first attention layer; a lookup model none.
"""

import sys
from pathlib import Path

import models
import probes
from probes.figures import write_html

OUT = Path("out/probes")

for name in sys.argv[1:] or ["inferential", "symmetric"]:
    model, task = models.load(name), models.hooked.task_of(name)
    result = probes.composition_test(model, task, n=512)
    print(f"{name}: {result.summary()}")
    print(f"  written {write_html(result.figure(), OUT / f'composition_{Path(name).name}.html')}")
