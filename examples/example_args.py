"""The command line every example shares: `--help`, the models to run on (default: both
shipped), `--out` (the folder figures go to) and `--threads` (torch threads for this
process, default 1: on a shared machine one thread per process is fastest, and more threads
than free cores make every op wait). Parsed before torch is imported, so `--help` is
instant."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

SHIPPED = ["inferential", "symmetric"]


def example_args(doc: str, out: str, add: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """Parse the example's arguments (its docstring is the --help text), then set torch's
    thread count. `add` adds the example's own options."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=SHIPPED, help="checkpoint folders or shipped names (default: both shipped models)")
    parser.add_argument("--out", type=Path, default=Path(out), help="folder the HTML figures go to (default %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for this process (default %(default)s)")
    if add:
        add(parser)
    args = parser.parse_args()
    if args.threads < 1:
        parser.error(f"--threads must be >= 1, got {args.threads}")
    import torch

    torch.set_num_threads(args.threads)
    return args
