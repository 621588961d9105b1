"""One self-contained HTML report: the classification table and every figure of interp (and
the causal probes, when present) for each model side by side, plus phase diagrams of sweep
databases. `anchor-interp report [MODEL...] [SWEEP.db...] --out report.html`.

Computing and drawing are separate: `analyze` measures one model (data only), `sections`
turns that into (title, figure) pairs, `render_html` lays them out. plotly.js is inlined
once in the page head, so the file opens offline and every figure shares it.
"""

from __future__ import annotations

import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence, Union

import plotly.graph_objects as go
import plotly.io as pio
import torch
from plotly.offline import get_plotlyjs
from tqdm.auto import tqdm

from interp.complexity import Complexity, weight_complexity
from interp.flow import Flow, FlowBatch, Route, flow_prompts, trace_flow, trace_flows
from interp.sweep_report import sweep_sections
from interp.vectors import AnchorVectors, anchor_grid, anchor_vectors
from models import hooked
from models.files import output_file, write_text_atomic
from models.task import AnchorTask
from probes.report import REPORT_PROBES, report_sections
from probes.solution import Classification, classify

SHIPPED = ("inferential", "symmetric")
Content = Union[go.Figure, str]  # a figure, or an HTML fragment (tables, route summaries)
N_FLOW_PROMPTS = 2000
EXAMPLE_KEY_POS = 2


@dataclass(frozen=True)
class ModelAnalysis:
    """Everything the report shows about one model, as data."""

    name: str
    task: AnchorTask
    classification: Classification
    example: Flow  # one held-out-pair prompt
    flows: FlowBatch  # random prompts of every pair
    route: Route
    routes_by_position: dict[int, Route]
    vectors: AnchorVectors  # last position after each layer
    value_vectors: AnchorVectors  # value vector at the first anchor, in the layer that reads the anchors
    complexity: Complexity
    probe_sections: list[tuple[str, go.Figure]]  # from probes.report_sections, when present
    _figures: list = field(default_factory=list, init=False, repr=False, compare=False)  # `sections` draws once

    def summary(self) -> dict[str, str]:
        """The rows of the classification table (name -> value), shared by HTML and stdout."""
        c, last = self.classification, self.vectors.hooks[-1]
        scores = self.vectors.scores()
        first = scores[self.vectors.hooks[0]]
        cond = self.complexity.condensation.to_dict()
        return {
            "solution": c.label,
            "seen pairs, train keys": f"{c.seen_train_keys:.3f}",
            "seen pairs, test keys": f"{c.seen_test_keys:.3f}",
            "(4,3) inferential x-10, test keys": f"{c.inferential_test_keys:.3f}",
            "(4,3) symmetric x-6, test keys": f"{c.symmetric_test_keys:.3f}",
            "(4,3) inferential by key position": " ".join(f"{a:.2f}" for a in c.inferential_by_position),
            "(4,3) symmetric by key position": " ".join(f"{a:.2f}" for a in c.symmetric_by_position),
            "route (value-weighted flow)": self.route.name,
            "route by key position": " ".join([f"{p}:{r.name[:3]}" for p, r in self.routes_by_position.items()]
                                              + [f"{p}:n/a" for p in self.flows.unrouted_key_positions()]),
            "same-target parallel score, last layer": f"{scores[last]['parallel_score']:.2f}",
            "(4,3) vector, last layer: cos with x-10 / x-6 targets":
                f"{scores[last]['held_out_vs_inferential_targets']:.2f} / {scores[last]['held_out_vs_symmetric_targets']:.2f}",
            "(4,3) vs (3,4) cosine after layer 0": f"{first['mirror_pair_cosine']:.2f} (other pairs {first['other_pairs_cosine']:.2f})",
            f"W_Q neuron groups (cos > {cond['threshold']})": f"{cond['n_neurons']} neurons in {cond['n_groups']} groups",
            "key embedding ordinal R^2": f"{self.complexity.embedding.ordinal_r2:.2f}",
            "mean stable rank of weights": f"{self.complexity.spectra.mean_stable_rank:.1f}",
        }


