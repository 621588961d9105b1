"""Seed statistics: how often does a recipe give its solution, over seeds?

A sweep over seeds (any sweep database: `models.sweep.results`) is grouped by every swept
setting but the seed. Each group gets its label counts, the share of runs that gave the
group's solution and the share that gave it cleanly (>= CLEAN on the (4,3) pair with test
keys), each with an exact (Clopper-Pearson) binomial 95% interval, and that solution's
accuracy at every key position, so a failure confined to one position (position 6, where
the last token is the second anchor) shows."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scipy.stats import binomtest, fisher_exact

from models.sweep import checkpoint_folder, config_json
from models.train import SEEN_FIT, TrainConfig, settled
from probes.solution import label_of

PROTOCOL = Path(__file__).resolve().parent.parent / "models" / "sweeps" / "seeds.toml"

CLEAN = 0.95  # a run is clean when its solution's (4,3) test-key accuracy reaches this
SOLUTIONS = ("inferential", "symmetric")


def seed_list(text: str) -> list[int]:
    """Seeds from a range declared in models/sweeps/seeds.toml (tuning, validation,
    spot_check), FIRST-LAST, or a comma-separated list."""
    ranges = tomllib.loads(PROTOCOL.read_text())["ranges"]
    try:
        if text in ranges:
            first, last = ranges[text]
        elif "-" in text:
            first, last = (int(part) for part in text.split("-"))
        else:
            return [int(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"seeds: give {', '.join(ranges)}, FIRST-LAST or a comma list of integers, got {text!r}") from None
    if last < first:
        raise ValueError(f"seeds: empty range {text!r}")
    return list(range(first, last + 1))


def reproduced(rows: list[dict[str, Any]], reference: list[dict[str, Any]]) -> tuple[int, int, list[int]]:
    """(runs whose metrics equal the reference run of the same config, runs that have a
    reference run, seeds that differ): finished runs only."""
    ref = {config_json(r["config"]): r["metrics"] for r in reference if r["status"] == "done"}
    shared = [r for r in rows if r["status"] == "done" and config_json(r["config"]) in ref]
    differ = [r["seed"] for r in shared if r["metrics"] != ref[config_json(r["config"])]]
    return len(shared) - len(differ), len(shared), differ


def interval(k: int, n: int) -> tuple[float, float]:
    """Exact binomial 95% confidence interval of k successes in n runs."""
    if n == 0:
        return (0.0, 1.0)
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    return (float(ci.low), float(ci.high))


@dataclass
class SeedGroup:
    setting: dict[str, Any]  # the swept settings this group shares (every axis but seed)
    solution: str  # the solution counted: the expected one if given, else the most common label
    seeds: list[int]  # finished runs
    pending: int  # cells of this group not finished (pending, running or failed)
    labels: dict[str, int]  # label -> runs
    accuracy: list[float]  # per run, the solution's (4,3) test-key accuracy, in seed order
    by_position: list[list[float]]  # per run, the solution's accuracy at key position 0..6
    steps: list[int] = field(default_factory=list)  # per run (where recorded), training steps
    train_seconds: list[float] = field(default_factory=list)  # ... and training wall time

    def cost(self) -> str:
        """Steps and training seconds a run: mean (min-max)."""
        def spread(values: list[float], fmt: str) -> str:
            return f"{sum(values) / len(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"
        if not self.steps:
            return "not recorded"
        cost = f"steps {spread(self.steps, '.0f')}"
        return cost + (f", training {spread(self.train_seconds, '.0f')} s" if self.train_seconds else "")

    @property
    def name(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in self.setting.items()) or "all runs"

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def k_solution(self) -> int:
        return self.labels.get(self.solution, 0)

    @property
    def k_clean(self) -> int:
        return sum(a >= CLEAN for a in self.accuracy)

    def position_means(self) -> list[float]:
        return [sum(col) / len(col) for col in zip(*self.by_position)] if self.by_position else []

    def position_clean(self) -> list[int]:
        """Runs with the solution at >= CLEAN at each key position."""
        return [sum(a >= CLEAN for a in col) for col in zip(*self.by_position)] if self.by_position else []

    def to_dict(self) -> dict[str, Any]:
        return {
            "setting": self.setting,
            "solution": self.solution,
            "runs": self.n,
            "pending": self.pending,
            "labels": self.labels,
            "solution_runs": self.k_solution,
            "solution_ci": interval(self.k_solution, self.n),
            "clean_runs": self.k_clean,
            "clean_ci": interval(self.k_clean, self.n),
            "seeds": self.seeds,
            "accuracy": self.accuracy,
            "position_mean": self.position_means(),
            "position_clean_runs": self.position_clean(),
            "steps": self.steps,
            "train_seconds": self.train_seconds,
        }


def seed_groups(rows: list[dict[str, Any]], expect: dict[float, str] | None = None) -> list[SeedGroup]:
    """Group sweep rows (models.sweep.results) by every swept setting except the seed.
    `expect` maps gamma to the solution to count (inferential/symmetric); without it, a
    group counts its most common label."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        setting = {k: v for k, v in row["params"].items() if k != "seed"}
        groups.setdefault(tuple(sorted(setting.items())), []).append(row)
    out = []
    for key, members in groups.items():
        done = sorted((r for r in members if r["status"] == "done"), key=lambda r: r["seed"])
        labels = Counter(r["label"] for r in done)
        gamma = members[0]["gamma"]
        solution = (expect or {}).get(gamma) or _most_common_solution(labels)
        out.append(SeedGroup(
            setting=dict(key),
            solution=solution,
            seeds=[r["seed"] for r in done],
            pending=len(members) - len(done),
            labels=dict(labels.most_common()),
            accuracy=[r["metrics"][f"{solution}_test_keys"] for r in done],
            by_position=[r["metrics"][f"{solution}_by_position"] for r in done],
            steps=[r["steps"] for r in done if r.get("steps") is not None],
            train_seconds=[r["train_seconds"] for r in done if r.get("train_seconds") is not None],
        ))
    return out


