"""What a run was made on. bf16 kernels round differently on different CPUs (AMX on an
Intel Xeon, AVX-512 BF16 on an AMD EPYC), so a byte-identical rerun needs the same CPU as
well as the same seed, settings, thread count and versions: cards, sweep databases and
bench results record it."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch


def cpu_flags() -> tuple[str, set[str]]:
    """The CPU's model name and feature flags (Linux /proc/cpuinfo; elsewhere the
    architecture and no flags)."""
    model, flags = platform.machine(), set()
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


def bf16_matmul_units(flags: set[str]) -> str:
    if not flags:  # not Linux x86, or no /proc/cpuinfo flags line (aarch64 names them "Features")
        return "unknown"
    return "AMX" if "amx_bf16" in flags else "AVX-512 BF16" if "avx512_bf16" in flags else "none (bf16 emulated)"


def package_version(package: str) -> str:
    try:
        return version(package.replace("_", "-"))
    except PackageNotFoundError:
        return "unknown"


def run_versions() -> dict[str, str]:
    """Software and CPU of a training run, as its card and its sweep row record them
    (cards and rows made before 2026-12-01's eighth session lack `cpu` and `bf16_matmul`).
    A stacked sweep trains on its device and classifies on the CPU: there `cpu` is the
    classifying host and the row's `train_device` names the trainer."""
    model, flags = cpu_flags()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformer_lens": package_version("transformer_lens"),
        "machine": platform.machine(),
        "cpu": model,
        "bf16_matmul": bf16_matmul_units(flags),
    }
