"""`anchor-interp`: train, classify, report, probe and sweep from the command line."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import sys

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
                   help="HookedTransformerConfig override, e.g. --arch d_model=256 (repeatable)")
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

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    names = {f.name for f in dataclasses.fields(TrainConfig)} - {"arch", "task", "betas"}
    config = TrainConfig(arch=dict(args.arch), **{k: v for k, v in vars(args).items() if k in names})
    result, card = train_to_folder(config, args.out, overwrite=args.overwrite, progress=not args.quiet)
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
                                   "dataset_size, ...) or HookedTransformerConfig field (d_model, ...).")
    p.add_argument("--db", required=True, help="the sweep's SQLite file (created; with --resume, continued)")
    p.add_argument("--spec", help="TOML grid file, or the name of a shipped one (default: models/sweeps/default.toml)")
    p.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2,...",
                   help="a swept axis, e.g. --grid gamma=0.3,0.5,0.8 (repeatable; replaces the --spec file's)")
    p.add_argument("--set", dest="fixed", action="append", default=[], metavar="NAME=VALUE",
                   help="a setting shared by every cell, e.g. --set max_steps=1500 (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue the sweep in --db (its own grid unless one is given, "
                   "which must then match); finished cells are never rerun, failed ones are retried")
    p.add_argument("--no-retry-failed", dest="retry_failed", action="store_false", help="with --resume: leave failed cells alone")
    p.add_argument("--executor", choices=("local", "ray"), default="local", help="local process pool (default) or Ray")
    p.add_argument("--address", help="Ray cluster address (e.g. auto, or ray://host:10001); default: a local Ray instance")
    p.add_argument("--workers", type=int, help="cells run at once (default: local, one per core; Ray, cluster CPUs / threads)")
    p.add_argument("--threads", type=int, help="torch threads per cell (default: local, cores / workers; Ray, 1)")
    p.add_argument("--keep-checkpoints", action="store_true", help="also save every model, in <db>.checkpoints/cell-<id>")
    p.add_argument("--dry-run", action="store_true", help="print the grid and stop")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_run_sweep)


def _run_sweep(args: argparse.Namespace) -> None:
    import shlex

    from models.sweep import SweepSpec, SweepStore, run_sweep

    base = SweepSpec.from_toml(args.spec) if args.spec else None
    spec = SweepSpec.parse(args.grid, args.fixed, base) if args.grid or args.fixed else base
    if args.dry_run:
        if spec is None:
            store = SweepStore(args.db)
            spec, counts = store.spec(), store.counts()
            store.close()
            print(f"{args.db}: {counts}")
        print(spec.describe())
        return
    if spec is None and not args.resume:
        raise ValueError("give a grid (--spec FILE, --grid NAME=V1,V2,...) or --resume an existing --db")
    resume_command = shlex.join(["anchor-interp", "sweep", "--db", args.db, "--resume"])
    command = shlex.join(["anchor-interp", "sweep", "--db", args.db, *(["--spec", args.spec] if args.spec else []),
                          *[a for g in args.grid for a in ("--grid", g)], *[a for f in args.fixed for a in ("--set", f)]])
    try:
        summary = run_sweep(spec, args.db, resume=args.resume, executor=args.executor, workers=args.workers,
                            threads=args.threads, address=args.address, keep_checkpoints=args.keep_checkpoints,
                            retry_failed=args.retry_failed, progress=not args.quiet, command=command)
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished cells are saved in {args.db}; continue with: {resume_command}", file=sys.stderr)
        raise SystemExit(130) from None
    print(f"{summary.path}: {summary.done}/{summary.total} cells done, {summary.failed} failed "
          f"({summary.ran} run now in {summary.seconds:.0f} s); figures: anchor-interp report {summary.path}")
    for cell_id, error in summary.errors.items():
        print(f"  cell {cell_id} failed: {error}", file=sys.stderr)
    if summary.failed:
        print(f"retry the failed cells with: {resume_command}", file=sys.stderr)


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
    p.set_defaults(run=_run_report)


def _run_report(args: argparse.Namespace) -> None:
    from interp.report import build_report, classification_table, table_text

    if args.flow_prompts < 1:
        raise ValueError(f"--flow-prompts must be >= 1, got {args.flow_prompts}")
    out, analyses = build_report(args.targets, args.out, n_flow_prompts=args.flow_prompts, probes=args.probes, progress=not args.quiet, models=args.models)
    if analyses:
        print(table_text(classification_table(analyses)))
    print(f"report written to {out}")


def _add_probe(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("probe", help="a causal probe of one model: ablation, patching, order, composition",
                       description="Run a causal probe, print its summary and optionally write its figure as self-contained HTML.")
    p.add_argument("name", choices=("ablation", "patching", "order", "composition"), help="which probe")
    p.add_argument("model", help="checkpoint folder or shipped name")
    p.add_argument("--out", help="write the figure to this HTML file")
    p.add_argument("-n", type=int, default=512, help="prompts (pairs) per run (default %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--key-pos", type=int, default=None, help="only prompts with the key at this position (default: all)")
    p.add_argument("--ablation", default="mean", help="zero, mean or resample (default %(default)s)")
    p.add_argument("--site", action="append", default=[], metavar="KIND:LAYER[:pos=P][:head=H]",
                   help="ablation: ablate these sites together instead of sweeping every site (repeatable)")
    p.add_argument("--pairs", default="change_key", help="patching: swap_order, change_anchor1, change_anchor2, change_key or move_key (default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=_run_probe)


def _run_probe(args: argparse.Namespace) -> None:
    import models
    from models.files import output_file
    from probes.figures import write_html
    from probes.report import run_probe

    if args.out:
        output_file(args.out)  # a bad --out is refused before the probe runs
    result = run_probe(args.name, models.load(args.model), models.hooked.task_of(args.model), n=args.n, seed=args.seed, key_pos=args.key_pos,
                       ablation=args.ablation, sites=args.site, pairs=args.pairs, progress=not args.quiet)
    print(result.summary())
    if args.out:
        print(f"figure written to {write_html(result.figure(), args.out)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anchor-interp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_classify(sub)
    _add_report(sub)
    _add_sweep(sub)
    _add_probe(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, OSError) as err:
        # Bad input (or an output that cannot be written): one clear line, not a traceback.
        print(f"anchor-interp {args.command}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
