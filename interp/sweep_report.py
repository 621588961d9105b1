"""Phase diagrams from a sweep database (models/sweep.py): the paper's Fig. 2.

Data first: `cell_table` (one row per finished cell) and `phase_table` (one row per
gamma x depth: the seeds' mean at the best learning rate, and the label), then thin figure
functions, and `sweep_sections(db)` for the HTML report (`anchor-interp report SWEEP.db`).

Rules, as in the paper: accuracies are averaged over seeds; when several learning rates
were swept, each (gamma, depth) shows the one whose seeds fit the seen pairs best (mean
test-key accuracy; ties go to the cleaner solution, max of the (4,3) accuracies, then the
smaller lr), a choice blind to which solution it favours. The label is
`probes.solution.label_of` on the seed means. Every other swept axis (weight decay,
width, ...) gets its own diagram. Init std = d_model^-gamma for the embeddings, shown
beside gamma because it depends on width.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from models.sweep import results
from probes.solution import LABELS, UNFIT_THRESHOLD, label_of

ACCURACIES = ("seen_test_keys", "inferential_test_keys", "symmetric_test_keys")
PHASE_AXES = ("gamma", "n_layers", "seed", "lr")  # the diagram's axes, and what it averages or maximises over
SHORT_LABELS = {"inferential": "inf", "symmetric": "sym", "other": "other", "unfit": "unfit"}
LABEL_COLORS = {"inferential": "#1f77b4", "symmetric": "#ff7f0e", "other": "#b0b0b0", "unfit": "#4d4d4d"}
UNFIT_SHADE = "rgba(60, 60, 60, 0.8)"


# ---- data -------------------------------------------------------------------------------
def cell_table(meta: dict[str, Any], rows: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per finished cell: its swept values, gamma, n_layers, seed, lr, d_model,
    init_std (of the embeddings), the three accuracies and the label."""
    facets = facet_axes(meta)
    records = [
        {**{k: r["params"][k] for k in facets}, **{k: r[k] for k in (*PHASE_AXES, "d_model", "label", *ACCURACIES)}}
        for r in rows
        if r["status"] == "done"
    ]
    cells = pd.DataFrame(records, columns=[*facets, *PHASE_AXES, "d_model", "label", *ACCURACIES])
    cells["init_std"] = cells["d_model"].astype(float) ** -cells["gamma"].astype(float)
    return cells


def facet_axes(meta: dict[str, Any]) -> list[str]:
    """Swept axes that are not the diagram's own: one diagram per combination of their values."""
    return [k for k in meta["spec"]["grid"] if k not in PHASE_AXES]


def phase_table(cells: pd.DataFrame, facets: list[str]) -> pd.DataFrame:
    """One row per (facets, gamma, n_layers): seed means and spreads at the best lr, the
    number of seeds, their labels, and the label of the means."""
    keys = [*facets, "gamma", "n_layers"]
    if cells.empty:
        return pd.DataFrame(columns=[*keys, "lr", "d_model", "init_std", "n_seeds", "label", "seed_labels", *ACCURACIES])
    by_lr = cells.groupby([*keys, "lr"], dropna=False)
    table = by_lr[list(ACCURACIES)].mean()
    for acc in ACCURACIES:
        table[f"{acc}_std"] = by_lr[acc].std(ddof=0)
    table["n_seeds"] = by_lr.size()
    table["seed_labels"] = by_lr["label"].agg(lambda s: ", ".join(f"{k} {v}" for k, v in s.value_counts().items()))
    table[["d_model", "init_std"]] = by_lr[["d_model", "init_std"]].first()
    table = table.reset_index()
    # Best lr: best fit, then the cleaner solution, then the smaller lr.
    table["_clean"] = table[["inferential_test_keys", "symmetric_test_keys"]].max(axis=1)
    table = table.sort_values([*keys, "seen_test_keys", "_clean", "lr"], ascending=[True] * len(keys) + [False, False, True])
    best = table.groupby(keys, dropna=False, sort=True).head(1).drop(columns="_clean").reset_index(drop=True)
    best["label"] = [label_of(s, i, y) for s, i, y in zip(best["seen_test_keys"], best["inferential_test_keys"], best["symmetric_test_keys"])]
    return best


def facet_groups(table: pd.DataFrame, facets: list[str]) -> list[tuple[str, pd.DataFrame]]:
    """(title suffix, rows) per combination of facet values."""
    if not facets:
        return [("", table)]
    return [
        (" (" + ", ".join(f"{k}={v}" for k, v in zip(facets, values if isinstance(values, tuple) else (values,))) + ")", group)
        for values, group in table.groupby(facets, dropna=False, sort=True)
    ]


