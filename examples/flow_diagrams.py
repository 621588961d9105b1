"""The paper's Fig. 3a for each model side by side: how information flows through the
positions of one prompt, layer by layer (line width = value-weighted flow), then the mean
flow between roles over many prompts and the route it names.

    python examples/flow_diagrams.py [MODEL ...] [--prompt "23 1 2 43 46 74 54 44 72"]
    (default: both shipped models, a (4,3) prompt; written to out/interp/flow_diagrams.html)
"""

import argparse
from pathlib import Path

import models
from interp import figures, flow_prompts, report, trace_flow, trace_flows

OUT = Path("out/interp")

parser = argparse.ArgumentParser()
parser.add_argument("models", nargs="*", default=list(report.SHIPPED))
parser.add_argument("--prompt", help="default: a held-out pair (4,3) prompt")
args = parser.parse_args()

diagrams, role_flows = [], []
for name in args.models:
    model, task = models.load(name), models.hooked.task_of(name)
    flow = trace_flow(model, args.prompt or report.example_prompt(task), task)
    flows = trace_flows(model, flow_prompts(task, 2000), task)
    print(f"== {name}: this prompt -> {flow.prediction}\n{flows.route()}\n")
    diagrams.append((name, figures.flow_diagram(flow)))
    role_flows.append((name, figures.role_flow_figure(flows.role_flow(), flows.uniform_role_flow())))
sections = [("Information flow of one prompt (paper Fig. 3a)", diagrams), ("Mean value-weighted flow between roles, 2000 prompts", role_flows)]
print(f"written to {report.write_page(OUT / 'flow_diagrams.html', 'Information flow', sections)}")
