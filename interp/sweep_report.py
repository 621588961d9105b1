"""Phase diagrams from a sweep database (models/sweep.py): the paper's Fig. 2, and beside it
the same grid labelled by mechanism.

Data first: `cell_table` (one row per finished cell), `phase_table` (one row per gamma x
depth: the seeds' mean at the best learning rate, the label, the seeds' routes, how many
cells are still pending), then thin figure functions, and `sweep_sections(db)` for the HTML
report (`anchor-interp report SWEEP.db`). A partial database renders: unfinished cells show
as pending.

Rules, as in the paper: accuracies are averaged over seeds; when several learning rates
were swept, each (gamma, depth) shows the one whose seeds fit the seen pairs best (mean
test-key accuracy; ties go to the cleaner solution, max of the (4,3) accuracies, then the
smaller lr), a choice blind to which solution it favours. The label is
`probes.solution.label_of` on the seed means. Every other swept axis (weight decay,
width, ...) gets its own diagram. Init std = d_model^-gamma for the embeddings, shown
beside gamma because it depends on width.

Mechanism (recorded per run by interp.sweep.mechanism; None in databases made before): the
diagram shows each cell's most common route among its seeds, and the agreement: the share
of CLEAN runs (behavioural label inferential or symmetric with that (4,3) accuracy >= 0.9)
whose route equals their behavioural label.
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
MECHANISM = ("route", "composition_score", "wq_groups", "mean_stable_rank")  # metrics keys, from interp.sweep.mechanism
CLEAN = 0.9  # a run is clean when its label's (4,3) accuracy is at least this (issue 12's clean phase)
COMPOSES = 0.5  # composition_score at or above this: most interchanges at the best site compose
ROUTES = ("inferential", "symmetric", "mixed", "other")
PHASE_AXES = ("gamma", "n_layers", "seed", "lr")  # the diagram's axes, and what it averages or maximises over
SHORT_LABELS = {"inferential": "inf", "symmetric": "sym", "other": "other", "unfit": "unfit"}
LABEL_COLORS = {"inferential": "#1f77b4", "symmetric": "#ff7f0e", "other": "#b0b0b0", "unfit": "#4d4d4d", "mixed": "#9467bd"}
PENDING_COLOR = "#ececec"
MAX_WIDTH = 1200  # px: every figure fits a 1280 px window
UNFIT_SHADE = "rgba(60, 60, 60, 0.8)"


# ---- data -------------------------------------------------------------------------------
def cell_table(meta: dict[str, Any], rows: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per finished cell: its swept values, gamma, n_layers, seed, lr, d_model,
    init_std (of the embeddings), the three accuracies, the label, the mechanism (None where
    not recorded), whether the run is judged (clean, with a route) and agrees (judged, and
    its route is its label)."""
    columns = list(dict.fromkeys([*facet_axes(meta), *PHASE_AXES, "d_model", "label", *ACCURACIES]))  # d_model may be swept too
    records = [{**{k: r["params"].get(k, r.get(k)) for k in columns}, **{k: (r["metrics"] or {}).get(k) for k in MECHANISM}}
               for r in rows if r["status"] == "done"]
    cells = pd.DataFrame(records, columns=[*columns, *MECHANISM])
    cells["init_std"] = cells["d_model"].astype(float) ** -cells["gamma"].astype(float)
    own = np.where(cells["label"] == "inferential", cells["inferential_test_keys"], cells["symmetric_test_keys"]).astype(float)
    # Judged: clean runs with a recorded route (databases before mechanism recording have none).
    clean = cells["label"].isin(["inferential", "symmetric"]) & (own >= CLEAN)
    cells["judged"] = clean & cells["route"].notna()
    cells["agrees"] = cells["judged"] & (cells["route"] == cells["label"])
    # The composition test's verdict: a run composes when most interchanges at its best site do.
    score = pd.to_numeric(cells["composition_score"], errors="coerce")
    cells["composition_judged"] = clean & score.notna()
    composes = score >= COMPOSES
    cells["composition_agrees"] = cells["composition_judged"] & (composes == (cells["label"] == "inferential"))
    return cells


