"""The probes by name (for the command line and the examples) and as report sections."""

from __future__ import annotations

from typing import Callable, Sequence

import plotly.graph_objects as go

from models.hooked import Model
from models.task import AnchorTask
from probes.ablation import ablate, ablation_sweep
from probes.composition import composition_test
from probes.figures import fit_titles, notice
from probes.patching import make_pairs, order_probe, patch_sweep
from probes.sites import Site

PROBES = ("ablation", "patching", "order", "composition")


def run_probe(
    name: str,
    model: Model,
    task: AnchorTask = AnchorTask(),
    n: int = 512,
    seed: int = 0,
    key_pos: int | None = None,
    ablation: str = "mean",
    sites: Sequence[str | Site] = (),
    pairs: str = "change_key",
    progress: bool = True,
):
    """Run one probe with its defaults; the result has .summary() and .figure().

    ablation: the sweep over every site, or the `sites` ablated together; patching: the
    sweep over prompt pairs of kind `pairs`; order: the order probe; composition: the
    composition test."""
    if name == "ablation":
        if sites:
            return ablate(model, [s if isinstance(s, Site) else Site.parse(s) for s in sites], ablation, task, n, seed, key_pos)
        return ablation_sweep(model, task, ablation, n=n, seed=seed, key_pos=key_pos, progress=progress)
    if name == "patching":
        return patch_sweep(model, make_pairs(task, pairs, n, seed, key_pos=key_pos), title=f"activation patching ({pairs})", progress=progress)
    if name == "order":
        return order_probe(model, task, n, seed, key_pos=key_pos, progress=progress)
    if name == "composition":
        return composition_test(model, task, n, seed, key_pos=key_pos, progress=progress)
    raise ValueError(f"unknown probe {name!r}; known: {', '.join(PROBES)}")


REPORT_PATCH_KINDS = ("resid_pre", "attn_out", "mlp_out")  # per head too would double the time for 1-head models
REPORT_ABLATION_KINDS = ("z", "mlp_out")


REPORT_PROBES = ("composition test", "order probe: (3,4) patched into (4,3)", "key route", "mean-ablation sweep")


def report_sections(name: str, model: Model, task: AnchorTask = AnchorTask(), n: int = 200,
                    step: Callable[[str], None] | None = None) -> list[tuple[str, go.Figure]]:
    """The causal probes of one model as (section title, figure): the composition test, the
    order probe, patching of the key (which route the key takes to the last position) and
    a mean-ablation sweep of every head and MLP, sized to take a few seconds. A probe
    undefined for this model (e.g. the order probe on a model that answers x-6 on (4,3)
    already) gets a figure saying why. `step(title)` is called as each probe begins."""
    key_route = "key route: clean key patched into a changed key"
    runs = [
        lambda: composition_test(model, task, n, progress=False),
        lambda: order_probe(model, task, n, kinds=REPORT_PATCH_KINDS, progress=False),
        lambda: patch_sweep(model, make_pairs(task, "change_key", n), REPORT_PATCH_KINDS, title=key_route, progress=False),
        lambda: ablation_sweep(model, task, "mean", REPORT_ABLATION_KINDS, n=n // 2, progress=False),
    ]
    sections = []
    for title, run in zip(REPORT_PROBES, runs):
        if step:
            step(title)
        try:
            figure = run().figure()
            figure.update_layout(title_text=f"{name}: {figure.layout.title.text}")
            fit_titles(figure)
        except ValueError as err:
            figure = notice(f"{name}: {title}", f"undefined for this model:<br>{err}")
        sections.append((f"{name}: {title}", figure))
    return sections