def _most_common_solution(labels: Counter) -> str:
    ranked = [label for label, _ in labels.most_common() if label in SOLUTIONS]
    return ranked[0] if ranked else SOLUTIONS[0]


def format_groups(groups: list[SeedGroup]) -> str:
    """The table the `seeds` command prints."""
    lines = []
    for g in groups:
        lo, hi = interval(g.k_solution, g.n)
        clo, chi = interval(g.k_clean, g.n)
        counts = ", ".join(f"{label} {k}" for label, k in g.labels.items()) or "none"
        lines += [
            f"== {g.name}: {g.n} runs" + (f" ({g.pending} not finished)" if g.pending else ""),
            f"   labels            {counts}",
            f"   {g.solution:<17s} {g.k_solution}/{g.n}  (95% CI {lo:.2f}-{hi:.2f})",
            f"   clean (>= {CLEAN})    {g.k_clean}/{g.n}  (95% CI {clo:.2f}-{chi:.2f})",
            f"   by key position   mean {' '.join(f'{a:.2f}' for a in g.position_means())}",
            f"                     clean runs {' '.join(str(k) for k in g.position_clean())}",
            f"   per seed          " + " ".join(f"{s}:{a:.2f}" for s, a in zip(g.seeds, g.accuracy)),
            f"   a run             {g.cost()}",
        ]
    return "\n".join(lines)


def markdown_table(groups: list[SeedGroup], name: str) -> str:
    """The groups as README table rows: `name` names the database and recipe."""
    rows = []
    for g in groups:
        setting = ", ".join(f"{k} {v}" for k, v in g.setting.items())
        lo, hi = interval(g.k_solution, g.n)
        clo, chi = interval(g.k_clean, g.n)
        rows.append(
            f"| {name} | {setting} | {g.n}{f' (+{g.pending} pending)' if g.pending else ''} | "
            + ", ".join(f"{label} {k}" for label, k in g.labels.items())
            + f" | {g.solution} {g.k_solution}/{g.n} ({lo:.2f}-{hi:.2f}) | {g.k_clean}/{g.n} ({clo:.2f}-{chi:.2f}) | "
            + " ".join(f"{a:.2f}" for a in g.position_means())
            + " |"
        )
    header = ("| database | setting | runs | labels | solution (95% CI) | clean >= 0.95 (95% CI) | mean accuracy by key position 0-6 |\n"
              "|---|---|---|---|---|---|---|")
    return "\n".join([header, *rows])