def example_prompt(task: AnchorTask) -> torch.Tensor:
    """A held-out-pair (4,3) prompt with a mid-range key at key position 2."""
    key = (task.key_min + task.key_max) // 2
    return anchor_grid(task, key_pos=min(EXAMPLE_KEY_POS, task.n_key_positions - 1), pairs=[task.held_out_pair], keys=[key]).tokens[0]


ANALYSIS_STEPS = ("flow", "classification", "anchor vectors", "weight complexity")


def analyze(name: str, n_flow_prompts: int = N_FLOW_PROMPTS, probes: bool = True, step: Callable[[str], None] | None = None) -> ModelAnalysis:
    """Load a shipped model or checkpoint folder and measure everything the report shows.
    `step(what)` is called as each part begins (ANALYSIS_STEPS, then the probes'
    REPORT_PROBES when `probes`): the report's progress bar."""
    step = step or (lambda what: None)
    model, task = hooked.load(name), hooked.task_of(name)
    step("flow")
    flows = trace_flows(model, flow_prompts(task, n_flow_prompts), task)
    example = trace_flow(model, example_prompt(task), task)
    step("classification")
    classification = classify(model, task)
    step("anchor vectors")
    reader = min(1, model.cfg.n_layers - 1)  # the paper's layer 2 (ours 1) reads the anchors
    vectors = anchor_vectors(model, task)
    value_vectors = anchor_vectors(model, task, hooks=[f"blocks.{reader}.attn.hook_v"], position="anchor1")
    step("weight complexity")
    complexity = weight_complexity(model, task)
    return ModelAnalysis(
        name=name,
        task=task,
        classification=classification,
        example=example,
        flows=flows,
        route=flows.route(),
        routes_by_position=flows.routes_by_key_position(),
        vectors=vectors,
        value_vectors=value_vectors,
        complexity=complexity,
        probe_sections=list(report_sections(name, model, task, step=step)) if probes else [],
    )


# ---- figures -------------------------------------------------------------------------------
def mid_keys(task: AnchorTask, n: int = 8) -> list[int]:
    """`n` consecutive keys around the middle of the key range (the cosine figures' keys)."""
    start = (task.key_min + task.key_max - n) // 2
    return list(range(start, start + n))


def sections(a: ModelAnalysis) -> list[tuple[str, Content]]:
    """(title, figure or HTML) for one model, in report order; equal titles line up across
    models. The causal probes' sections come last."""
    if not a._figures:
        a._figures.extend(_interp_sections(a))
    # Titles line up across models, so a model name the probes put in front is dropped.
    return a._figures + [(f"Causal probes: {title.removeprefix(f'{a.name}: ')}", fig) for title, fig in a.probe_sections]


