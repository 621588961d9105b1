"""What a bench result was measured on, recorded in every bench/results/*.json.

The project's machines change from session to session (an Intel Xeon with AMX one day, an
AMD EPYC without it the next), and bf16 speed-ups depend on the CPU's matmul units, so a
ratio is only comparable to another measured on the same CPU."""

from __future__ import annotations

import os
import platform

import torch

from models.machine import bf16_matmul_units, cpu_flags


def describe() -> dict:
    """The machine as a bench result records it; call it again at the end of a bench for
    the load average after."""
    model, flags = cpu_flags()
    return {
        "cpu": model,
        "bf16_matmul": bf16_matmul_units(flags),
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0],
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