def _gamma_ticks(table: pd.DataFrame) -> tuple[list[str], list[str]]:
    """Category names for gamma and their tick text with the embedding init std."""
    stds = table.groupby("gamma")["init_std"].first().sort_index()
    return [f"{g:g}" for g in stds.index], [f"{g:g}<br>σ {s:.2g}" for g, s in stds.items()]


# ---- figures ----------------------------------------------------------------------------
def _cell_text(r: pd.Series, gamma: str, depth: int) -> str:
    return (
        f"γ {gamma} (σ {r['init_std']:.3g}), {depth} layers, lr {r['lr']:g}<br>label {r['label']} (seeds: {r['seed_labels']})<br>"
        f"inferential {r['inferential_test_keys']:.2f} ± {r['inferential_test_keys_std']:.2f}<br>"
        f"symmetric {r['symmetric_test_keys']:.2f} ± {r['symmetric_test_keys_std']:.2f}<br>"
        f"seen pairs {r['seen_test_keys']:.2f} ± {r['seen_test_keys_std']:.2f}"
    )


def phase_diagram_figure(phase: pd.DataFrame, title: str = "Phase diagram") -> go.Figure:
    """Three heatmaps over gamma x depth: symmetric and inferential accuracy on (4,3) (test
    keys, seed means, unfit cells shaded) and the solution label."""
    gammas, gamma_text = _gamma_ticks(phase)
    depths = sorted(phase["n_layers"].unique())
    grid = phase.assign(g=[f"{g:g}" for g in phase["gamma"]]).set_index(["n_layers", "g"])

    def matrix(column: str) -> np.ndarray:  # [depth, gamma]
        return np.array([[grid[column].get((d, g), np.nan) for g in gammas] for d in depths], dtype=object)

    text_rows = [[_cell_text(grid.loc[(d, g)], g, d) if (d, g) in grid.index else "not run yet" for g in gammas] for d in depths]
    labels = matrix("label")
    unfit = np.where(labels == "unfit", 1.0, np.nan)
    y = [str(d) for d in depths]
    fig = make_subplots(1, 3, subplot_titles=("symmetric accuracy on (4,3)", "inferential accuracy on (4,3)", "solution (inf: inferential, sym: symmetric)"), horizontal_spacing=0.06)
    for col, column in ((1, "symmetric_test_keys"), (2, "inferential_test_keys")):
        z = matrix(column).astype(float)
        fig.add_trace(go.Heatmap(z=z, x=gammas, y=y, coloraxis="coloraxis", text=text_rows, hoverinfo="text",
                                 texttemplate="%{z:.2f}"), 1, col)
        fig.add_trace(go.Heatmap(z=unfit, x=gammas, y=y, colorscale=[[0, UNFIT_SHADE], [1, UNFIT_SHADE]], showscale=False,
                                 hoverinfo="skip", text=np.where(labels == "unfit", "unfit", ""), texttemplate="%{text}",
                                 textfont=dict(color="white")), 1, col)
    codes = np.array([[LABELS.index(v) if isinstance(v, str) else np.nan for v in row] for row in labels], dtype=float)
    n = len(LABELS)
    scale = [[edge, LABEL_COLORS[name]] for i, name in enumerate(LABELS) for edge in (i / n, (i + 1) / n)]
    fig.add_trace(go.Heatmap(z=codes, x=gammas, y=y, zmin=-0.5, zmax=n - 0.5, colorscale=scale, showscale=False,
                             text=[[SHORT_LABELS.get(v, "") for v in row] for row in labels], texttemplate="%{text}",
                             textfont=dict(size=11, color="white"), customdata=text_rows, hovertemplate="%{customdata}<extra></extra>"), 1, 3)
    for col in (1, 2, 3):
        fig.update_xaxes(title_text="γ (embedding init std σ = d_model^-γ)", tickvals=gammas, ticktext=gamma_text, tickangle=0, tickfont=dict(size=10),
                         type="category", row=1, col=col)
        fig.update_yaxes(title_text="layers" if col == 1 else None, type="category", row=1, col=col)
    fig.update_layout(title=title, coloraxis=dict(colorscale="Viridis", cmin=0, cmax=1, colorbar=dict(title="acc", x=1.0)),
                      height=260 + 50 * len(depths), width=max(900, 1000 + 60 * len(gammas)))
    return fig


