"""Shared test setup.

One torch thread per test process: results do not depend on the machine's core count, and
on a small CI machine (2 cores) the tests' own threads do not compete with the worker
processes that the sweep tests start (OpenMP oversubscription makes every op wait).
"""

import torch

torch.set_num_threads(1)
