"""Thin plotly views of probe results: every number is computed before it gets here."""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path
from typing import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots
from torch import Tensor

from models.files import write_text_atomic


TITLE_CHARS = 64  # a title line that fits a half-page column (about 600 px at 1280 px)


def wrap_html(text: str, width: int) -> str:
    """Plotly text wrapped at `width` characters with <br> (plotly never wraps); existing
    <br> breaks stay, and a line wrapped in one tag (<sub>...</sub>, <b>...</b>) keeps it
    on every piece."""
    out = []
    for line in str(text).split("<br>"):
        tag = re.fullmatch(r"<(\w+)>(.*)</\1>", line.strip(), re.S)
        inner = tag.group(2) if tag else line
        pieces = textwrap.wrap(inner, width) or [inner]  # a long path is broken too
        out += [f"<{tag.group(1)}>{p}</{tag.group(1)}>" for p in pieces] if tag else pieces
    return "<br>".join(out)


def fit_titles(fig: go.Figure, width: int = TITLE_CHARS) -> go.Figure:
    """Wrap the title, and each subplot's title to its share of the width, so no text sticks
    out of a half-page column; the top margin grows with the lines, so the title never
    runs into the subplot titles."""
    title_lines = subplot_lines = 0
    if fig.layout.title.text:
        text = wrap_html(fig.layout.title.text, width)
        title_lines = text.count("<br>") + 1
        fig.update_layout(title=dict(text=text, yref="container", y=1, yanchor="top", pad=dict(t=8)))
    n_cols = max(1, len({tuple(x.domain or (0, 1)) for x in fig.select_xaxes()}))  # panels side by side
    for annotation in fig.layout.annotations:
        if annotation.text and annotation.yanchor == "bottom" and annotation.showarrow is False:  # a subplot title
            annotation.text = wrap_html(annotation.text, max(14, width * 4 // 5 // n_cols))  # subplot titles are larger
            if annotation.y is not None and annotation.y >= 0.99:  # a top-row subplot title
                subplot_lines = max(subplot_lines, annotation.text.count("<br>") + 1)
    fig.update_layout(margin_t=16 + 21 * title_lines + 17 * subplot_lines)
    return fig


Scale = tuple[float, float, str, "float | None"]  # zmin, zmax, colorscale, zmid


def heatmaps(
    panels: Sequence[tuple[str, Tensor]],
    rows: Sequence[str],
    columns: Sequence[str],
    title: str,
    zmin: float,
    zmax: float,
    colorscale: str = "RdBu",
    zmid: float | None = None,
    hover: Sequence[Sequence[Sequence[str]]] | None = None,
    scales: Sequence[Scale] | None = None,
) -> go.Figure:
    """Side-by-side heatmaps sharing rows (sites, top to bottom) and columns (positions).
    Every panel uses (zmin, zmax, colorscale, zmid) unless `scales` gives each its own (a
    fraction on a sequential 0..1 scale next to a diverging metric). The figure takes its
    column's width; colour bars lie flat under the panels they belong to (one per run of
    panels sharing a scale), so nothing sticks out to the right."""
    scales = list(scales) if scales is not None else [(zmin, zmax, colorscale, zmid)] * len(panels)
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[name for name, _ in panels], shared_yaxes=True, horizontal_spacing=0.03)
    for i, ((name, values), (lo, hi, scale, mid)) in enumerate(zip(panels, scales)):
        z = values.float().tolist()  # [row, column]
        first = next(j for j in range(i + 1) if scales[j:i + 1] == [scales[i]] * (i + 1 - j))  # first panel of this scale's run
        last = i == len(panels) - 1 or scales[i + 1] != scales[i]
        x0, x1 = fig.layout[f"xaxis{first + 1 if first else ''}"].domain[0], fig.layout[f"xaxis{i + 1 if i else ''}"].domain[1]
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=list(columns),
                y=list(rows),
                zmin=lo,
                zmax=hi,
                zmid=mid,
                colorscale=scale,
                text=[[f"{v:.2f}" for v in row] for row in z],
                texttemplate="%{text}",
                customdata=None if hover is None else hover[i],
                hovertemplate="%{y} @ %{x}<br>%{text}" + ("<br>%{customdata}" if hover is not None else "") + "<extra></extra>",
                showscale=last,
                colorbar=dict(orientation="h", x=(x0 + x1) / 2, xanchor="center", len=x1 - x0, thickness=10,
                              yref="container", y=0, yanchor="bottom", ypad=6),
            ),
            row=1,
            col=i + 1,
        )
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(tickangle=-45)
    fig.update_layout(title=title, height=260 + 26 * len(rows), margin=dict(l=10, r=10, b=110))
    return fit_titles(fig)


def notice(title: str, text: str) -> go.Figure:
    """A figure that says why there is nothing to plot (a probe undefined for this model)."""
    fig = go.Figure()
    text = "<br>".join(textwrap.wrap(text.replace("<br>", " "), 60, break_long_words=True))  # fits a half-page column
    fig.add_annotation(text=text, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper", font=dict(size=12), align="left")
    fig.update_layout(title=title, height=220, xaxis_visible=False, yaxis_visible=False, plot_bgcolor="white")
    return fit_titles(fig)


def write_html(fig: go.Figure, path: str | os.PathLike) -> Path:
    """Self-contained HTML (plotly.js inlined, opens offline), written atomically."""
    return write_text_atomic(path, fig.to_html(include_plotlyjs=True, full_html=True))