def _interp_sections(a: ModelAnalysis) -> list[tuple[str, Content]]:
    from interp import figures

    keys = mid_keys(a.task)
    out: list[tuple[str, Content]] = [
        ("Information flow of one (4,3) prompt (paper Fig. 3a)", figures.flow_diagram(a.example)),
        ("Attention patterns of that prompt, every layer and head", figures.attention_heatmaps(a.example)),
        (f"Mean value-weighted flow between roles over {len(a.flows)} prompts (colour: excess over uniform attention; uniform share in brackets)",
         figures.role_flow_figure(a.flows.role_flow("value"), a.flows.uniform_role_flow())),
        ("Attention rollout (with the residual) of the last position", figures.rollout_figure(a.flows.role_rollout("attention").nan_to_num())),
        ("Route summary", _route_html(a)),
    ]
    for hook in a.vectors.hooks:
        coords, explained = a.vectors.pca(hook)
        out.append((f"PCA of the last position at {hook} (x: (4,3), diamond: (3,4))",
                    figures.vector_scatter(a.vectors, coords, f"explained variance {explained[0]:.2f}, {explained[1]:.2f}")))
    tsne_keys = mid_keys(a.task, 20)  # t-SNE is slow: 20 keys x 16 pairs
    few = a.vectors.select(torch.isin(a.vectors.prompts.key, torch.tensor(tsne_keys)))
    out.append((f"t-SNE of the last position after layer 0, keys {tsne_keys[0]}..{tsne_keys[-1]} x all pairs",
                figures.vector_scatter(few, few.tsne(0), "t-SNE (mirrored pairs collapse in a symmetric model)", ("t-SNE 1", "t-SNE 2"))))
    out += [
        (f"Cosine similarity after the last layer, keys {keys[0]}..{keys[-1]} x all pairs (paper Fig. 4)", figures.cosine_figure(a.vectors, -1, keys)),
        (f"Cosine similarity of the value vector at anchor 1 ({a.value_vectors.hooks[0]}), sorted by g(x; a1)",
         figures.cosine_figure(a.value_vectors, 0, keys, groups=a.value_vectors.first_step, title=f"first-step grouping score {a.value_vectors.group_score(0, a.value_vectors.first_step):.2f}")),
        ("Vector scores per layer", figures.vector_scores_figure(a.vectors.scores())),
        ("First-layer W_Q condensation (paper Fig. 5)", figures.condensation_figure(a.complexity.condensation)),
        ("Key embeddings: covariance spectrum and PCA", figures.embedding_figure(a.complexity.embedding)),
        ("Singular-value spectra of every weight matrix", figures.spectra_figure(a.complexity.spectra)),
    ]
    return out


def _route_html(a: ModelAnalysis) -> str:
    by_position = "\n".join([f"key position {p}: {r.name}" for p, r in a.routes_by_position.items()]
                            + [f"key position {p}: not named (the second anchor is the last position, where the route rule is "
                               "ill-defined: the answer position would be reading itself; see interp/flow.py)" for p in a.flows.unrouted_key_positions()])
    return f"<pre>{html.escape(str(a.route))}\n\nby key position (route rule on those prompts alone):\n{html.escape(by_position)}</pre>"


# ---- how to read it ---------------------------------------------------------------------------
# Under each section's heading, keyed by how its title starts; every measure is defined
# where it appears. x-10 and x-6 are the two answers to the held-out pair (4,3): x-10 =
# x + shift(4) + shift(3), the composite of the single-anchor maps (inferential); x-6 = the
# label trained on the mirrored pair (3,4), copied (symmetric).
_X = ("x-10 = x + shift(4) + shift(3), the composition of the two single-anchor maps (inferential); "
      "x-6 = the label trained on the mirrored pair (3,4), copied (symmetric)")
