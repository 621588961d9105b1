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
        ranks = self.complexity.spectra.stable_rank
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
            "mean stable rank of weights": f"{sum(ranks.values()) / len(ranks):.1f}",
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


# ---- tables -------------------------------------------------------------------------------
def classification_table(analyses: Sequence[ModelAnalysis]) -> list[list[str]]:
    """Header row (model names) then one row per measure."""
    summaries = [a.summary() for a in analyses]
    return [["", *(a.name for a in analyses)]] + [[row, *(s.get(row, "") for s in summaries)] for row in summaries[0]]


def table_text(table: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table)


def _table_html(table: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table[0])
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in table[1:])
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
"""


# Each figure draws as soon as its script is parsed, before the cells to its right exist, so
# it takes the whole row's width; once the page is laid out, fit every figure to its cell.
_RESIZE = "<script>window.addEventListener('load', () => document.querySelectorAll('.js-plotly-plot').forEach(d => Plotly.Plots.resize(d)));</script>"


def _content_html(content: Content) -> str:
    if isinstance(content, go.Figure):
        return pio.to_html(content, full_html=False, include_plotlyjs=False, config={"displaylogo": False, "responsive": True})
    return content


def side_by_side(title: str, cells: Sequence[tuple[str, Content]]) -> str:
    """One section: a heading, then one cell per (name, content) in a row."""
    row = "".join(f"<div class='cell'><h3>{html.escape(name)}</h3>{_content_html(content)}</div>" for name, content in cells)
    return f"<h2>{html.escape(title)}</h2><div class='row'>{row}</div>"


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
        body += ["<h2>Classification and summary</h2>", _table_html(classification_table(analyses))]
        per_model = [dict(sections(a)) for a in analyses]
        for title in dict.fromkeys(t for s in per_model for t in s):
            body.append(side_by_side(title, [(a.name, s.get(title, "")) for a, s in zip(analyses, per_model)]))
    for db, figs in sweep:
        body.append(f"<h2>Sweep {html.escape(db)}</h2>")
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