def accuracy_curves_figure(phase: pd.DataFrame, cells: pd.DataFrame, title: str = "Accuracy vs gamma") -> go.Figure:
    """Per depth: (4,3) inferential and symmetric accuracy and the seen-pair accuracy
    against gamma: seed means as lines, each seed as a dot (at the lr the diagram shows)."""
    depths = sorted(phase["n_layers"].unique())
    gammas, gamma_text = _gamma_ticks(phase)
    chosen = cells.merge(phase[["gamma", "n_layers", "lr"]], on=["gamma", "n_layers", "lr"])  # seeds at the best lr
    cols = min(3, len(depths))
    rows = -(-len(depths) // cols)
    fig = make_subplots(rows, cols, shared_yaxes=True, subplot_titles=[f"{d} layers" for d in depths], horizontal_spacing=0.03, vertical_spacing=0.2)
    series = (("inferential_test_keys", "(4,3) inferential", LABEL_COLORS["inferential"], "solid"),
              ("symmetric_test_keys", "(4,3) symmetric", LABEL_COLORS["symmetric"], "solid"),
              ("seen_test_keys", "seen pairs (test keys)", LABEL_COLORS["unfit"], "dot"))
    for i, depth in enumerate(depths):
        row, col = i // cols + 1, i % cols + 1
        means = phase[phase["n_layers"] == depth].sort_values("gamma")
        seeds = chosen[chosen["n_layers"] == depth]
        for column, name, color, dash in series:
            fig.add_trace(go.Scatter(x=means["gamma"], y=means[column], name=name, legendgroup=name, showlegend=i == 0,
                                     mode="lines+markers", line=dict(color=color, dash=dash)), row, col)
            fig.add_trace(go.Scatter(x=seeds["gamma"], y=seeds[column], name=f"{name}, each seed", legendgroup=name, showlegend=False,
                                     mode="markers", marker=dict(color=color, size=6, opacity=0.45),
                                     customdata=seeds["seed"], hovertemplate="γ %{x}, seed %{customdata}: %{y:.2f}<extra></extra>"), row, col)
        fig.add_hline(y=UNFIT_THRESHOLD, line=dict(color="grey", width=1, dash="dash"), row=row, col=col)
        fig.update_xaxes(title_text="γ (σ)", tickvals=[float(g) for g in gammas], ticktext=gamma_text, tickangle=0, tickfont=dict(size=10), row=row, col=col)
    fig.update_yaxes(range=[-0.03, 1.03])
    fig.update_yaxes(title_text="accuracy", col=1)
    fig.update_layout(title=title + " (dashed: the fit threshold below which a model is unfit)", height=80 + 340 * rows, width=max(700, 250 + cols * (100 + 45 * len(gammas))))
    return fig


def status_figure(meta: dict[str, Any], rows: list[dict[str, Any]]) -> go.Figure:
    """The sweep itself: its spec and command, progress, cost, and any failed cells."""
    status = pd.Series([r["status"] for r in rows]).value_counts()
    seconds = pd.Series([r["wall_seconds"] for r in rows if r["wall_seconds"] is not None], dtype=float)
    spec = meta["spec"]
    facts = {
        "grid": "; ".join(f"{k} {v}" for k, v in spec["grid"].items()),
        "fixed": ", ".join(f"{k}={v}" for k, v in spec["fixed"].items()) or "(TrainConfig defaults)",
        "command": meta.get("command", ""),
        "created": meta.get("created", ""),
        "cells": ", ".join(f"{status.get(s, 0)} {s}" for s in ("done", "failed", "running", "pending")) + f" of {len(rows)}",
        "cost": f"{seconds.sum() / 60:.1f} min of cell time, median {seconds.median() if len(seconds) else float('nan'):.0f} s per cell",
    }
    failed = [r for r in rows if r["status"] == "failed"]
    for r in failed[:20]:
        facts[f"cell {r['id']} failed"] = f"{r['params']}: {(r['error'] or '').strip().splitlines()[-1] if r['error'] else ''}"
    fig = go.Figure(go.Table(header=dict(values=["sweep", ""], align="left"),
                             cells=dict(values=[list(facts), list(facts.values())], align="left"), columnwidth=[1, 5]))
    fig.update_layout(title="Sweep", height=90 + 30 * len(facts), margin=dict(t=40, b=10))
    return fig


def sweep_sections(db_path: str | os.PathLike) -> list[tuple[str, go.Figure]]:
    """(title, figure) sections of a sweep database for the HTML report: the sweep's status,
    then per facet the phase diagram and the accuracy-vs-gamma curves."""
    meta, rows = results(db_path)
    facets = facet_axes(meta)
    cells = cell_table(meta, rows)
    sections = [("Sweep", status_figure(meta, rows))]
    if cells.empty:
        return sections
    phase = phase_table(cells, facets)
    cell_groups = dict(facet_groups(cells, facets))
    lr_note = f" over {cells['seed'].nunique()} seeds" + (", best of learning rates" if cells["lr"].nunique() > 1 else "")
    for suffix, group in facet_groups(phase, facets):
        sections.append((f"Phase diagram{suffix}", phase_diagram_figure(group, f"Phase diagram{suffix}: means{lr_note}")))
        sections.append((f"Accuracy vs gamma{suffix}", accuracy_curves_figure(group, cell_groups[suffix], f"Accuracy vs γ{suffix}")))
    return sections
