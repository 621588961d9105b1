"""Probe speed on this CPU, measured side by side in one run.

(a) Activation patching over every layer x position (resid_pre, attn_out, mlp_out) and
    every head x position (z) for 512 prompt pairs, one forward per site over all pairs:
    `probes.patch_sweep` against the same sweep through `transformer_lens.patching` on the
    same inputs (the same metric, results checked equal), interleaved in rounds so that
    machine noise hits both alike. Target: under 10 s, within 1.5x of TransformerLens.
(b) Wall time of each report section and of `probes.report_sections` for both shipped
    models (the whole HTML report of both must finish under 60 s).

    python bench/probe_speed.py [--model inferential] [--rounds 3] [--threads 1 2]

Uses the shipped models; a checkpoint folder can stand in (--model, --models). Writes
bench/results/probe_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # transformer_lens.patching draws a bar per sweep

import torch

from machine_info import describe
from transformer_lens import patching as tl_patching

import models
import probes
from models.files import write_text_atomic
from models.hooked import task_of
from probes.patching import logit_diff, make_pairs, patch_sweep
from probes.solution import predict

RESULTS = Path(__file__).parent / "results" / "probe_speed.json"
MACHINE_BEFORE = describe()  # its load average: other processes on the machine; read the timings with it
KINDS = ("resid_pre", "attn_out", "mlp_out", "z")


def differing_pairs(model, task, n: int):
    """n change-the-key pairs on which the model's answers differ (the metric is defined)."""
    pairs = make_pairs(task, "change_key", 4 * n, seed=0)
    differ = (predict(model, pairs.clean.tokens) != predict(model, pairs.corrupted.tokens)).nonzero().flatten()[:n]
    if len(differ) < n:
        raise SystemExit(f"only {len(differ)} of {4 * n} pairs change the model's answer; is it trained?")
    return pairs.subset(differ)


def ours(model, pairs):
    start = time.perf_counter()
    result = patch_sweep(model, pairs, KINDS, progress=False)
    return time.perf_counter() - start, result


def transformer_lens(model, pairs, clean_answer, corrupted_answer):
    """The same sweep as TransformerLens' tutorials write it: cache the clean run, then one
    get_act_patch_* per activation with the same (mean logit difference) metric."""
    start = time.perf_counter()

    def metric(logits):
        return logit_diff(logits[:, -1], clean_answer, corrupted_answer).mean()

    _, clean_cache = model.run_with_cache(pairs.clean.tokens)
    out = {
        "resid_pre": tl_patching.get_act_patch_resid_pre(model, pairs.corrupted.tokens, clean_cache, metric),  # [layer, pos]
        "attn_out": tl_patching.get_act_patch_attn_out(model, pairs.corrupted.tokens, clean_cache, metric),
        "mlp_out": tl_patching.get_act_patch_mlp_out(model, pairs.corrupted.tokens, clean_cache, metric),
        "z": tl_patching.get_act_patch_attn_head_out_by_pos(model, pairs.corrupted.tokens, clean_cache, metric),  # [layer, pos, head]
    }
    return time.perf_counter() - start, out


def max_difference(result, theirs) -> float:
    mean_diff = result.patched_diff.mean(-1)  # [row, pos]
    worst = 0.0
    for r, row in enumerate(result.rows):
        expected = theirs[row.kind][row.layer, :, row.head] if row.head is not None else theirs[row.kind][row.layer]
        worst = max(worst, (mean_diff[r] - expected).abs().max().item())
    return worst


def bench_patching(name: str, n: int, rounds: int) -> dict:
    model = models.load(name)
    pairs = differing_pairs(model, task_of(name), n)
    times = {"ours": [], "transformer_lens": []}
    worst = 0.0
    for _ in range(rounds):
        seconds, result = ours(model, pairs)
        times["ours"].append(seconds)
        seconds, theirs = transformer_lens(model, pairs, result.clean_answer, result.corrupted_answer)
        times["transformer_lens"].append(seconds)
        worst = max(worst, max_difference(result, theirs))
    n_sites = len(result.rows) * model.cfg.n_ctx
    best = {k: min(v) for k, v in times.items()}
    return {
        "model": str(name),
        "pairs": len(pairs),
        "sites": n_sites,
        "forwards_per_sweep": n_sites,
        "seconds": times,
        "best_seconds": best,
        "ratio_ours_over_transformer_lens": best["ours"] / best["transformer_lens"],
        "ratio_median": statistics.median(times["ours"]) / statistics.median(times["transformer_lens"]),
        "max_abs_difference_of_mean_logit_diff": worst,
        "under_10_s": best["ours"] < 10,
        "within_1_5x": best["ours"] / best["transformer_lens"] <= 1.5,
    }


def bench_report(names: list[str]) -> dict:
    sections, total = {}, 0.0
    for name in names:
        model, task = models.load(name), task_of(name)
        start = time.perf_counter()
        out = probes.report_sections(str(name), model, task)
        seconds = time.perf_counter() - start
        total += seconds
        sections[str(name)] = {"seconds": seconds, "sections": [title for title, _ in out]}
    return {"models": sections, "total_seconds": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="inferential", help="model for the patching sweep (default %(default)s)")
    parser.add_argument("--models", nargs="+", default=["inferential", "symmetric"], help="models for the report sections")
    parser.add_argument("--pairs", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="torch thread counts to measure, each in turn (default: 1 2). On a loaded machine more "
                             "threads than free cores make every small op wait for a descheduled thread")
    args = parser.parse_args()

    runs = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        patching = bench_patching(args.model, args.pairs, args.rounds)
        print(
            f"{threads} thread(s): patching sweep, {patching['pairs']} pairs x {patching['sites']} sites: ours {patching['best_seconds']['ours']:.2f} s, "
            f"transformer_lens.patching {patching['best_seconds']['transformer_lens']:.2f} s, "
            f"ratio {patching['ratio_ours_over_transformer_lens']:.2f} (max |difference| {patching['max_abs_difference_of_mean_logit_diff']:.1e})"
        )
        report = bench_report(args.models)
        for name, row in report["models"].items():
            print(f"{threads} thread(s): report_sections({name}): {row['seconds']:.1f} s")
        runs.append({"threads": threads, "patching": patching, "report_sections": report, "load_average_1min_after": os.getloadavg()[0]})
    results = {
        "runs": runs,
        "machine": MACHINE_BEFORE,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_text_atomic(RESULTS, json.dumps(results, indent=2))
    print(f"written {RESULTS}")


if __name__ == "__main__":
    main()
