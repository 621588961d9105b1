"""`anchor-interp`: train, classify, report, probe and sweep from the command line."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import sys
from pathlib import Path

SHIPPED = ("inferential", "symmetric")


def _arch_value(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--arch takes KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw  # a bare string such as act_fn=gelu
    return key, value


def _add_train(sub: argparse._SubParsersAction) -> None:
    from models.train import TrainConfig

    p = sub.add_parser("train", help="train one model and write a checkpoint folder",
                       description="Train a model on the anchor task; every setting defaults to the shipped recipe.")
    defaults = TrainConfig()
    p.add_argument("--gamma", type=float, default=defaults.gamma, help="init rate: std = fan_in^-gamma (default %(default)s)")
    p.add_argument("--layers", dest="n_layers", type=int, default=defaults.n_layers, help="transformer blocks (default %(default)s)")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace a different model already in --out")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--arch", type=_arch_value, action="append", default=[], metavar="KEY=VALUE",
                   help="model config override (a HookedTransformerConfig / TransformerBridgeConfig field), e.g. --arch d_model=256 (repeatable)")
    skip = {"gamma", "n_layers", "seed", "arch", "task", "betas"}
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if isinstance(default, bool):
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default)
        else:
            kind = int if f.name == "dataset_size" else type(default)
            p.add_argument(flag, dest=f.name, type=kind, default=default, help=f"(default {default})")
    p.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> None:
    import torch

    from models.train import TrainConfig, train_to_folder
    from probes.solution import card_metrics

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    names = {f.name for f in dataclasses.fields(TrainConfig)} - {"arch", "task", "betas"}
    config = TrainConfig(arch=dict(args.arch), **{k: v for k, v in vars(args).items() if k in names})
    result, card = train_to_folder(config, args.out, card_metrics, overwrite=args.overwrite, progress=not args.quiet)
    m = card["metrics"]
    print(f"{args.out}: {m['label']} after {result.steps} steps, {card['wall_seconds']:.0f} s | "
          f"seen test keys {m['seen_test_keys']:.3f} | (4,3) inferential {m['inferential_test_keys']:.3f} "
          f"symmetric {m['symmetric_test_keys']:.3f}")


def _add_classify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify", help="which solution a model learned")
    p.add_argument("models", nargs="*", default=list(SHIPPED), help="checkpoint folders or shipped names (default: both shipped)")
    p.set_defaults(run=_run_classify)


def _run_classify(args: argparse.Namespace) -> None:
    import models
    import probes

    for name in args.models:
        model = models.load(name)
        print(f"== {name}\n{probes.classify(model, models.hooked.task_of(name))}\n")


def _add_sweep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="train a grid of models (phase diagram) into a SQLite file; resumable",
                       description="Train one model per cell of a grid and record what each learned in one SQLite "
                                   "file. Axes: any TrainConfig field (gamma, n_layers, seed, lr, weight_decay, "
                                   "dataset_size, ...) or model config field (d_model, ...).")
    p.add_argument("--db", required=True, help="the sweep's SQLite file (created; with --resume, continued)")
    p.add_argument("--spec", help="TOML grid file, or the name of a shipped one (default without --grid: the phase diagram, models/sweeps/phase.toml)")
    p.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2,...",
                   help="a swept axis, e.g. --grid gamma=0.3,0.5,0.8 (repeatable; replaces the --spec file's)")
    p.add_argument("--set", dest="fixed", action="append", default=[], metavar="NAME=VALUE",
                   help="a setting shared by every cell, e.g. --set max_steps=1500 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the sweep in --db (its own grid unless one is given, "
                   "which must then match); finished cells are never rerun, failed ones are retried")
    p.add_argument("--no-retry-failed", dest="retry_failed", action="store_false", help="with --resume: leave failed cells alone")
    p.add_argument("--only", action="append", default=[], metavar="NAME=VALUE",
                   help="run only the cells with this swept value, e.g. --only n_layers=3 (repeatable); the rest wait")
    p.add_argument("--executor", choices=("local", "ray", "stacked"), default="local", help="local process pool (default), Ray, "
                   "or stacked: many runs at once on one --device (a GPU), probed by a local pool")
    _add_stacked_options(p)
    p.add_argument("--address", help="Ray cluster address (e.g. auto, or ray://host:10001); default: a local Ray instance")
    p.add_argument("--workers", type=int, help="cells run at once (default: local, one per core; Ray, cluster CPUs / threads)")
    p.add_argument("--threads", type=int, help="torch threads per cell (default: local, cores / workers; Ray, 1)")
    p.add_argument("--keep-checkpoints", action="store_true", help="also save every model, in <db>.checkpoints/cell-<id>")
    p.add_argument("--dry-run", action="store_true", help="print the grid and stop")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_run_sweep)


def _sweep_spec(args: argparse.Namespace):
    """The grid to run: --spec (default: the shipped phase.toml unless --grid is given) with
    --grid/--set over it; None (the database's own grid) to continue or describe a --db."""
    from models.sweep import DEFAULT_SPEC, SweepSpec

    if not (args.spec or args.grid or args.fixed) and (args.resume or args.dry_run and Path(args.db).exists()):
        return None
    base = SweepSpec.from_toml(args.spec or DEFAULT_SPEC) if args.spec or not args.grid else None
    return SweepSpec.parse(args.grid, args.fixed, base) if args.grid or args.fixed else base


def _only(items: list[str]) -> dict:
    from models.sweep import assignment, canonical_name, parse_value

    return {canonical_name(name): parse_value(value) for name, value in (assignment(item, "--only") for item in items)}


def _run_sweep(args: argparse.Namespace) -> int:
    import shlex

    from interp.sweep import run_sweep
    from models.sweep import SweepStore

    spec = _sweep_spec(args)
    if args.dry_run:
        if spec is None:
            store = SweepStore(args.db)
            spec, counts = store.spec(), store.counts()
            store.close()
            print(f"{args.db}: {counts}")
        print(spec.describe())
        return 0
    resume_command = shlex.join(["anchor-interp", "sweep", "--db", args.db, "--resume"])
    command = shlex.join(["anchor-interp", "sweep", "--db", args.db, *(["--spec", args.spec] if args.spec else []),
                          *[a for g in args.grid for a in ("--grid", g)], *[a for f in args.fixed for a in ("--set", f)]])
    try:
        summary = run_sweep(spec, args.db, resume=args.resume, executor=args.executor, workers=args.workers,
                            threads=args.threads, address=args.address, keep_checkpoints=args.keep_checkpoints,
                            retry_failed=args.retry_failed, progress=not args.quiet, command=command,
                            device=args.device, stack_size=args.stack_size, only=_only(args.only))
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished cells are saved in {args.db}; continue with: {resume_command}", file=sys.stderr)
        raise SystemExit(130) from None
    print(f"{summary.path}: {summary.done}/{summary.total} cells done, {summary.failed} failed "
          f"({summary.ran} run now in {summary.seconds:.0f} s); figures: anchor-interp report {summary.path}")
    if not summary.failed:
        return 0
    # A sweep with failed cells did not do its job: say so in one line and exit non-zero.
    first = next(iter(summary.errors.items()), None)  # none when --no-retry-failed left old failures alone
    detail = f" (first: cell {first[0]}: {first[1]})" if first else ""
    print(f"anchor-interp sweep: error: {summary.failed} of {summary.total} cells failed{detail}; "
          f"errors are in {args.db}; retry them with: {resume_command}", file=sys.stderr)
    return 1


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="one HTML report: classification and every figure, models side by side",
                       description="Write one self-contained HTML report (opens offline) and print the classification table. "
                                   "Arguments ending in .db are sweep databases, rendered as phase diagrams.")
    p.add_argument("targets", nargs="*", metavar="MODEL_OR_SWEEP.db",
                   help="checkpoint folders or shipped names (no model given: both shipped), and sweep databases")
    p.add_argument("--out", default="report.html", help="HTML file to write (default %(default)s)")
    p.add_argument("--flow-prompts", type=int, default=2000, help="random prompts averaged in the flow figures (default %(default)s)")
    p.add_argument("--no-probes", dest="probes", action="store_false", help="leave out the causal probes (the slowest sections)")
    p.add_argument("--no-models", dest="models", action="store_false", help="only the sweep databases given, no model sections")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--markdown", action="store_true", help="also print each sweep database's table as README markdown")
    p.set_defaults(run=_run_report)


