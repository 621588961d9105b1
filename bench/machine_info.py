"""What a bench result was measured on, recorded in every bench/results/*.json.

The project's machines change from session to session (an Intel Xeon with AMX one day, an
AMD EPYC without it the next), and bf16 speed-ups depend on the CPU's matmul units, so a
ratio is only comparable to another measured on the same CPU."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch


def cpu_flags() -> tuple[str, set[str]]:
    """The CPU's model name and feature flags (Linux /proc/cpuinfo; elsewhere the
    platform's processor string and no flags)."""
    model, flags = platform.processor() or platform.machine(), set()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
            if model and flags:
                break
    return model, flags


def describe() -> dict:
    """The machine as a bench result records it; call it again at the end of a bench for
    the load average after."""
    model, flags = cpu_flags()
    bf16_units = "AMX" if "amx_bf16" in flags else "AVX-512 BF16" if "avx512_bf16" in flags else "none (bf16 emulated)"
    return {
        "cpu": model,
        "bf16_matmul": bf16_units,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min": os.getloadavg()[0],
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
