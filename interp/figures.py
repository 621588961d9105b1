"""Plotly figures of what interp computes. Each function takes computed data (a Flow, role
flows, AnchorVectors, complexity results) and only draws it; nothing here runs a model."""

from __future__ import annotations

from typing import Sequence

import plotly.colors as pc
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots
from torch import Tensor

from interp.complexity import Condensation, EmbeddingStructure, Spectra
from interp.flow import Flow, FlowKind
from interp.vectors import AnchorVectors
from models.task import ROLES
from probes.figures import TITLE_CHARS, fit_titles

ROLE_COLORS = {"key": "#d62728", "anchor1": "#1f77b4", "anchor2": "#2ca02c", "noise": "#9a9a9a", "last": "#111111", "anchor2+last": "#2ca02c"}
_FONT = dict(size=11)


def _layout(fig: go.Figure, title: str, height: int = 420) -> go.Figure:
    """Shared look: small fonts, titles wrapped to fit a half-page column."""
    fig.update_layout(title=dict(text=title, font=dict(size=14)), height=height, margin=dict(l=50, r=30, t=70, b=45), font=_FONT)
    return fit_titles(fig, TITLE_CHARS + 10)  # 14 px titles: a few more characters fit


def position_labels(flow: Flow) -> list[str]:
    return [f"{p}: {t} {role}" for p, (t, role) in enumerate(zip(flow.tokens.tolist(), flow.roles))]


# ---- flow ------------------------------------------------------------------------------------
def flow_diagram(flow: Flow, kind: FlowKind = "value", title: str | None = None, min_flow: float = 0.03, max_width: float = 12.0) -> go.Figure:
    """The paper's Fig. 3a: one column of nodes per layer boundary (x = 0 are the input
    tokens, x = l + 1 the residual stream after layer l), one line per (src -> dst) flow of
    each layer, width proportional to the flow, coloured by the source's role."""
    flows = flow.flow(kind)  # [layer, dst, src]
    n_layers, n_pos = flows.shape[0], flows.shape[1]
    roles = flow.roles
    fig = go.Figure()
    shapes = [dict(type="line", x0=0, x1=n_layers, y0=p, y1=p, line=dict(color="#eeeeee", width=1), layer="below") for p in range(n_pos)]
    for layer in range(n_layers):
        for dst in range(n_pos):
            for src in range(dst + 1):
                w = flows[layer, dst, src].item()
                if w >= min_flow:
                    color = ROLE_COLORS[roles[src].split("+")[0]]
                    shapes.append(dict(type="line", x0=layer, y0=src, x1=layer + 1, y1=dst, line=dict(color=color, width=max(0.5, w * max_width)), opacity=0.55, layer="below"))
    xs = [x for x in range(n_layers + 1) for _ in range(n_pos)]
    ys = [p for _ in range(n_layers + 1) for p in range(n_pos)]
    colors = [ROLE_COLORS[roles[p]] for _ in range(n_layers + 1) for p in range(n_pos)]
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", marker=dict(size=11, color=colors, line=dict(color="white", width=1)), hoverinfo="skip", showlegend=False))
    fig.add_trace(go.Scatter(x=[-0.08] * n_pos, y=list(range(n_pos)), mode="text", text=position_labels(flow), textposition="middle left", hoverinfo="skip", showlegend=False))
    fig.add_trace(go.Scatter(x=[n_layers + 0.08], y=[n_pos - 1], mode="text", text=[f"-> {flow.prediction}"], textposition="middle right", hoverinfo="skip", showlegend=False))
    fig.update_layout(shapes=shapes)
    fig.update_xaxes(range=[-1.6, n_layers + 0.6], tickvals=list(range(n_layers + 1)), ticktext=["tokens"] + [f"after layer {l}" for l in range(n_layers)], showgrid=False, zeroline=False)
    fig.update_yaxes(autorange="reversed", showticklabels=False, showgrid=False, zeroline=False)
    what = "value-weighted flow" if kind == "value" else "attention (heads averaged)"
    return _layout(fig, title or f"Information flow ({what}): {' '.join(map(str, flow.tokens.tolist()))}", height=380)


def attention_heatmaps(flow: Flow, title: str | None = None) -> go.Figure:
    """Every head of every layer for one prompt (rows: layers, columns: heads)."""
    n_layers, n_heads = flow.n_layers, flow.n_heads
    labels = position_labels(flow)
    fig = make_subplots(rows=n_layers, cols=n_heads, subplot_titles=[f"layer {l} head {h}" for l in range(n_layers) for h in range(n_heads)],
                        vertical_spacing=min(0.25, 0.5 / n_layers))
    for layer in range(n_layers):
        for head in range(n_heads):
            fig.add_trace(
                go.Heatmap(z=flow.attention[layer, head].tolist(), x=labels, y=labels, zmin=0, zmax=1, colorscale="Blues", showscale=layer == 0 and head == 0,
                           hovertemplate="dst %{y}<br>src %{x}<br>attention %{z:.3f}<extra></extra>"),
                row=layer + 1, col=head + 1,
            )
            fig.update_yaxes(autorange="reversed", row=layer + 1, col=head + 1)
    fig.update_xaxes(tickangle=45)
    return _layout(fig, title or "Attention patterns (hook_pattern): row = position reading, column = position read", height=380 * n_layers + 60)


