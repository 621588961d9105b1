"""The probes by name (for the command line and the examples) and as report sections."""

from __future__ import annotations

import html
from typing import Callable, Sequence

import plotly.graph_objects as go

from models.hooked import Model
from models.task import ROLES, AnchorTask
from probes.ablation import ablate, ablation_sweep
from probes.composition import CompositionResult, composition_test
from probes.das import DAS_ROLES, DIMS, DasResult, DasSite, das
from probes.figures import fit_titles, notice
from probes.patching import make_pairs, order_probe, patch_sweep
from probes.paths import PathPatching, path_patching
from probes.sites import Site

PROBES = ("ablation", "patching", "order", "composition", "das", "paths")


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
    dims: Sequence[int] = DIMS,
    progress: bool = True,
):
    """Run one probe with its defaults; the result has .summary() and .figure() (das and
    paths also .to_dict(), a JSON-ready summary).

    ablation: the sweep over every site, or the `sites` ablated together; patching: the
    sweep over prompt pairs of kind `pairs`; order: the order probe; composition: the
    composition test; das: distributed alignment search at every stream point x role, or at
    `sites` (KIND:LAYER@ROLE), with 2n training and n/2 held-out pairs, k in `dims`; paths:
    path patching with n pairs of each kind."""
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
    if key_pos is not None and name in ("das", "paths"):
        raise ValueError(f"the {name} probe uses every key position (paths: all but the last); --key-pos is for the others")
    if name == "das":
        return das(model, task, sites=list(sites) or None, dims=dims, n_train=2 * n, n_test=max(n // 2, 1), seed=seed, progress=progress)
    if name == "paths":
        return path_patching(model, task, n, seed)
    raise ValueError(f"unknown probe {name!r}; known: {', '.join(PROBES)}")


REPORT_PATCH_KINDS = ("resid_pre", "attn_out", "mlp_out")  # per head too would double the time for 1-head models
REPORT_ABLATION_KINDS = ("z", "mlp_out")


REPORT_PROBES = ("composition test", "order probe: (3,4) patched into (4,3)", "key route", "mean-ablation sweep",
                 "DAS: a subspace that carries g(x; a1)", "path patching: the routes to the answer")
REPORT_DAS_DIMS = (4, 16)


def report_das_sites(composition: CompositionResult | None) -> list[DasSite]:
    """Where the report runs DAS (the whole grid takes minutes: `anchor-interp probe das`): the
    site where the composition test's whole-activation interchange is most often
    'compositional' (y1) and the one most often 'pair_only' (the lookup's pair), over DAS's
    roles; without a composition result, the inferential model's y1 site and the symmetric
    model's pair site (layer 0's attention output at the second anchor and at the last position)."""
    if composition is None:
        return [DasSite(Site("attn_out", 0), "anchor2"), DasSite(Site("attn_out", 0), "last")]
    columns = [ROLES.index(role) for role in DAS_ROLES]
    sites = []
    for outcome in ("compositional", "pair_only"):
        fraction = composition.fraction_by_role(outcome)[:, columns]  # [row, das role]
        best = int(fraction.flatten().argmax())
        sites.append(DasSite(composition.rows[best // len(columns)], DAS_ROLES[best % len(columns)]))
    return list(dict.fromkeys(sites))


def _table(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table class='summary'><tbody>{body}</tbody></table>"


def das_table(result: DasResult) -> str:
    """The report's DAS cell: best site, k and held-out IIA of each causal variable, and the
    lookup variable's IIA where y1's subspace is."""
    y1_site, y1_k, y1_iia = result.best("y1")
    pair_site, pair_k, pair_iia = result.best("pair")
    return _table([
        ("y1 = g(x; a1) (composition): best site, k, held-out IIA", f"{y1_site.label}, {y1_k}, {y1_iia:.2f} (train {result.train_at('y1', y1_site, y1_k):.2f})"),
        ("pair offset (lookup): best site, k, held-out IIA", f"{pair_site.label}, {pair_k}, {pair_iia:.2f} (train {result.train_at('pair', pair_site, pair_k):.2f})"),
        ("lookup IIA at y1's site and k", f"{result.at('pair', y1_site, y1_k):.2f}"),
        ("searched", f"{', '.join(s.label for s in result.sites)}; k in {', '.join(map(str, result.dims))}; "
                     f"{result.n_train} training, {result.n_test} held-out pairs"),
    ])


def paths_table(result: PathPatching) -> str:
    """The report's path cell: the share of the answer each route carries alone, per pair kind."""
    rows = []
    for r in result.results:
        what = {"change_key": "key changed", "change_anchors": "both anchors changed"}[r.kind]
        shares = r.route_shares()
        rows.append((f"{what} ({r.effect.shape[-1]} pairs)", "; ".join(f"{route} {v:.2f}" for route, v in shares.items())
                     + f"; sum {r.share.sum():.2f}"))
    return _table(rows)


def report_sections(name: str, model: Model, task: AnchorTask = AnchorTask(), n: int = 200,
                    step: Callable[[str], None] | None = None) -> list[tuple[str, go.Figure | str]]:
    """The causal probes of one model as (section title, figure or HTML table): the
    composition test, the order probe, patching of the key (which route the key takes to the
    last position), a mean-ablation sweep of every head and MLP, DAS at the composition test's
    sites (report_das_sites) and path patching, sized to take seconds. A probe undefined for
    this model (e.g. the order probe on a model that answers x-6 on (4,3) already) gets a
    figure saying why. `step(title)` is called as each probe begins."""
    key_route = "key route: clean key patched into a changed key"
    found: dict[str, CompositionResult] = {}

    def composition() -> CompositionResult:
        found["composition"] = composition_test(model, task, n, progress=False)
        return found["composition"]

    runs = [
        composition,
        lambda: order_probe(model, task, n, kinds=REPORT_PATCH_KINDS, progress=False),
        lambda: patch_sweep(model, make_pairs(task, "change_key", n), REPORT_PATCH_KINDS, title=key_route, progress=False),
        lambda: ablation_sweep(model, task, "mean", REPORT_ABLATION_KINDS, n=n // 2, progress=False),
        lambda: das_table(das(model, task, report_das_sites(found.get("composition")), REPORT_DAS_DIMS,
                              n_train=2 * n, n_test=n // 2, progress=False)),
        lambda: paths_table(path_patching(model, task, n)),
    ]
    sections = []
    for title, run in zip(REPORT_PROBES, runs):
        if step:
            step(title)
        try:
            content = run()
            if not isinstance(content, str):
                content = content.figure()
                content.update_layout(title_text=f"{name}: {content.layout.title.text}")
                fit_titles(content)
        except ValueError as err:
            content = notice(f"{name}: {title}", f"undefined for this model:<br>{err}")
        sections.append((f"{name}: {title}", content))
    return sections
