"""The paper's Fig. 3a for each model side by side: how information flows through the
positions of one prompt, layer by layer (line width = value-weighted flow), then the mean
flow between roles over many prompts and the route it names.

    python examples/flow_diagrams.py [MODEL ...] [--prompt "23 1 2 43 46 74 54 44 72"] [-n 2000]
    (default: both shipped models, a (4,3) prompt; written to out/interp/flow_diagrams.html)
"""

from example_args import example_args

args = example_args(__doc__, "out/interp", lambda p: (
    p.add_argument("--prompt", help="default: a held-out pair (4,3) prompt"),
    p.add_argument("-n", type=int, default=2000, help="random prompts the mean flow averages over (default %(default)s)"),
))

import models  # noqa: E402  (after the arguments: --help needs no torch)
from interp import figures, flow_prompts, report, trace_flow, trace_flows  # noqa: E402

diagrams, role_flows = [], []
for name in args.models:
    model, task = models.load(name), models.hooked.task_of(name)
    flow = trace_flow(model, args.prompt or report.example_prompt(task), task)
    flows = trace_flows(model, flow_prompts(task, args.n), task)
    print(f"== {name}: this prompt -> {flow.prediction}\n{flows.route()}\n")
    diagrams.append((name, figures.flow_diagram(flow)))
    role_flows.append((name, figures.role_flow_figure(flows.role_flow(), flows.uniform_role_flow())))
sections = [("Information flow of one prompt (paper Fig. 3a)", diagrams), (f"Mean value-weighted flow between roles, {args.n} prompts", role_flows)]
print(f"written to {report.write_page(args.out / 'flow_diagrams.html', 'Information flow', sections)}")