def _run_report(args: argparse.Namespace) -> None:
    from interp.report import build_report, classification_table, table_text
    from interp.sweep_report import mechanism_summary, phase_markdown

    if args.flow_prompts < 1:
        raise ValueError(f"--flow-prompts must be >= 1, got {args.flow_prompts}")
    out, analyses = build_report(args.targets, args.out, n_flow_prompts=args.flow_prompts, probes=args.probes, progress=not args.quiet, models=args.models)
    if analyses:
        print(table_text(classification_table(analyses)))
    for target in args.targets:
        if str(target).endswith(".db"):
            print(mechanism_summary(target))
            if args.markdown:
                print(phase_markdown(target))
    print(f"report written to {out}")


def _add_probe(sub: argparse._SubParsersAction) -> None:
    from probes.report import PROBES

    p = sub.add_parser("probe", help="a causal probe of one model: " + ", ".join(PROBES),
                       description="Run a causal probe, print its summary and optionally write its figure as self-contained HTML.")
    p.add_argument("name", choices=PROBES, help="which probe (das: distributed alignment search; paths: path patching)")
    p.add_argument("model", help="checkpoint folder or shipped name")
    p.add_argument("--out", help="write the figure to this HTML file")
    p.add_argument("-n", type=int, default=512, help="prompts (pairs) per run; das: 2n training and n/2 held-out pairs (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--key-pos", type=int, default=None, help="only prompts with the key at this position (default: all)")
    p.add_argument("--ablation", default="mean", help="zero, mean or resample (default %(default)s)")
    p.add_argument("--site", action="append", default=[], metavar="KIND:LAYER[:pos=P][:head=H]",
                   help="ablation: ablate these sites together instead of sweeping every site; das: search only these "
                        "sites, written KIND:LAYER@ROLE, e.g. attn_out:0@anchor2 (repeatable)")
    p.add_argument("--dims", type=_int_list, default=None, metavar="K1,K2,...", help="das: subspace sizes to try (default 1,2,4,8,16)")
    p.add_argument("--json", action="store_true", help="das, paths: also print the summary as one JSON line (last line)")
    p.add_argument("--pairs", default="change_key", help="patching: swap_order, change_anchor1, change_anchor2, change_anchors, change_key or move_key (default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_run_probe)


def _run_probe(args: argparse.Namespace) -> None:
    import models
    from models.files import output_file
    from probes.figures import write_html
    from probes.report import run_probe

    import json

    from probes.das import DIMS

    if args.out:
        output_file(args.out)  # a bad --out is refused before the probe runs
    if args.json and args.name not in ("das", "paths"):
        raise ValueError(f"--json is for the das and paths probes, not {args.name}")
    result = run_probe(args.name, models.load(args.model), models.hooked.task_of(args.model), n=args.n, seed=args.seed, key_pos=args.key_pos,
                       ablation=args.ablation, sites=args.site, pairs=args.pairs, dims=args.dims or DIMS, progress=not args.quiet)
    print(result.summary())
    if args.out:
        print(f"figure written to {write_html(result.figure(), args.out)}")
    if args.json:
        print(json.dumps(result.to_dict()))


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, e.g. 1,4,16, got {text!r}") from None


def _add_seeds(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("seeds", help="seed statistics of a recipe: how often each gamma gives its solution",
                       description="Train one model per (gamma, seed) into a sweep database (resumable: finished runs are "
                                   "kept) and print, per gamma: label counts, the share of runs with the solution and "
                                   "of clean runs (>= 0.95 on (4,3) test keys), with exact binomial 95%% intervals, and "
                                   "accuracy by key position. Seed ranges are declared in models/sweeps/seeds.toml.")
    p.add_argument("--db", required=True, help="sweep database to write (continued if it exists)")
    p.add_argument("--gamma", help="comma-separated gammas (default 0.8,0.3; with --summary: only these gammas' runs)")
    p.add_argument("--seeds", help="a declared range (tuning, validation, spot_check), FIRST-LAST, or a comma list "
                   "(default validation; with --summary: only these seeds' runs)")
    p.add_argument("--layers", dest="n_layers", type=int, default=None, help="transformer blocks (default: the recipe's)")
    p.add_argument("--set", dest="fixed", action="append", default=[], metavar="NAME=VALUE",
                   help="a recipe setting for every run, e.g. --set lr=5e-4 (repeatable)")
    p.add_argument("--expect", action="append", default=[], metavar="GAMMA=SOLUTION",
                   help="the solution a gamma should give, e.g. 0.8=inferential (default: each gamma's most common label)")
    p.add_argument("--check", metavar="REFERENCE.db", help="also compare every run with the same run in this database")
    p.add_argument("--compare", nargs="+", metavar="OTHER.db", help="also compare the label counts with the runs of the same "
                   "seeds made another way (e.g. fp32 against bf16) in these databases (one recipe, split over several): same "
                   "labels, and Fisher's exact test")
    p.add_argument("--keep-checkpoints", action="store_true", help="also save every model, in <db>.checkpoints/cell-<id>, "
                   "to look at a failing seed with the probes")
    p.add_argument("--summary", action="store_true", help="only print the statistics of --db, train nothing")
    p.add_argument("--cards", nargs="+", metavar="MODEL", help="write each model card's validation distribution (its "
                   "gamma's runs in --db, which must use the card's recipe) into the card")
    p.add_argument("--histories", action="store_true", help="also print, from the runs' training histories, when "
                   "each group's runs fit the seen pairs, how many reached their solution, and which lost it later")
    p.add_argument("--replay-patience", metavar="N[,N...]", help="also replay early stopping with these shorter patiences on the "
                   "stored training histories: the steps each would save and the labels it would change")
    p.add_argument("--json", action="store_true", help="also print the statistics as one JSON line (last line)")
    p.add_argument("--markdown", action="store_true", help="also print them as a README table")
    p.add_argument("--workers", type=int, help="runs at once (default: one per core)")
    p.add_argument("--threads", type=int, help="torch threads per run (default: cores / workers)")
    p.add_argument("--executor", choices=("local", "stacked"), default="local", help="local process pool (default), or "
                   "stacked: many runs at once on one --device (a GPU), probed by a local pool")
    _add_stacked_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_run_seeds)


def _add_stacked_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cuda", help="with --executor stacked: the torch device that trains (default %(default)s)")
    p.add_argument("--stack-size", type=int, default=64, help="with --executor stacked: runs trained at once (default %(default)s)")


def _run_seeds(args: argparse.Namespace) -> int:
    import json
    import shlex

    import models
    from interp.seeds import (card_validation, compare_runs, compare_table, format_groups, format_histories, format_replay, markdown_table, replay_patience,
                              reproduced, seed_groups, seed_list, solution_histories)
    from interp.sweep import run_sweep
    from models.files import write_text_atomic
    from models.sweep import SweepSpec, results

    expect, failed = {}, 0
    for item in args.expect:
        gamma, _, solution = item.partition("=")
        if solution not in ("inferential", "symmetric"):
            raise ValueError(f"--expect takes GAMMA=inferential or GAMMA=symmetric, got {item!r}")
        expect[float(gamma)] = solution
    if not args.summary:
        args.gamma, args.seeds = args.gamma or "0.8,0.3", args.seeds or "validation"
        grid = [f"seed={','.join(map(str, seed_list(args.seeds)))}", f"gamma={args.gamma}"]
        fixed = list(args.fixed) + ([f"n_layers={args.n_layers}"] if args.n_layers else [])
        command = shlex.join(["anchor-interp", "seeds", "--db", args.db, "--gamma", args.gamma, "--seeds", args.seeds,
                              *([f"--layers={args.n_layers}"] if args.n_layers else []), *[a for f in args.fixed for a in ("--set", f)]])
        summary = run_sweep(SweepSpec.parse(grid, fixed), args.db, resume=True, workers=args.workers, threads=args.threads,
                            keep_checkpoints=args.keep_checkpoints, progress=not args.quiet, command=command,
                            executor=args.executor, device=args.device, stack_size=args.stack_size)
        for cell_id, error in summary.errors.items():
            print(f"  run {cell_id} failed: {error}", file=sys.stderr)
        failed = summary.failed
    _, rows = results(args.db)
    if args.summary and args.seeds:  # a subset, e.g. the seeds another database shares
        chosen = set(seed_list(args.seeds))  # read the protocol file once, not per row
        rows = [r for r in rows if r["seed"] in chosen]
    if args.summary and args.gamma:
        gammas = {float(g) for g in args.gamma.split(",")}
        rows = [r for r in rows if r["gamma"] in gammas]
    groups = seed_groups(rows, expect)
    print(format_groups(groups))
    for group in groups if args.histories else []:
        print(format_histories(group, solution_histories(args.db, group, rows)))
    for group in groups if args.replay_patience else []:
        print(f"== {group.name}: early stopping replayed")
        for patience in map(int, args.replay_patience.split(",")):
            print(format_replay(group, patience, replay_patience(args.db, group, rows, patience)))
    if args.check:
        same, total, differ = reproduced(rows, results(args.check)[1])
        print(f"reproduced {same} of {total} runs also in {args.check}" + (f"; differ: {differ}" if differ else ""))
    for name in args.cards or []:
        card = models.card(name)
        card["validation"] = card_validation(card, groups, rows, args.db)
        path = write_text_atomic(models.hooked.resolve(name) / models.hooked.CARD_FILE, json.dumps(card, indent=2) + "\n")
        v = card["validation"]
        print(f"{path}: validation {v['solution']} {v['solution_runs']}/{v['runs']}, clean {v['clean_runs']}/{v['runs']}")
    other_rows = [row for other in args.compare or [] for row in results(other)[1]]
    other_name = " + ".join(Path(other).name for other in args.compare or [])
    comparisons = compare_runs(rows, other_rows, expect) if args.compare else []
    for c in comparisons:
        name = ", ".join(f"{k} {v}" for k, v in c["setting"].items())
        print(f"{name}: {c['runs']} seeds in both; same label in {c['same_label']}; {c['solution']} "
              f"{c['solution_runs'][0]} here vs {c['solution_runs'][1]} in {other_name}, clean {c['clean_runs'][0]} vs "
              f"{c['clean_runs'][1]} (Fisher exact p = {c['fisher_p']:.2f})")
    if args.markdown:
        print(markdown_table(groups, args.db))
        if comparisons:
            print(compare_table(comparisons, Path(args.db).name, other_name))
    if args.json:
        print(json.dumps([g.to_dict() for g in groups]))
    return 1 if failed else 0  # like `sweep`: failed runs stay in the database, to retry by rerunning


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anchor-interp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_classify(sub)
    _add_report(sub)
    _add_sweep(sub)
    _add_probe(sub)
    _add_seeds(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.run(args)
    except (ValueError, OSError) as err:
        # Bad input (or an output that cannot be written): one clear line, not a traceback.
        print(f"anchor-interp {args.command}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
