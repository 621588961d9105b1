"""Attention of every layer and head for one prompt, on each model: a plotly heatmap grid
(all models side by side in one page) and circuitsvis' interactive view (one page per
model, its JavaScript inlined so it opens offline).

    python examples/attention_heatmaps.py [MODEL ...] [--prompt "23 1 2 43 46 74 54 44 72"]
    (default: both shipped models, a (4,3) prompt; written to out/interp/)
"""

from example_args import example_args

args = example_args(__doc__, "out/interp", lambda p: p.add_argument("--prompt", help="default: a held-out pair (4,3) prompt"))

from pathlib import Path  # noqa: E402  (after the arguments: --help needs no torch)

import models  # noqa: E402
from interp import figures, report, trace_flow  # noqa: E402
from models.files import write_text_atomic  # noqa: E402

cells = []
for name in args.models:
    model, task = models.load(name), models.hooked.task_of(name)
    flow = trace_flow(model, args.prompt or report.example_prompt(task), task)
    cells.append((name, figures.attention_heatmaps(flow)))
    page = write_text_atomic(args.out / f"attention_circuitsvis_{Path(name).name}.html", figures.circuitsvis_html(flow, f"{name}: {' '.join(map(str, flow.tokens.tolist()))}"))
    print(f"{name}: answers {flow.prediction}; circuitsvis view written to {page}")
print(f"heatmaps written to {report.write_page(args.out / 'attention_heatmaps.html', 'Attention patterns', [('every layer and head', cells)])}")