HOW_TO_READ: dict[str, str] = {
    "Classification and summary": "One row per measure, one column per model; the last column defines each measure. "
        "Accuracy = the argmax at the last position equals the target. Test keys: keys never trained at that "
        "position (key x at position p with x mod 9 == p). On the held-out pair (4,3): " + _X + ".",
    "Information flow of one": "Nodes are positions (rows) at each layer boundary (columns: the tokens, then the "
        "residual stream after each layer). A line from position j to position i is the share of what that layer's "
        "attention writes into i that comes from j (value-weighted flow: attention x ||v_j W_O||, each row summing "
        "to 1), its width proportional, coloured by the source's role; shares under 0.03 are not drawn. Inferential "
        "(paper Fig. 3a): the key flows into the anchors' positions in layer 0, and the last position reads the "
        "anchors in layer 1. Symmetric: the last position reads both anchors, then the key.",
    "Attention patterns": "One heatmap per head: row = the position reading, column = the position read, exactly "
        "as blocks.L.attn.hook_pattern holds it; each row sums to 1, and the upper triangle is 0 (causal).",
    "Mean value-weighted flow": "Rows: the role reading (destination); columns: the role read (source); one panel "
        "per layer. The number is the mean share of the destination's attention output that comes from that role "
        "(value-weighted flow); in brackets, the share uniform causal attention would give. Colour: the excess over "
        "uniform (blue above, red below). The route rule looks only at these excesses.",
    "Attention rollout": "What the last position is made of after each layer, by role: attention rollout with the "
        "residual (Abnar & Zuidema 2020), R_l = norm(0.5 A_l + 0.5 I) R_(l-1); the bars of one layer sum to 1.",
    "Route summary": "The route rule of interp/flow.py on the mean value-weighted flow: per layer, which roles the "
        "key goes into, what the last position reads (the anchors or the key), where the two anchors meet; an edge "
        "is a share at least `threshold` above uniform attention (share and uniform share given). inferential = "
        "key -> anchors, then anchors -> last (composition); symmetric = anchors fused at last, then key -> last "
        "(lookup); mixed = both; other = neither. No route is named at the last key position: its second anchor "
        "is the answer position itself, where the rule is ill-defined.",
    "PCA of the last position": "One point per prompt (key x anchor pair): the last position's residual stream after "
        "that layer on its first two principal components (explained variance in the title). Colour = the trained "
        "label (the answer), x = the held-out pair (4,3), diamond = the trap pair (3,4). Inferential: the (4,3) "
        "points lie among the prompts whose answer is their x-10; symmetric: on the (3,4) diamonds.",
    "t-SNE of the last position": "The same vectors (after layer 0, fewer keys) laid out by t-SNE, which keeps "
        "neighbours together: in a symmetric model each (4,3) point sits on the (3,4) diamond of its key.",
    "Cosine similarity after the last layer": "Cosine similarity between the last-position vectors of the prompts "
        "(the keys given x all pairs), sorted by trained label; black boxes enclose prompts with the same label "
        "(target). Bright boxes: each target is one direction (paper Fig. 4).",
    "Cosine similarity of the value vector": "The value vector (attn.hook_v) at the first anchor's position, in the "
        "layer that reads the anchors, sorted by g(x; a1) = x + shift(a1), the first step of the composition; boxes "
        "enclose equal g(x; a1). First-step grouping score (title): mean cosine between prompts with the same "
        "g(x; a1) minus mean cosine between prompts with different ones (1 = each first-step value is one "
        "direction, 0 = no grouping): high when the model has computed the intermediate g(x; a1).",
    "Vector scores per layer": "The vector scores at every layer. parallel score: the same grouping score by trained "
        "label (same target) over the trained pairs; first step score: by g(x; a1); held out vs inferential / "
        "symmetric targets: mean cosine of each (4,3) vector with trained prompts whose label is its x-10 / its x-6 "
        "answer; mirror pair cosine: of a (4,3) vector with the (3,4) vector at the same key (near 1: collapsed, "
        "symmetric), against other pairs cosine, its mean with every other pair at that key.",
    "First-layer W_Q condensation": "Cosine similarity between the first layer's query neurons (the columns of W_Q), "
        "ordered by group; a group = neurons with cosine > 0.7 (title: groups among neurons). Large blocks = "
        "condensed: many neurons point one way, low complexity (paper Fig. 5: small init, inferential).",
    "Key embeddings": "Left: the fraction of the variance of the key tokens' embeddings on each principal component. "
        "Right: the keys on PC1/PC2, coloured by key value (colour bar), a line joining x to x+1: a smooth curve = "
        "the embeddings order the keys. ordinal R^2 (title): R^2 of the key's value fitted linearly from the top "
        "components (1 = ordered).",
    "Singular-value spectra": "Singular values of every weight matrix divided by its largest, on a log scale. In the "
        "legend, its stable rank sum_i (sigma_i / sigma_max)^2: low = a few dominant directions, lower complexity.",
    "Causal probes: composition test": "Prompt A's activation at one site (row) and position (column) is patched into "
        "prompt B (same key position and noise); the cells give the fraction of pairs with each outcome. "
        "compositional: B now answers g(g(x_A; a1_A); a2_B), A's first step composed with B's second anchor (the "
        "site carries the intermediate g(x; a1)); copied_a: B answers A's own answer (the site carries A's whole "
        "answer); pair_only: B answers x_B + A's anchor pair (the site carries A's two anchors fused, without the "
        "key). Hover for unchanged, key_only, anchor_only and other. An inferential model has a site near 1 for "
        "compositional; a symmetric one has none.",
    "Causal probes: order probe": "Each site of the (3,4) run is patched into the (4,3) run with the same key and "
        "noise. Left: the normalised logit difference of x-6 over x-10 (0 = as unpatched, 1 = as in the (3,4) run; "
        "diverging scale, it can overshoot). Right: the fraction of pairs whose answer turns from x-10 into x-6 "
        "(0..1). Only pairs the model answers x-6 on (3,4) and x-10 on (4,3) count, so the probe is undefined for a "
        "model that answers x-6 on (4,3) already. " + _X + ".",
    "Causal probes: key route": "Clean and corrupted prompts differ in the key only; each site of the clean run is "
        "patched into the corrupted one. Left: the normalised logit difference (1 = the clean answer fully "
        "restored, 0 = no effect); right: the fraction of pairs answering the clean answer. The sites that restore "
        "it trace the key's route to the last position.",
    "Causal probes: mean-ablation sweep": "One site at a time (row: a head's output z or an MLP's output, per "
        "layer; column: position) is replaced by its mean over prompts. Each cell is the accuracy AFTER that "
        "ablation; each panel's title gives it before (intact). seen: trained pairs answered with their label; "
        "inferential: (4,3) answered x-10; symmetric: (4,3) answered x-6. A cell far below the intact value = the "
        "site is needed.",
    "Causal probes: DAS": "Distributed alignment search: at one site (a stream point at one role's position) DAS "
        "learns k orthonormal directions whose coordinates, swapped from prompt A into prompt B (key, a1 and a2 all "
        "different), make B answer as a causal model says. y1: the composition's intermediate g(x; a1) is swapped, "
        "so B should answer g(y1_A; a2_B); pair offset: the lookup's offset of the anchor pair is swapped, so B should "
        "answer x_B + label(A's pair). IIA (interchange-intervention accuracy) = the fraction of held-out pairs "
        "(held-out keys and anchor pairs) answering so; train = on the training pairs. Searched here: the composition "
        "test's most compositional and most pair_only sites, k in 4 and 16 (every site and k: anchor-interp probe das "
        "MODEL). Reading: a composing model has a small subspace carrying y1 (IIA near 1 with k of 16 or fewer, of "
        "d_model), where the lookup variable fails; a lookup model has no y1 subspace anywhere (IIA near 0) and "
        "carries the fused pair offset at the last position instead.",
    "Causal probes: path patching": "One sender (the embedding, layer 0's attention or its MLP) at the positions of "
        "one role is patched from the clean into the corrupted run, into the last layer's input there only: its keys "
        "and values for the last position's attention, or the whole last layer at the last position. Each number is "
        "the share of the answer that route carries alone (normalised logit difference, 1 = all of it), summed over "
        "the senders: via the anchor positions (layer 0 moved it there, layer 1 reads it there: composition), read by "
        "the last layer at the key position itself, moved to the last position in layer 0 (the lookup's fused "
        "anchors), noise. sum = all routes, 1 when the paths do not interact. Key position 6 is left out (the second "
        "anchor is the last position there).",
    "Sweep": "One model trained per grid cell. Label: classify's (unfit when the seen-pair accuracy on test keys is "
        "below 0.9, else the more frequent answer on (4,3): inferential x-10, symmetric x-6, or other); x-10 and "
        "x-6 are the (4,3) accuracies on test keys, averaged over seeds (error bars and +- are their spread).",
}

