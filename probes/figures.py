"""Thin plotly views of probe results: every number is computed before it gets here."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots
from torch import Tensor

from models.files import write_text_atomic


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
) -> go.Figure:
    """Side-by-side heatmaps sharing rows (sites, top to bottom) and columns (positions)."""
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[name for name, _ in panels], shared_yaxes=True, horizontal_spacing=0.04)
    for i, (name, values) in enumerate(panels):
        z = values.float().tolist()  # [row, column]
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=list(columns),
                y=list(rows),
                zmin=zmin,
                zmax=zmax,
                zmid=zmid,
                colorscale=colorscale,
                text=[[f"{v:.2f}" for v in row] for row in z],
                texttemplate="%{text}",
                customdata=None if hover is None else hover[i],
                hovertemplate="%{y} @ %{x}<br>%{text}" + ("<br>%{customdata}" if hover is not None else "") + "<extra></extra>",
                showscale=i == len(panels) - 1,
            ),
            row=1,
            col=i + 1,
        )
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title=title, height=160 + 28 * len(rows), width=max(520, 80 + 360 * len(panels)))
    return fig


def notice(title: str, text: str) -> go.Figure:
    """A figure that says why there is nothing to plot (a probe undefined for this model)."""
    fig = go.Figure()
    text = "<br>".join(textwrap.wrap(text, 110, break_long_words=False, replace_whitespace=False))
    fig.add_annotation(text=text, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper", font=dict(size=14), align="left")
    fig.update_layout(title=title, height=220, xaxis_visible=False, yaxis_visible=False)
    return fig


def write_html(fig: go.Figure, path: str | os.PathLike) -> Path:
    """Self-contained HTML (plotly.js inlined, opens offline), written atomically."""
    return write_text_atomic(path, fig.to_html(include_plotlyjs=True, full_html=True))