def progress_table(meta: dict[str, Any], rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Per (facets, gamma, n_layers): how many cells the grid has there and how many are done."""
    keys = [*facet_axes(meta), "gamma", "n_layers"]
    frame = pd.DataFrame([{"d_model": r["d_model"], **{k: r["params"].get(k, r.get(k)) for k in keys}, "done": r["status"] == "done"} for r in rows])
    table = frame.groupby(keys, dropna=False).agg(n_cells=("done", "size"), n_done=("done", "sum"), **({} if "d_model" in keys else {"d_model": ("d_model", "first")}))
    return table.reset_index()


def facet_axes(meta: dict[str, Any]) -> list[str]:
    """Swept axes that are not the diagram's own: one diagram per combination of their values."""
    return [k for k in meta["spec"]["grid"] if k not in PHASE_AXES]


def phase_table(cells: pd.DataFrame, facets: list[str], progress: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (facets, gamma, n_layers): seed means and spreads at the best lr, the
    number of seeds, their labels, the label of the means, the seeds' routes (most common
    first) and their clean runs' agreement. With `progress` (progress_table), also a row per
    place with no finished cell yet, and n_cells / n_done everywhere."""
    keys = [*facets, "gamma", "n_layers"]
    columns = [*keys, "lr", "d_model", "init_std", "n_seeds", "label", "seed_labels", *ACCURACIES, "route", "routes", "n_clean", "n_agree"]
    best = pd.DataFrame(columns=columns)
    if not cells.empty:
        by_lr = cells.groupby([*keys, "lr"], dropna=False)
        table = by_lr[list(ACCURACIES)].mean()
        for acc in ACCURACIES:
            table[f"{acc}_std"] = by_lr[acc].std(ddof=0)
        table["n_seeds"] = by_lr.size()
        table["seed_labels"] = by_lr["label"].agg(_counts)
        table["routes"] = by_lr["route"].agg(_counts)
        table["route"] = by_lr["route"].agg(lambda s: s.value_counts().index[0] if s.notna().any() else None)
        table["n_clean"] = by_lr["judged"].sum()
        table["n_agree"] = by_lr["agrees"].sum()
        per_run = [c for c in ("d_model", "init_std") if c not in keys]  # d_model may be a facet, hence a key
        table[per_run] = by_lr[per_run].first()
        table = table.reset_index()
        # Best lr: best fit, then the cleaner solution, then the smaller lr.
        table["_clean"] = table[["inferential_test_keys", "symmetric_test_keys"]].max(axis=1)
        table = table.sort_values([*keys, "seen_test_keys", "_clean", "lr"], ascending=[True] * len(keys) + [False, False, True])
        best = table.groupby(keys, dropna=False, sort=True).head(1).drop(columns="_clean").reset_index(drop=True)
        best["label"] = [label_of(s, i, y) for s, i, y in zip(best["seen_test_keys"], best["inferential_test_keys"], best["symmetric_test_keys"])]
    if progress is None:
        return best
    merged = progress.merge(best.drop(columns=[c for c in ("d_model", "init_std") if c not in keys]), on=keys, how="left")
    merged["init_std"] = merged["d_model"].astype(float) ** -merged["gamma"].astype(float)
    return merged.sort_values(keys).reset_index(drop=True)


def _counts(values: pd.Series) -> str:
    """'inferential 3, symmetric 1': how often each value occurs, most common first."""
    return ", ".join(f"{k} {v}" for k, v in values.value_counts().items())


def agreement(cells: pd.DataFrame, probe: str = "route") -> tuple[int, int]:
    """(clean runs whose route equals their behavioural label, clean runs with a route); with
    probe="composition": clean runs whose composition verdict (score >= COMPOSES) is their
    label (inferential composes, symmetric does not), clean runs with a score."""
    prefix = "" if probe == "route" else "composition_"
    return int(cells[prefix + "agrees"].sum()), int(cells[prefix + "judged"].sum())


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


def _pending(r: pd.Series) -> int:
    """Cells of this place not finished yet (0 when the table has no progress columns)."""
    return int(r.get("n_cells", 0) - r.get("n_done", 0))


# ---- figures ----------------------------------------------------------------------------
def _cell_text(r: pd.Series, gamma: str, depth: int) -> str:
    where = f"γ {gamma} (σ {r['init_std']:.3g}), {depth} layers"
    if not isinstance(r["label"], str):
        return f"{where}: pending ({_pending(r)} cells, none finished)"
    return (
        f"{where}, lr {r['lr']:g}<br>label {r['label']} (seeds: {r['seed_labels']})<br>"
        f"inferential {r['inferential_test_keys']:.2f} ± {r['inferential_test_keys_std']:.2f}<br>"
        f"symmetric {r['symmetric_test_keys']:.2f} ± {r['symmetric_test_keys_std']:.2f}<br>"
        f"seen pairs {r['seen_test_keys']:.2f} ± {r['seen_test_keys_std']:.2f}<br>"
        f"routes: {r['routes'] or 'not recorded'}; route = label in {r['n_agree']} of {r['n_clean']} clean runs"
        + (f"<br>{_pending(r)} more cells pending" if _pending(r) else "")
    )


class _Grid:
    """A phase table laid out as [depth, gamma] matrices, with hover text per place."""

    def __init__(self, phase: pd.DataFrame):
        self.gammas, self.gamma_text = _gamma_ticks(phase)
        self.depths = sorted(phase["n_layers"].unique())
        self.y = [str(d) for d in self.depths]
        self.table = phase.assign(g=[f"{g:g}" for g in phase["gamma"]]).set_index(["n_layers", "g"])
        self.hover = [[_cell_text(self.table.loc[(d, g)], g, d) if (d, g) in self.table.index else "not in the grid" for g in self.gammas] for d in self.depths]

    def matrix(self, column: str) -> np.ndarray:  # [depth, gamma]
        return np.array([[self.table[column].get((d, g), np.nan) for g in self.gammas] for d in self.depths], dtype=object)

    def pending(self) -> np.ndarray:  # [depth, gamma]: cells not finished yet
        if "n_cells" not in self.table:
            return np.zeros((len(self.depths), len(self.gammas)), dtype=int)
        return np.nan_to_num((self.matrix("n_cells") - self.matrix("n_done")).astype(float)).astype(int)

    def category_panel(self, fig: go.Figure, col: int, values: np.ndarray, categories: tuple[str, ...]) -> None:
        """Heatmap of categorical `values` [depth, gamma] in their colours; a place with no
        finished cell is grey 'pending', one with some cells still running is marked '*'."""
        n = len(categories) + 1  # the last code: pending
        codes = np.array([[categories.index(v) if isinstance(v, str) else n - 1 for v in row] for row in values], dtype=float)
        colors = [*(LABEL_COLORS[c] for c in categories), PENDING_COLOR]
        scale = [[edge, color] for i, color in enumerate(colors) for edge in (i / n, (i + 1) / n)]
        text = [[(SHORT_LABELS.get(v, v) if isinstance(v, str) else "pending") + ("*" if pending and isinstance(v, str) else "")
                 for v, pending in zip(row, pending_row)] for row, pending_row in zip(values, self.pending())]
        fig.add_trace(go.Heatmap(z=codes, x=self.gammas, y=self.y, zmin=-0.5, zmax=n - 0.5, colorscale=scale, showscale=False,
                                 text=text, texttemplate="%{text}", textfont=dict(size=11, color="white"),
                                 customdata=self.hover, hovertemplate="%{customdata}<extra></extra>"), 1, col)

    def layout(self, fig: go.Figure, title: str, panels: int) -> go.Figure:
        for col in range(1, panels + 1):
            fig.update_xaxes(title_text="γ (embedding init std σ = d_model^-γ)", tickvals=self.gammas, ticktext=self.gamma_text, tickangle=0,
                             tickfont=dict(size=10), type="category", row=1, col=col)
            fig.update_yaxes(title_text="layers" if col == 1 else None, type="category", row=1, col=col)
        fig.update_layout(title=title, height=280 + 50 * len(self.depths), width=min(MAX_WIDTH, 600 + 60 * len(self.gammas)))
        return fig


def phase_diagram_figure(phase: pd.DataFrame, title: str = "Phase diagram") -> go.Figure:
    """Three heatmaps over gamma x depth: symmetric and inferential accuracy on (4,3) (test
    keys, seed means, unfit cells shaded) and the solution label."""
    grid = _Grid(phase)
    labels = grid.matrix("label")
    unfit = np.where(labels == "unfit", 1.0, np.nan)
    fig = make_subplots(1, 3, subplot_titles=("symmetric accuracy on (4,3)", "inferential accuracy on (4,3)", "solution (inf: inferential, sym: symmetric)"), horizontal_spacing=0.06)
    for col, column in ((1, "symmetric_test_keys"), (2, "inferential_test_keys")):
        fig.add_trace(go.Heatmap(z=grid.matrix(column).astype(float), x=grid.gammas, y=grid.y, coloraxis="coloraxis", text=grid.hover,
                                 hoverinfo="text", texttemplate="%{z:.2f}"), 1, col)
        fig.add_trace(go.Heatmap(z=unfit, x=grid.gammas, y=grid.y, colorscale=[[0, UNFIT_SHADE], [1, UNFIT_SHADE]], showscale=False,
                                 hoverinfo="skip", text=np.where(labels == "unfit", "unfit", ""), texttemplate="%{text}",
                                 textfont=dict(color="white")), 1, col)
    grid.category_panel(fig, 3, labels, LABELS)
    fig.update_layout(coloraxis=dict(colorscale="Viridis", cmin=0, cmax=1, colorbar=dict(title="acc", x=1.0, len=0.8)))
    return grid.layout(fig, title + ("; * = some cells still pending" if grid.pending().any() else ""), 3)


def mechanism_figure(phase: pd.DataFrame, cells: pd.DataFrame, title: str = "Behaviour and mechanism") -> go.Figure:
    """Side by side over gamma x depth: the behavioural label (of the seed means), the most
    common route of the seeds (interp.trace_flows), and their agreement: the share of clean
    runs whose route equals their behavioural label."""
    grid = _Grid(phase)
    agree, judged = agreement(cells)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = (grid.matrix("n_agree").astype(float) / grid.matrix("n_clean").astype(float))  # NaN: no clean run
    fig = make_subplots(1, 3, horizontal_spacing=0.06, subplot_titles=(
        "behaviour: label of the seed means", "mechanism: most common route", "route = label, share of clean runs"))
    grid.category_panel(fig, 1, grid.matrix("label"), LABELS)
    grid.category_panel(fig, 2, grid.matrix("route"), ROUTES)
    counts = [[f"{a:.0f}/{c:.0f}" if c == c and c > 0 else "" for a, c in zip(ra, rc)] for ra, rc in zip(grid.matrix("n_agree"), grid.matrix("n_clean"))]
    fig.add_trace(go.Heatmap(z=share, x=grid.gammas, y=grid.y, zmin=0, zmax=1, colorscale="RdYlGn", text=counts, texttemplate="%{text}",
                             colorbar=dict(title="share", x=1.0, len=0.8), customdata=grid.hover, hovertemplate="%{customdata}<extra></extra>"), 1, 3)
    total = f"route = behavioural label in {agree} of {judged} clean runs ({agree / judged:.0%})" if judged else "no clean run with a route yet"
    composed, scored = agreement(cells, "composition")
    if scored:
        total += f"; composition test agrees in {composed} of {scored}"
    return grid.layout(fig, f"{title}: {total} (clean: label's (4,3) accuracy ≥ {CLEAN})", 3)


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
    fig.update_layout(title=title + " (dashed: the fit threshold below which a model is unfit)", height=80 + 340 * rows,
                      width=min(MAX_WIDTH, max(700, 250 + cols * (100 + 45 * len(gammas)))))
    return fig


MAP_AXES = ("lr", "weight_decay")  # a sweep over both gets the paper's appendix map: x lr, y weight decay


def is_lr_wd_map(meta: dict[str, Any]) -> bool:
    """A sweep over more than one value of both MAP_AXES."""
    return all(len(meta["spec"]["grid"].get(axis, ())) > 1 for axis in MAP_AXES)


def map_table(cells: pd.DataFrame, rows: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per (gamma, n_layers, weight_decay, lr) of a sweep over both MAP_AXES: the
    seeds' mean accuracies, the label of the means, the seeds' labels and routes (from
    `cells`, cell_table's finished runs), and how many of its `rows` are done (a place with
    none done has NaN accuracies)."""
    keys = ["gamma", "n_layers", *MAP_AXES]
    status = pd.DataFrame([{**{k: r["params"].get(k, r.get(k)) for k in keys}, "done": r["status"] == "done"} for r in rows])
    table = status.groupby(keys).agg(n_cells=("done", "size"), n_done=("done", "sum")).join(
        cells.groupby(keys).agg(**{a: (a, "mean") for a in ACCURACIES}, seed_labels=("label", _counts), routes=("route", _counts))
    ).reset_index()
    table["label"] = [label_of(s, i, y) if s == s else None for s, i, y in
                      zip(table["seen_test_keys"], table["inferential_test_keys"], table["symmetric_test_keys"])]
    return table


def _map_hover(r: pd.Series | None, lr: str, wd: str) -> str:
    if r is None:
        return "not in the grid"
    if not r["n_done"]:
        return f"lr {lr}, wd {wd}: pending ({r['n_cells']:.0f} cells)"
    return (f"lr {lr}, wd {wd}: {r['seed_labels']} ({r['n_done']:.0f} of {r['n_cells']:.0f} seeds done)<br>"
            f"(4,3) x-10 {r['inferential_test_keys']:.2f}, x-6 {r['symmetric_test_keys']:.2f}, seen {r['seen_test_keys']:.2f}<br>"
            f"routes: {r['routes'] or 'not recorded'}")


def _map_grid(table: pd.DataFrame) -> tuple[list[float], list[float], list[tuple[float, int, list[list[pd.Series | None]]]]]:
    """`map_table` laid out as the map: its lrs, its weight decays, and per (gamma, depth),
    in depth then gamma order, the place rows [weight_decay][lr] (None: not in the grid)."""
    lrs, wds = sorted(table["lr"].unique()), sorted(table["weight_decay"].unique())
    at = table.set_index(["gamma", "n_layers", "weight_decay", "lr"])
    places = table[["gamma", "n_layers"]].drop_duplicates().sort_values(["n_layers", "gamma"]).values.tolist()
    return lrs, wds, [(gamma, depth, [[at.loc[(gamma, depth, wd, lr)] if (gamma, depth, wd, lr) in at.index else None for lr in lrs]
                                      for wd in wds]) for gamma, depth in places]


def map_markdown(table: pd.DataFrame) -> str:
    """`map_table` as README markdown: per gamma and depth, weight decay (rows) by lr
    (columns), each place the seeds' labels and the mean (4,3) accuracies x-10 / x-6."""
    lrs, wds, places = _map_grid(table)
    out = []
    for gamma, depth, grid in places:
        out += [f"gamma {gamma:g}, {int(depth)} layers: seeds' labels, (4,3) x-10 / x-6 (means)", "",
                "| weight decay \\ lr | " + " | ".join(f"{lr:g}" for lr in lrs) + " |", "|" + "---|" * (len(lrs) + 1)]
        for wd, line in zip(wds, grid):
            out.append(f"| {wd:g} | " + " | ".join(
                "not in the grid" if r is None else "pending" if not r["n_done"] else
                f"{r['seed_labels']}: {r['inferential_test_keys']:.2f} / {r['symmetric_test_keys']:.2f}" for r in line) + " |")
        out.append("")
    return "\n".join(out).rstrip()


def lr_wd_map_figure(table: pd.DataFrame, title: str = "Learning rate x weight decay") -> go.Figure:
    """The paper's appendix map: per gamma and depth (a row each), over lr (x) and weight
    decay (y), the label of the seed means and the two (4,3) accuracies; pending places grey."""
    lr_values, wd_values, places = _map_grid(table)
    lrs, wds = [f"{v:g}" for v in lr_values], [f"{v:g}" for v in wd_values]
    names = [f"γ {g:g}, {int(d)} layers: {what}" for g, d, _ in places for what in ("solution", "(4,3) inferential (x-10)", "(4,3) symmetric (x-6)")]
    fig = make_subplots(len(places), 3, subplot_titles=names, horizontal_spacing=0.08, vertical_spacing=0.16)
    n = len(LABELS) + 1  # the last code: pending
    colors = [*(LABEL_COLORS[c] for c in LABELS), PENDING_COLOR]
    scale = [[edge, color] for i, color in enumerate(colors) for edge in (i / n, (i + 1) / n)]
    for row, (_, _, grid) in enumerate(places, start=1):
        def matrix(column: str) -> list[list[Any]]:  # [weight_decay, lr]
            return [[None if r is None else r[column] for r in line] for line in grid]

        hover = [[_map_hover(r, x, y) for r, x in zip(line, lrs)] for line, y in zip(grid, wds)]
        labels = matrix("label")
        codes = [[LABELS.index(v) if isinstance(v, str) else n - 1 for v in line] for line in labels]
        text = [[SHORT_LABELS.get(v, v) if isinstance(v, str) else "pending" for v in line] for line in labels]
        fig.add_trace(go.Heatmap(z=codes, x=lrs, y=wds, zmin=-0.5, zmax=n - 0.5, colorscale=scale, showscale=False, text=text,
                                 texttemplate="%{text}", textfont=dict(color="white"), customdata=hover,
                                 hovertemplate="%{customdata}<extra></extra>"), row, 1)
        for col, column in ((2, "inferential_test_keys"), (3, "symmetric_test_keys")):
            fig.add_trace(go.Heatmap(z=np.array(matrix(column), dtype=float), x=lrs, y=wds, coloraxis="coloraxis", customdata=hover,
                                     texttemplate="%{z:.2f}", hovertemplate="%{customdata}<extra></extra>"), row, col)
        for col in (1, 2, 3):
            fig.update_xaxes(title_text="peak lr", type="category", row=row, col=col)
            fig.update_yaxes(title_text="weight decay" if col == 1 else None, type="category", row=row, col=col)
    fig.update_layout(coloraxis=dict(colorscale="Viridis", cmin=0, cmax=1, colorbar=dict(title="acc")),
                      title=f"{title}: seed means", height=120 + 300 * len(places), width=MAX_WIDTH)
    return fig


def status_figure(meta: dict[str, Any], rows: list[dict[str, Any]], cells: pd.DataFrame) -> go.Figure:
    """The sweep itself: its spec and command, progress, cost, agreement, and any failed cells."""
    status = pd.Series([r["status"] for r in rows]).value_counts()
    done = [r for r in rows if r["status"] == "done" and r["wall_seconds"] is not None]
    seconds = pd.Series([r["wall_seconds"] for r in done], dtype=float)
    after = pd.Series([r["wall_seconds"] - r["train_seconds"] for r in done if r["train_seconds"] is not None], dtype=float)
    spec = meta["spec"]
    agree, judged = agreement(cells)
    facts = {
        "grid": "; ".join(f"{k} {v}" for k, v in spec["grid"].items()),
        "fixed": ", ".join(f"{k}={v}" for k, v in spec["fixed"].items()) or "(TrainConfig defaults)",
        "command": meta.get("command", ""),
        "created": meta.get("created", ""),
        "cells": ", ".join(f"{status.get(s, 0)} {s}" for s in ("done", "failed", "running", "pending")) + f" of {len(rows)}",
        "cost": f"{seconds.sum() / 60:.1f} min of cell time, median {seconds.median() if len(seconds) else float('nan'):.0f} s per cell, "
                f"of which {after.median() if len(after) else float('nan'):.1f} s after training (classification, mechanism probes)",
        "mechanism": f"route = behavioural label in {agree} of {judged} clean runs" if cells["route"].notna().any() else "not recorded in this database",
    }
    failed = [r for r in rows if r["status"] == "failed"]
    for r in failed[:20]:
        facts[f"cell {r['id']} failed"] = f"{r['params']}: {(r['error'] or '').strip().splitlines()[-1] if r['error'] else ''}"
    fig = go.Figure(go.Table(header=dict(values=["sweep", ""], align="left"),
                             cells=dict(values=[list(facts), list(facts.values())], align="left"), columnwidth=[1, 5]))
    fig.update_layout(title="Sweep", height=90 + 30 * len(facts), margin=dict(t=40, b=10))
    return fig


def mechanism_summary(db_path: str | os.PathLike) -> str:
    """One line: how often each mechanism probe agrees with behaviour on the clean runs."""
    meta, rows = results(db_path)
    cells = cell_table(meta, rows)
    (agree, judged), (composed, scored) = agreement(cells), agreement(cells, "composition")
    return (f"{db_path}: {len(cells)} of {len(rows)} runs done; of the clean ones (label's (4,3) accuracy >= {CLEAN}), "
            f"route = label in {agree} of {judged}, composition test (score >= {COMPOSES} = composes) agrees in {composed} of {scored}")


def sweep_sections(db_path: str | os.PathLike) -> list[tuple[str, go.Figure]]:
    """(title, figure) sections of a sweep database for the HTML report: the sweep's status,
    then per facet the phase diagram, behaviour beside mechanism (when recorded), and the
    accuracy-vs-gamma curves. Places with no finished cell yet show as pending."""
    meta, rows = results(db_path)
    facets = facet_axes(meta)
    cells = cell_table(meta, rows)
    sections = [("Sweep", status_figure(meta, rows, cells))]
    if not rows:
        return sections
    if is_lr_wd_map(meta):
        sections.append(("Learning rate x weight decay", lr_wd_map_figure(map_table(cells, rows))))
    phase = phase_table(cells, facets, progress_table(meta, rows))
    cell_groups = dict(facet_groups(cells, facets))
    seeds = len({r["seed"] for r in rows})
    lr_note = f" over {seeds} seeds" + (", best of learning rates" if len({r["lr"] for r in rows}) > 1 else "")
    for suffix, group in facet_groups(phase, facets):
        group_cells = cell_groups.get(suffix, cells.iloc[:0])
        sections.append((f"Phase diagram{suffix}", phase_diagram_figure(group, f"Phase diagram{suffix}: means{lr_note}")))
        if cells["route"].notna().any():
            sections.append((f"Behaviour and mechanism{suffix}", mechanism_figure(group, group_cells, f"Behaviour and mechanism{suffix}")))
        sections.append((f"Accuracy vs gamma{suffix}", accuracy_curves_figure(group, group_cells, f"Accuracy vs γ{suffix}")))
    return sections


def phase_markdown(db_path: str | os.PathLike, clean_share: float = 0.8) -> str:
    """The README's table of a sweep database, one row per setting (every swept axis but
    the seed): its runs, labels, the runs with the most common solution at >= CLEAN on (4,3)
    test keys, the routes and composition verdicts of its finished runs, and that
    solution's mean accuracy by key position; then, per setting without gamma, the gammas
    where >= `clean_share` of the seeds give one solution at >= CLEAN (issue 12's clean
    phases), and the mechanism agreement over all clean runs. Printed by `anchor-interp
    report DB --no-models --markdown`; a test holds the README to it."""
    from interp.seeds import seed_groups  # the seed statistics' grouping: one row per setting

    meta, rows = results(db_path)
    cells = cell_table(meta, rows)  # the finished runs, with their mechanism and clean/agreement verdicts
    axes = [k for k in meta["spec"]["grid"] if k != "seed"]
    order = {k: list(v) for k, v in meta["spec"]["grid"].items()}
    groups = sorted(seed_groups(rows), key=lambda g: [order[k].index(g.setting[k]) for k in axes])

    def finished(setting: dict[str, Any]) -> pd.DataFrame:
        return cells[np.logical_and.reduce([cells[k] == v for k, v in setting.items()] or [np.ones(len(cells), bool)])]

    def d_model(setting: dict[str, Any]) -> int:  # pending settings too: from the rows
        return next(r["d_model"] for r in rows if all(r["params"][k] == v for k, v in setting.items()))

    header = [*axes, "runs", "labels", f"the most common solution at >= {CLEAN}", "route (trace_flows)", f"composes (score >= {COMPOSES})",
              "its mean accuracy by key position 0-6"]
    if "gamma" in axes:
        header[axes.index("gamma")] = "gamma (init std of W_E)"
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    phases: dict[str, dict[str, Any]] = {}  # per setting but gamma: its runs done / in all, the gammas with a clean phase
    for g in groups:
        n_cells = g.n + g.pending
        values = [f"{g.setting[k]:g}" if isinstance(g.setting[k], float) else str(g.setting[k]) for k in axes]
        if "gamma" in axes:
            values[axes.index("gamma")] += f" ({float(d_model(g.setting)) ** -g.setting['gamma']:.2g})"
        rest = {k: v for k, v in g.setting.items() if k != "gamma"}
        place = phases.setdefault(", ".join(f"{k} {v}" for k, v in rest.items()) or "all",
                                  {"setting": rest, "done": 0, "all": 0, "symmetric": [], "inferential": []})
        place["done"], place["all"] = place["done"] + g.n, place["all"] + n_cells
        if not g.n:
            lines.append("| " + " | ".join([*values, f"0 (+{g.pending} pending)", *["pending"] * (len(header) - len(axes) - 1)]) + " |")
            continue
        k_clean = sum(a >= CLEAN for a in g.accuracy)
        if "gamma" in axes and g.solution in place and k_clean >= clean_share * n_cells:
            place[g.solution].append(f"{g.setting['gamma']:g} ({k_clean}/{n_cells})")
        runs = finished(g.setting)
        scores = pd.to_numeric(runs["composition_score"], errors="coerce").dropna()
        routes = _counts(runs["route"].dropna()) or "not recorded"
        composes = f"{int((scores >= COMPOSES).sum())} of {len(scores)}" if len(scores) else "not recorded"
        labels = ", ".join(f"{label} {k}" for label, k in g.labels.items())
        lines.append("| " + " | ".join([*values, f"{g.n}" + (f" (+{g.pending} pending)" if g.pending else ""), labels,
                                        f"{g.solution} {k_clean}", routes, composes, " ".join(f"{a:.2f}" for a in g.position_means())]) + " |")
    lines.append("")
    for rest, place in phases.items():
        part = finished(place["setting"])
        found = "; ".join(f"{solution} at gamma {', '.join(place[solution])}" if place[solution] else f"{solution}: none"
                          for solution in ("symmetric", "inferential"))
        (agree, judged), (composed, scored) = agreement(part), agreement(part, "composition")
        lines.append(f"- {rest} ({place['done']} of {place['all']} runs done): clean phases (>= {clean_share:.0%} of a cell's seeds "
                     f"give the solution at >= {CLEAN}): {found}. Of its clean runs, the route names the label in {agree} of {judged}, "
                     f"the composition test agrees in {composed} of {scored}.")
    (agree, judged), (composed, scored) = agreement(cells), agreement(cells, "composition")
    if judged or scored:
        lines.append(f"- Mechanism over the {max(judged, scored)} clean runs (label's (4,3) accuracy >= {CLEAN}): the route rule names the "
                     f"behavioural label in {agree} of {judged}" + (f" ({agree / judged:.0%})" if judged else "")
                     + f"; the composition test agrees in {composed} of {scored}.")
    if is_lr_wd_map(meta):
        lines += ["", map_markdown(map_table(cells, rows))]
    return "\n".join(lines)