ROW_DEFINITIONS: dict[str, str] = {
    "solution": "classify's label: unfit if seen pairs, test keys < 0.9; else the more frequent (4,3) answer: "
                "inferential (x-10), symmetric (x-6) or other",
    "seen pairs, train keys": "accuracy on the 15 trained anchor pairs, with keys trained at their position",
    "seen pairs, test keys": "the same with test keys (never trained at that position): does it generalise",
    "(4,3) inferential x-10, test keys": "fraction of (4,3) prompts answered x-10 = x + shift(4) + shift(3): composition",
    "(4,3) symmetric x-6, test keys": "fraction of (4,3) prompts answered x-6, the mirrored pair (3,4)'s trained label: a lookup",
    "(4,3) inferential by key position": "x-10 accuracy on (4,3) at key positions 0, 1, ...",
    "(4,3) symmetric by key position": "x-6 accuracy on (4,3) at key positions 0, 1, ...",
    "route (value-weighted flow)": "the route rule on the mean flow of random prompts (see Route summary)",
    "route by key position": "the route rule per key position (inf, sym, mix, oth); n/a at the last one, where "
                             "the second anchor is the answer position and the rule is ill-defined",
    "same-target parallel score, last layer": "mean cosine of last-position vectors with the same trained label minus "
                                              "that with different labels (1 = one direction per target, 0 = none)",
    "(4,3) vector, last layer: cos with x-10 / x-6 targets": "mean cosine of each (4,3) vector with trained prompts "
                                                             "labelled its x-10 / its x-6 answer",
    "(4,3) vs (3,4) cosine after layer 0": "cosine of a (4,3) vector with the (3,4) vector at the same key (other pairs: "
                                           "mean with the rest); near 1 = the mirrored pairs collapsed",
    "W_Q neuron groups": "first-layer query neurons grouped by cosine above the threshold; few groups = condensed",
    "key embedding ordinal R^2": "R^2 of the key value fitted from the top principal components of its embedding",
    "mean stable rank of weights": "mean over weight matrices of sum_i (sigma_i / sigma_max)^2; low = few directions",
}


