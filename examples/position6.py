"""Why key position 6 is special: what the answer position reads in each layer when the key
sits at position 5 (anchors at 6, 7, the answer at 8) and at position 6 (the last token IS the
second anchor), on the held-out pair (4,3), with the behaviour at every key position.

    python examples/position6.py [MODEL ...]      (default: both shipped models)

Per model: (4,3) accuracy by key position, the route at key positions 0-5
(interp.trace_flows(...).routes_by_key_position), and for p = 5 and 6 the value-weighted
share of what the answer position reads from each role in each layer (rows sum to 1; at
p = 6 "anchor2" and "last" are the same position, so both columns show its self-share).
"""

from example_args import example_args

args = example_args(__doc__, "out")  # prints only: --out is unused

import interp  # noqa: E402  (after the arguments: --help needs no torch)
import models  # noqa: E402
import probes  # noqa: E402
from models.task import ROLES  # noqa: E402

for name in args.models:
    model, task = models.load(name), models.hooked.task_of(name)
    result = probes.classify(model, task)
    flows = interp.trace_flows(model, task.grid([task.held_out_pair], "test", n_noise=2, seed=4), task)
    routes = flows.routes_by_key_position()
    print(f"== {name}: {result.label}, (4,3) x-10 {result.inferential_test_keys:.2f}, x-6 {result.symmetric_test_keys:.2f}")
    print("   x-10 by key position  " + " ".join(f"{a:.2f}" for a in result.inferential_by_position))
    print("   x-6 by key position   " + " ".join(f"{a:.2f}" for a in result.symmetric_by_position))
    print("   route at p = 0-5      " + " ".join(routes[p].name for p in range(task.n_key_positions - 1)))
    last = ROLES.index("last")
    for p in (task.n_key_positions - 2, task.n_key_positions - 1):
        shares = flows.role_flow("value", keep=flows.prompts.key_pos == p)  # [layer, role_dst, role_src]
        for layer in range(model.cfg.n_layers):
            row = " ".join(f"{ROLES[s]} {shares[layer, last, s]:.2f}" for s in range(len(ROLES)))
            print(f"   p = {p}, layer {layer}: the answer position reads  {row}")