def role_flow_figure(shares: Tensor, uniform: Tensor | None = None, title: str = "Mean flow between roles") -> go.Figure:
    """Heatmaps of [layer, role_dst, role_src] shares, one per layer; with `uniform`, the
    colour is the excess over uniform causal attention and the text shows both."""
    n_layers = shares.shape[0]
    fig = make_subplots(rows=1, cols=n_layers, subplot_titles=[f"layer {l}" for l in range(n_layers)], horizontal_spacing=0.08)
    for layer in range(n_layers):
        share = shares[layer]
        color = share - uniform[layer] if uniform is not None else share
        text = [[f"{s:.2f}" + (f"<br>({u:.2f})" if uniform is not None else "") for s, u in zip(row, urow)] for row, urow in zip(share.tolist(), (uniform[layer] if uniform is not None else share).tolist())]
        fig.add_trace(
            go.Heatmap(z=color.tolist(), x=list(ROLES), y=list(ROLES), text=text, texttemplate="%{text}", colorscale="RdBu", zmid=0, zmin=-1 if uniform is not None else 0, zmax=1,
                       showscale=layer == 0, hovertemplate="%{y} reads %{x}: %{text}<extra></extra>"),
            row=1, col=layer + 1,
        )
        fig.update_yaxes(autorange="reversed", row=1, col=layer + 1)
    fig.update_xaxes(title_text="source role")
    fig.update_yaxes(title_text="destination role", row=1, col=1)
    return _layout(fig, title, height=380)


def rollout_figure(role_rollout: Tensor, title: str = "Attention rollout: what the last position is made of") -> go.Figure:
    """Share of each role in the last position after each layer (rollout with residual)."""
    last = ROLES.index("last")
    fig = go.Figure()
    for layer in range(role_rollout.shape[0]):
        fig.add_trace(go.Bar(x=list(ROLES), y=role_rollout[layer, last].tolist(), name=f"after layer {layer}"))
    fig.update_layout(barmode="group", yaxis_title="share of the last position", yaxis_range=[0, 1])
    return _layout(fig, title, height=340)


# ---- vectors --------------------------------------------------------------------------------
def _marker_symbols(vectors: AnchorVectors) -> list[str]:
    held, trap = vectors.is_pair(vectors.task.held_out_pair), vectors.is_pair(vectors.task.trap_pair)
    return ["x" if h else "diamond" if t else "circle" for h, t in zip(held.tolist(), trap.tolist())]


def vector_scatter(vectors: AnchorVectors, coords: Tensor, title: str, axis_names: Sequence[str] = ("PC1", "PC2")) -> go.Figure:
    """Prompts as points (PCA or t-SNE coordinates), coloured by trained label; the
    held-out pair is drawn as x, the trap pair as diamonds."""
    fig = go.Figure(go.Scatter(
        x=coords[:, 0].tolist(), y=coords[:, 1].tolist(), mode="markers", text=vectors.names(),
        marker=dict(size=6, color=vectors.labels.tolist(), colorscale="Viridis", symbol=_marker_symbols(vectors), colorbar=dict(title="label"), opacity=0.8),
        hovertemplate="%{text}<extra></extra>",
    ))
    fig.update_layout(xaxis_title=axis_names[0], yaxis_title=axis_names[1])
    return _layout(fig, title, height=420)


def cosine_figure(vectors: AnchorVectors, hook: str | int, keys: Sequence[int], groups: Tensor | None = None, title: str | None = None) -> go.Figure:
    """The paper's Fig. 4: cosine similarity of the prompts with `keys` (all pairs), sorted
    by `groups` (default: the trained label); boxes mark blocks of one group."""
    groups = vectors.labels if groups is None else groups
    subset = torch.isin(vectors.prompts.key, torch.tensor(list(keys)))
    order = [i for i in vectors.order(groups).tolist() if subset[i]]
    cos = vectors.cosine(hook, torch.tensor(order))
    names = [vectors.names()[i] for i in order]
    ordered = groups[order].tolist()
    shapes, start = [], 0
    for i in range(1, len(ordered) + 1):
        if i == len(ordered) or ordered[i] != ordered[start]:
            if i - start > 1:
                shapes.append(dict(type="rect", x0=start - 0.5, x1=i - 0.5, y0=start - 0.5, y1=i - 0.5, line=dict(color="black", width=1)))
            start = i
    fig = go.Figure(go.Heatmap(z=cos.tolist(), x=names, y=names, zmin=-1, zmax=1, colorscale="RdBu", zmid=0, hovertemplate="%{y}<br>%{x}<br>cos %{z:.2f}<extra></extra>"))
    fig.update_layout(shapes=shapes)
    fig.update_xaxes(showticklabels=False)
    fig.update_yaxes(autorange="reversed", showticklabels=False)
    hook_name = vectors.hooks[hook] if isinstance(hook, int) else hook
    return _layout(fig, title or f"Cosine similarity at {hook_name}, {vectors.position} position (boxes: equal target)", height=480)