def _lookup(table: dict[str, str], title: str) -> str:
    """The entry whose key starts `title` (titles carry numbers: hooks, keys, thresholds)."""
    return next((text for start, text in table.items() if title.startswith(start)), "")


def how_to_read(title: str) -> str:
    """The paragraph under a section's heading ('' when there is none)."""
    text = _lookup(HOW_TO_READ, title)
    return f"<p class='how'><b>How to read this.</b> {html.escape(text)}</p>" if text else ""


# ---- tables -------------------------------------------------------------------------------
def classification_table(analyses: Sequence[ModelAnalysis]) -> list[list[str]]:
    """Header row (model names) then one row per measure."""
    summaries = [a.summary() for a in analyses]
    return [["", *(a.name for a in analyses)]] + [[row, *(s.get(row, "") for s in summaries)] for row in summaries[0]]


def table_text(table: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table)


def _table_html(table: list[list[str]]) -> str:
    """The table with a last column defining each row's measure."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table[0] + ["what it measures"])
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row + [_lookup(ROW_DEFINITIONS, row[0])]) + "</tr>"
                   for row in table[1:])
    return f"<table class='summary'><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


# ---- HTML ---------------------------------------------------------------------------------
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 20px; color: #222; }
h2 { margin-top: 32px; border-bottom: 1px solid #ddd; font-size: 17px; }
.row { display: flex; gap: 16px; }
.cell { flex: 1 1 0; min-width: 0; overflow-x: auto; }
.cell h3 { font-size: 13px; margin: 4px 0; color: #555; }
table.summary { border-collapse: collapse; font-size: 13px; }
table.summary td, table.summary th { border: 1px solid #ccc; padding: 3px 10px; text-align: left; }
pre { font-size: 12px; white-space: pre-wrap; }
p.how { font-size: 13px; color: #444; max-width: 1100px; margin: 4px 0 8px; line-height: 1.4; }
"""


# Each figure draws as soon as its script is parsed, before the cells to its right exist, so
# it takes the whole row's width; once the page is laid out, fit every figure to its cell.
_RESIZE = "<script>window.addEventListener('load', () => document.querySelectorAll('.js-plotly-plot').forEach(d => Plotly.Plots.resize(d)));</script>"


def _content_html(content: Content) -> str:
    if isinstance(content, go.Figure):
        if content.layout.width is not None:  # a fixed width sticks out of a narrower column: take the column's
            content = go.Figure(content).update_layout(width=None, autosize=True)
        return pio.to_html(content, full_html=False, include_plotlyjs=False, config={"displaylogo": False, "responsive": True})
    return content


