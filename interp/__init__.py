"""What analysts call: information flow, anchor vectors, weight complexity, figures, the report, sweeps.

    import interp, models
    model = models.load("inferential")
    flow = interp.trace_flow(model, "23 1 2 43 46 74 54 44 72")
    flow.figure().show()                                   # the paper's Fig. 3a for this prompt
    print(interp.trace_flows(model, prompts).route())      # the route, averaged over prompts

Names are loaded on first use, so `anchor-interp` starts without importing plotly or
scikit-learn.
"""

from importlib import import_module

_EXPORTS = {
    "trace_flow": "interp.flow",
    "trace_flows": "interp.flow",
    "flow_prompts": "interp.flow",
    "Flow": "interp.flow",
    "FlowBatch": "interp.flow",
    "Route": "interp.flow",
    "rollout": "interp.flow",
    "anchor_vectors": "interp.vectors",
    "anchor_grid": "interp.vectors",
    "AnchorVectors": "interp.vectors",
    "weight_complexity": "interp.complexity",
    "Complexity": "interp.complexity",
    "wq_condensation": "interp.complexity",
    "embedding_structure": "interp.complexity",
    "spectra": "interp.complexity",
    "build_report": "interp.report",
    "run_sweep": "interp.sweep",
    "mechanism": "interp.sweep",
    "figures": "interp.figures",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'interp' has no attribute {name!r}")
    module = import_module(_EXPORTS[name])
    return module if name == "figures" else getattr(module, name)