def vector_scores_figure(scores: dict[str, dict[str, float]], title: str = "Vector scores per hook") -> go.Figure:
    fig = go.Figure()
    names = sorted({name for per_hook in scores.values() for name in per_hook}, key=list(next(iter(scores.values()))).index)
    for name in names:
        fig.add_trace(go.Bar(x=list(scores), y=[scores[h].get(name) for h in scores], name=name.replace("_", " ")))
    fig.update_layout(barmode="group", yaxis_title="cosine / score", legend=dict(orientation="h", y=-0.25))
    return _layout(fig, title, height=420)


# ---- complexity -------------------------------------------------------------------------------
def condensation_figure(condensation: Condensation, title: str | None = None) -> go.Figure:
    order = condensation.order
    cos = condensation.cosine[order][:, order]
    fig = go.Figure(go.Heatmap(z=cos.tolist(), zmin=-1, zmax=1, colorscale="RdBu", zmid=0, hovertemplate="neuron %{y} / %{x}: cos %{z:.2f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(xaxis_title="query neuron (sorted by group)", yaxis_title="query neuron")
    c = condensation.to_dict()
    return _layout(fig, title or f"Layer {c['layer']} W_Q neurons: {c['n_groups']} groups of cos > {c['threshold']} among {c['n_neurons']}", height=420)


def embedding_figure(embedding: EmbeddingStructure, n_eigen: int = 20, title: str | None = None) -> go.Figure:
    """Covariance spectrum of the key embeddings, and the keys on their first two principal
    components, coloured by key value (colour bar) and joined x -> x+1."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=["covariance eigenvalues (fraction)", "keys on PC1/PC2 (line: x to x+1)"], horizontal_spacing=0.12)
    explained = embedding.explained[:n_eigen]
    fig.add_trace(go.Bar(x=list(range(1, len(explained) + 1)), y=explained.tolist(), showlegend=False), row=1, col=1)
    fig.add_trace(go.Scatter(x=embedding.coords[:, 0].tolist(), y=embedding.coords[:, 1].tolist(), mode="lines+markers", text=[f"key {k}" for k in embedding.keys.tolist()],
                             marker=dict(color=embedding.keys.tolist(), colorscale="Viridis", size=6, showscale=True,
                                         colorbar=dict(title=dict(text="key", side="right"), thickness=12, len=0.9)),
                             line=dict(color="#cccccc", width=1), showlegend=False, hovertemplate="%{text}<extra></extra>"), row=1, col=2)
    fig.update_xaxes(title_text="component", row=1, col=1)
    fig.update_xaxes(title_text="PC1", row=1, col=2)
    fig.update_yaxes(title_text="PC2", row=1, col=2)
    return _layout(fig, title or f"Key embeddings: ordinal R^2 {embedding.ordinal_r2:.2f}", height=380)


# Enough distinct colours for every weight matrix of a deep model: 24 colours, then dashes.
SPECTRA_COLORS = pc.qualitative.Dark24
SPECTRA_DASHES = ("solid", "dash", "dot", "dashdot")


def spectra_figure(spectra: Spectra, title: str = "Singular values / largest (stable rank in legend)") -> go.Figure:
    """One line per weight matrix, each with its own colour (and dash, past 24 matrices)."""
    fig = go.Figure()
    ranks = spectra.stable_rank
    for i, (name, s) in enumerate(spectra.singular_values.items()):
        line = dict(color=SPECTRA_COLORS[i % len(SPECTRA_COLORS)], dash=SPECTRA_DASHES[(i // len(SPECTRA_COLORS)) % len(SPECTRA_DASHES)], width=1.5)
        fig.add_trace(go.Scatter(y=(s / s[0]).tolist(), mode="lines", name=f"{name} ({ranks[name]:.1f})", line=line))
    fig.update_layout(yaxis_type="log", xaxis_title="index", yaxis_title="sigma_i / sigma_max", legend=dict(font=dict(size=10)))
    return _layout(fig, title, height=460)


def circuitsvis_html(flow: Flow, title: str = "") -> str:
    """A whole HTML page with circuitsvis' interactive attention view of every head of every
    layer. circuitsvis' `local_src` inlines its bundled dist/cdn/iife.js (no CDN link), so
    the page renders offline."""
    import html

    import circuitsvis as cv
    import einops

    heads = einops.rearrange(flow.attention, "layer head dst src -> (layer head) dst src")
    names = [f"L{layer}H{head}" for layer in range(flow.n_layers) for head in range(flow.n_heads)]
    tokens = [f"{t} ({role})" for t, role in zip(flow.tokens.tolist(), flow.roles)]
    view = cv.attention.attention_heads(attention=heads, tokens=tokens, attention_head_names=names)
    return f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body><h3>{html.escape(title)}</h3>{view.local_src}</body></html>"