def side_by_side(title: str, cells: Sequence[tuple[str, Content]]) -> str:
    """One section: a heading, then one cell per (name, content) in a row."""
    row = "".join(f"<div class='cell'><h3>{html.escape(name)}</h3>{_content_html(content)}</div>" for name, content in cells)
    return f"<h2>{html.escape(title)}</h2>{how_to_read(title)}<div class='row'>{row}</div>"


def page(title: str, body: Sequence[str]) -> str:
    """A whole page: plotly.js once in the head, so every figure below shares it offline."""
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style>"
        f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>"
        f"<h1>{html.escape(title)}</h1>" + "\n".join(body) + _RESIZE + "</body></html>"
    )


def render_html(analyses: Sequence[ModelAnalysis], sweep: Sequence[tuple[str, list[tuple[str, go.Figure]]]] = ()) -> str:
    """The report: the table, then every section with the models side by side (a section
    only some models have leaves the others' cells empty), then the sweeps."""
    body = []
    if analyses:
        body += ["<h2>Classification and summary</h2>" + how_to_read("Classification and summary"), _table_html(classification_table(analyses))]
        per_model = [dict(sections(a)) for a in analyses]
        for title in dict.fromkeys(t for s in per_model for t in s):
            body.append(side_by_side(title, [(a.name, s.get(title, "")) for a, s in zip(analyses, per_model)]))
    for db, figs in sweep:
        body.append(f"<h2>Sweep {html.escape(db)}</h2>{how_to_read('Sweep')}")
        body += [f"<h3>{html.escape(title)}</h3>{_content_html(fig)}" for title, fig in figs]
    return page("anchor-interp report: " + ", ".join([a.name for a in analyses] + [db for db, _ in sweep]), body)


def write_page(path: str | os.PathLike, title: str, sections: Sequence[tuple[str, Sequence[tuple[str, Content]]]]) -> Path:
    """A self-contained HTML file of (section title, [(name, figure), ...]) rows: what the
    examples write."""
    return write_text_atomic(path, page(title, [side_by_side(t, cells) for t, cells in sections]))


def report_targets(targets: Sequence[str]) -> tuple[list[str], list[str]]:
    """(models, sweep databases): arguments ending in .db are sweeps; no model given means
    both shipped models."""
    dbs = [str(t) for t in targets if str(t).endswith(".db")]
    return [str(t) for t in targets if not str(t).endswith(".db")] or list(SHIPPED), dbs


def build_report(targets: Sequence[str] = (), out: str | os.PathLike = "report.html", n_flow_prompts: int = N_FLOW_PROMPTS, probes: bool = True, progress: bool = True, models: bool = True) -> tuple[Path, list[ModelAnalysis]]:
    """Analyse every model (no model given: both shipped ones; `models=False`: none) and
    render every sweep database (arguments ending in .db) into one HTML file."""
    names, dbs = report_targets(targets)
    if not models:
        if not dbs:
            raise ValueError("--no-models leaves nothing to report: give a sweep database (a .db file)")
        names = []
    output_file(out)  # fail fast on a bad argument, before minutes of work
    for name in names:
        hooked.resolve(name)
    for db in dbs:
        if not Path(db).is_file():
            raise ValueError(f"no sweep database at {db}")
    analyses = []
    if names:  # progress inside each model's analysis, not one tick per model
        steps = len(ANALYSIS_STEPS) + (len(REPORT_PROBES) if probes else 0)
        with tqdm(total=steps * len(names), desc="report", unit="step", disable=not progress) as bar:
            for name in names:
                started = []

                def step(what: str, name: str = name, started: list = started) -> None:
                    bar.update(1 if started else 0)  # the previous part is done
                    started.append(what)
                    bar.set_description_str(f"report {name}: {what}")

                analyses.append(analyze(name, n_flow_prompts, probes, step=step))
                bar.update(1)
    sweeps = [(db, sweep_sections(db)) for db in dbs]
    return write_text_atomic(out, render_html(analyses, sweeps)), analyses
