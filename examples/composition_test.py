"""Does the model carry the single-anchor intermediate g(x; a1)? The composition test
(an interchange intervention) on both shipped models.

    python examples/composition_test.py [--models inferential symmetric] [--out out/probes]

Reading: per residual-stream point (rows) and role (key, a1, a2, last, noise), the fraction of
prompt pairs (A into B) whose answer becomes g(g(x_A; a1_A); a2_B). A composing model has a
high site at a1 after the first attention layer; a lookup model none.
"""

import argparse
from pathlib import Path

import models
import probes
from probes.figures import write_html

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--models", nargs="+", default=["inferential", "symmetric"], help="shipped names or checkpoint folders")
parser.add_argument("--out", default="out/probes", help="folder for the HTML figures")
args = parser.parse_args()

for name in args.models:
    model, task = models.load(name), models.hooked.task_of(name)
    result = probes.composition_test(model, task, n=512)
    print(f"{name}: {result.summary()}")
    print(f"  written {write_html(result.figure(), Path(args.out) / f'composition_{Path(name).name}.html')}")
