"""Attention of every layer and head for one prompt, on each model: a plotly heatmap grid
(all models side by side in one page) and circuitsvis' interactive view (one page per
model, its JavaScript inlined so it opens offline).

    python examples/attention_heatmaps.py [MODEL ...] [--prompt "23 1 2 43 46 74 54 44 72"]
    (default: both shipped models, a (4,3) prompt; written to out/interp/)
"""

import argparse
from pathlib import Path

import models
from interp import figures, report, trace_flow
from models.files import write_text_atomic

OUT = Path("out/interp")

parser = argparse.ArgumentParser()
parser.add_argument("models", nargs="*", default=list(report.SHIPPED))
parser.add_argument("--prompt", help="default: a held-out pair (4,3) prompt")
args = parser.parse_args()

cells = []
for name in args.models:
    model, task = models.load(name), models.hooked.task_of(name)
    flow = trace_flow(model, args.prompt or report.example_prompt(task), task)
    cells.append((name, figures.attention_heatmaps(flow)))
    page = write_text_atomic(OUT / f"attention_circuitsvis_{Path(name).name}.html", figures.circuitsvis_html(flow, f"{name}: {' '.join(map(str, flow.tokens.tolist()))}"))
    print(f"{name}: answers {flow.prediction}; circuitsvis view written to {page}")
print(f"heatmaps written to {report.write_page(OUT / 'attention_heatmaps.html', 'Attention patterns', [('every layer and head', cells)])}")
