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

    if args.threads:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="anchor-interp", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_classify(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, FileExistsError, FileNotFoundError) as err:
        # Bad input: one clear line, not a traceback.
        print(f"anchor-interp {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