def card_validation(card: dict[str, Any], groups: list[SeedGroup], rows: list[dict[str, Any]], database: str) -> dict[str, Any]:
    """The validation distribution of a model card's command: its gamma's group in a seed
    database whose runs used the card's recipe (everything but the seed). Refuses a
    database made with another recipe, which would describe another command."""
    recipes = {json.dumps(r["config"].recipe(), sort_keys=True) for r in rows if r["gamma"] == card["gamma"]}
    card_recipe = TrainConfig.from_recipe(card["recipe"], seed=0).recipe()  # settings added since the card: their defaults
    if recipes != {json.dumps(card_recipe, sort_keys=True)}:
        raise ValueError(f"{database} has no runs of this card's recipe at gamma {card['gamma']}: it describes another command")
    group = next(g for g in groups if g.setting.get("gamma") == card["gamma"])
    d = group.to_dict()
    return {"database": database, **{k: d[k] for k in ("solution", "runs", "pending", "labels", "solution_runs", "solution_ci",
                                                       "clean_runs", "clean_ci", "position_mean", "seeds", "accuracy")}, "clean_threshold": CLEAN}


REACHED = 0.9  # a run reached its solution once an evaluation shows it at this accuracy (the spot-check bar)


def solution_histories(db: str | Path, group: SeedGroup, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The training course of the group's solution in each finished run, from its live
    evaluations (the database's history column; for runs recorded before it, the kept
    checkpoint's card, <db>.checkpoints/cell-<id>/card.json): the step the seen pairs were
    fit (test keys >= SEEN_FIT), the peak (4,3) accuracy of the solution and its step, and
    the final (classified) accuracy. A run that reached the solution and ended below
    REACHED lost it while training went on."""
    out = []
    for row in group_runs(group, rows):
        history = run_history(db, row)
        if history is None:
            continue
        peak = max(history, key=lambda h: h[group.solution])
        fit = next((h["step"] for h in history if h["seen_test"] >= SEEN_FIT), None)
        final = row["metrics"][f"{group.solution}_test_keys"]
        out.append({"seed": row["seed"], "fit_step": fit, "peak": peak[group.solution], "peak_step": peak["step"],
                    "final": final, "steps": row["steps"], "lost": peak[group.solution] >= REACHED > final})
    return sorted(out, key=lambda h: h["seed"])


def group_runs(group: SeedGroup, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The group's finished runs among `rows`."""
    return [row for row in rows if row["status"] == "done" and row["seed"] in group.seeds
            and {k: row["params"][k] for k in group.setting} == group.setting]


def run_history(db: str | Path, row: dict[str, Any]) -> list[dict[str, float]] | None:
    """A finished run's live evaluations: the database's, else its kept checkpoint's card,
    else None."""
    if row.get("history"):
        return row["history"]
    card = checkpoint_folder(db) / f"cell-{row['id']}" / "card.json"
    return json.loads(card.read_text())["history"] if card.is_file() else None


def format_histories(group: SeedGroup, histories: list[dict[str, Any]]) -> str:
    """The group's name, a line for its runs, then one per run that lost its solution."""
    if not histories:
        return f"== {group.name}\n   history           none stored (runs recorded before the history column, no kept checkpoints)"
    fits = sorted(h["fit_step"] for h in histories if h["fit_step"] is not None)
    reached = sum(h["peak"] >= REACHED for h in histories)
    lost = [h for h in histories if h["lost"]]
    fitted = f"seen pairs fit at step {fits[0]}-{fits[-1]} (median {fits[len(fits) // 2]})" if fits else "seen pairs never fit"
    lines = [f"== {group.name}",
             f"   history           {len(histories)} runs: {fitted}; {group.solution} >= {REACHED} at some evaluation in {reached}, lost later in {len(lost)}"]
    lines += [f"                     seed {h['seed']}: {h['peak']:.3f} at step {h['peak_step']} -> {h['final']:.3f} at {h['steps']}" for h in lost]
    return "\n".join(lines)


def replay_patience(db: str | Path, group: SeedGroup, rows: list[dict[str, Any]], patience: int) -> list[dict[str, Any]]:
    """Early stopping with a shorter `patience` (evaluations the solution must hold still),
    replayed on each run's stored live evaluations with the training's own rule
    (`models.train.settled`): where that run would have stopped and the label its live
    accuracies give there, against the same at its real stop. Exact, since training up to
    an earlier stop is the same run; a patience longer than the run's would need
    evaluations it never made, so it is refused."""
    out = []
    for row in group_runs(group, rows):
        history, config = run_history(db, row), row["config"]
        if history is None:
            continue
        if patience > config.patience:
            raise ValueError(f"patience {patience} is longer than the runs' own ({config.patience}): replay can only stop earlier")
        shorter = dataclasses.replace(config, patience=patience)
        stop = next((i for i in range(len(history)) if config.early_stop and history[i]["step"] >= config.min_steps
                     and settled(history[:i + 1], shorter)), len(history) - 1)
        real, replayed = history[-1], history[stop]
        out.append({"seed": row["seed"], "steps": real["step"], "replayed_steps": replayed["step"],
                    "label": label_of(real["seen_test"], real["inferential"], real["symmetric"]),
                    "replayed_label": label_of(replayed["seen_test"], replayed["inferential"], replayed["symmetric"])})
    return out


def format_replay(group: SeedGroup, patience: int, replay: list[dict[str, Any]]) -> str:
    """One line for the group: the steps kept, the labels kept, and each label changed."""
    if not replay:
        return f"   patience {patience:<8} no stored histories"
    kept = sum(r["replayed_label"] == r["label"] for r in replay)
    steps, replayed = sum(r["steps"] for r in replay), sum(r["replayed_steps"] for r in replay)
    changed = "".join(f"; seed {r['seed']} {r['label']} -> {r['replayed_label']} (step {r['replayed_steps']} not {r['steps']})"
                      for r in replay if r["replayed_label"] != r["label"])
    return (f"   patience {patience:<8} {len(replay)} runs: {replayed / steps:.0%} of the steps (mean {steps / len(replay):.0f} -> "
            f"{replayed / len(replay):.0f}); same label in {kept} of {len(replay)}{changed}")


def compare_runs(rows: list[dict[str, Any]], other: list[dict[str, Any]], expect: dict[float, str] | None = None) -> list[dict[str, Any]]:
    """Two seed databases of one grid run two ways (say bf16 and fp32): per setting, on the
    seeds finished in both, how many runs gave the same label, each side's count of the
    solution, and Fisher's exact test of the two counts (p: the chance of a difference at
    least this large if both ways gave the solution equally often)."""
    def finished(rs):
        return {json.dumps(r["params"], sort_keys=True): r for r in rs if r["status"] == "done"}

    mine, theirs = finished(rows), finished(other)
    shared = sorted(set(mine) & set(theirs))
    out = []
    for group in seed_groups([mine[k] for k in shared], expect):
        pairs = [(mine[k], theirs[k]) for k in shared
                 if {n: v for n, v in mine[k]["params"].items() if n != "seed"} == group.setting]
        n = len(pairs)
        k_mine = sum(a["label"] == group.solution for a, _ in pairs)
        k_theirs = sum(b["label"] == group.solution for _, b in pairs)
        clean = [sum(r["metrics"][f"{group.solution}_test_keys"] >= CLEAN for r in side) for side in zip(*pairs)] if n else [0, 0]
        _, p = fisher_exact([[k_mine, n - k_mine], [k_theirs, n - k_theirs]]) if n else (None, 1.0)
        out.append({"setting": group.setting, "solution": group.solution, "runs": n,
                    "same_label": sum(a["label"] == b["label"] for a, b in pairs),
                    "solution_runs": [k_mine, k_theirs], "clean_runs": clean, "fisher_p": float(p)})
    return out


def compare_table(comparisons: list[dict[str, Any]], name: str, other: str) -> str:
    """`compare_runs` as README table rows: `name` and `other` name the two databases."""
    header = ("| databases | setting | seeds in both | same label | solution: first / second | clean >= 0.95: first / second | Fisher exact p |\n"
              "|---|---|---|---|---|---|---|")
    rows = [f"| {name} vs {other} | {', '.join(f'{k} {v}' for k, v in c['setting'].items())} | {c['runs']} | {c['same_label']} of {c['runs']} | "
            f"{c['solution']} {c['solution_runs'][0]} / {c['solution_runs'][1]} | {c['clean_runs'][0]} / {c['clean_runs'][1]} | {c['fisher_p']:.2f} |"
            for c in comparisons]
    return "\n".join([header, *rows])
