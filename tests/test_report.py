"""`anchor-interp report`: one self-contained HTML file whose every figure draws in a real
(headless, offline) Chromium, the classification table on stdout, clear errors."""

import contextlib
import dataclasses
import io
import re
import shutil
import subprocess
from pathlib import Path

import plotly.graph_objects as go
import pytest

from interp import report
from interp.cli import main
from models import hooked
from models.files import write_text_atomic
from models.sweep import SweepSpec, SweepStore

TINY = dict(d_model=16, d_head=8, d_mlp=32)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
FIGURE_DIV = re.compile(r'<div id="[^"]+" class="plotly-graph-div"')


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("zoo")
    paths = []
    for name, gamma in (("small-init", 1.0), ("large-init", 0.3)):
        model = hooked.build(gamma, seed=0, **TINY)
        paths.append(str(hooked.save(model, folder / name, {"seed": 0}, hooked.hooked_config(**TINY))))
    return paths


@pytest.fixture(scope="module")
def sweep_db(tmp_path_factory) -> str:
    """A two-cell sweep database with recorded outcomes (no training)."""
    return make_sweep_db(tmp_path_factory.mktemp("sweep") / "phase.db", [(0.5, 0.1, 0.8), (0.8, 0.9, 0.05)])


def make_sweep_db(db: Path, cells: list[tuple[float, float, float]]) -> str:
    """A sweep database over gamma with recorded (gamma, inferential, symmetric) outcomes."""
    spec = SweepSpec.parse(["gamma=" + ",".join(str(g) for g, _, _ in cells)], ["d_model=16", "d_head=8"])
    store = SweepStore.create(db, spec, spec.cells())
    for cell, (_, inferential, symmetric) in zip(spec.cells(), cells):
        metrics = dict(label="symmetric" if symmetric > inferential else "inferential", seen_test_keys=1.0,
                       inferential_test_keys=inferential, symmetric_test_keys=symmetric)
        store.record_done(cell.id, dict(metrics=metrics, steps=1, stopped_early=False, train_seconds=1.0, wall_seconds=1.0,
                                        threads=1, worker="test", versions={}, checkpoint=None))
    store.close()
    return str(db)


@pytest.fixture(scope="module")
def built(checkpoints, sweep_db, tmp_path_factory):
    """The report of two tiny models and a sweep, through the CLI; the analyses it made are
    kept (by a spy on report.analyze) for the tests to compare with."""
    out = tmp_path_factory.mktemp("report") / "report.html"
    analyses = []
    analyze = report.analyze
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(report, "analyze", lambda *args, **kwargs: analyses.append(analyze(*args, **kwargs)) or analyses[-1])
        code, stdout, stderr = run_cli("report", *checkpoints, sweep_db, "--out", str(out), "--flow-prompts", "300", "--no-probes", "--quiet")
    assert code == 0, stderr
    return out, stdout, analyses


def render_in_chromium(page: Path, profile: Path) -> str:
    """The page's DOM after its scripts ran, from headless Chromium with the network off."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("chromium is not installed; install it with: apt-get install -y chromium")
    result = subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=30000", "--dump-dom", page.as_uri()],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_report_prints_the_classification_table(built, checkpoints):
    _, stdout, _ = built
    lines = stdout.splitlines()
    assert all(path in lines[0] for path in checkpoints)
    rows = {line.split("  ")[0] for line in lines[1:]}
    assert {"solution", "seen pairs, test keys", "(4,3) inferential x-10, test keys", "route (value-weighted flow)"} <= rows
    assert lines[-1].startswith("report written to")


def test_report_is_one_self_contained_file(built):
    out, _, analyses = built
    page = out.read_text()
    assert page.count("plotly.js v") == 1  # plotly.js inlined once, shared by every figure
    assert not re.search(r"<script[^>]+src=", page) and not re.search(r"<link[^>]+href=[\"']http", page)
    per_model = [sum(isinstance(content, go.Figure) for _, content in report.sections(a)) for a in analyses]
    assert len(FIGURE_DIV.findall(page)) == sum(per_model) + 3  # both models side by side, then the sweep's 3 sections
    assert "Sweep" in page and "Phase diagram" in page
    assert oct(out.stat().st_mode & 0o777) == "0o644"


def test_every_figure_draws_in_headless_chromium(built, tmp_path):
    out, _, _ = built
    n_figures = len(FIGURE_DIV.findall(out.read_text()))
    dom = render_in_chromium(out, tmp_path / "profile")
    drawn = dom.count('class="plotly-graph-div js-plotly-plot"')  # plotly adds js-plotly-plot once it drew
    assert drawn == n_figures, f"{drawn} of {n_figures} figures drew"
    assert dom.count('class="main-svg"') >= 2 * n_figures


def test_probe_sections_line_up_side_by_side(built):
    def report_sections(name):  # what probes.report_sections yields: (title prefixed with the model, figure)
        return [(f"{name}: composition test", go.Figure(go.Bar(y=[1, 2])))]

    analyses = [dataclasses.replace(a, probe_sections=report_sections(a.name)) for a in built[2]]
    page = report.render_html(analyses)
    assert page.count("<h2>Causal probes: composition test</h2>") == 1  # one row, a cell per model
    assert len(FIGURE_DIV.findall(page)) == len(FIGURE_DIV.findall(report.render_html(built[2]))) + 2


def test_no_argument_means_both_shipped_models():
    assert report.report_targets([]) == (["inferential", "symmetric"], [])
    assert report.report_targets(["runs/a.db", "my-model"]) == (["my-model"], ["runs/a.db"])
    assert report.report_targets(["runs/a.db"]) == (["inferential", "symmetric"], ["runs/a.db"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["no-such-model"], "no checkpoint folder at 'no-such-model'"),
        (["--flow-prompts", "0"], "--flow-prompts must be >= 1"),
        (["--no-models"], "--no-models leaves nothing to report: give a sweep database"),
    ],
)
def test_bad_arguments_give_one_line_errors(argv, message, tmp_path):
    code, _, stderr = run_cli("report", *argv, "--out", str(tmp_path / "r.html"), "--quiet")
    assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r.html").exists()


def test_a_sweep_alone_with_no_models(sweep_db, tmp_path):
    out = tmp_path / "phase.html"
    code, stdout, stderr = run_cli("report", sweep_db, "--no-models", "--out", str(out), "--quiet")
    assert code == 0, stderr
    page = out.read_text()
    assert "Phase diagram" in page and "Classification and summary" not in page
    assert len(FIGURE_DIV.findall(page)) == 3  # the sweep's status, phase diagram and curves


def test_missing_sweep_database_is_refused(checkpoints, tmp_path):
    code, _, stderr = run_cli("report", checkpoints[0], str(tmp_path / "none.db"), "--out", str(tmp_path / "r.html"), "--quiet")
    assert code == 2 and "no sweep database at" in stderr


def test_circuitsvis_page_renders_offline(checkpoints, tmp_path):
    from interp.figures import circuitsvis_html
    from interp.flow import trace_flow

    flow = trace_flow(hooked.load(checkpoints[0]), "23 1 2 43 46 74 54 44 72")
    page = write_text_atomic(tmp_path / "cv.html", circuitsvis_html(flow, "attention"))
    text = page.read_text()
    assert "unpkg.com" not in text and not re.search(r"<script[^>]+src=", text)  # its JavaScript is inlined
    dom = render_in_chromium(page, tmp_path / "profile")
    assert dom.count("<canvas") >= flow.n_layers * flow.n_heads  # one thumbnail per head (+ the zoomed one)
    assert "L1H0" in dom


@pytest.mark.parametrize("command", ["report", "probe"])
@pytest.mark.parametrize("where, message", [("dir", "is a folder"), ("file/sub/r.html", "is a file, not a folder"), ("/dev/full", "is not a regular file")])
def test_a_bad_out_is_refused_before_any_work(command, where, message, checkpoints, tmp_path, monkeypatch):
    import probes.report

    if where == "/dev/full" and not Path(where).exists():
        pytest.skip("no /dev/full")
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("")
    out = where if where.startswith("/") else str(tmp_path / where)
    monkeypatch.setattr(report, "analyze", lambda *a, **k: pytest.fail("analysed before refusing"))
    monkeypatch.setattr(probes.report, "run_probe", lambda *a, **k: pytest.fail("probed before refusing"))
    argv = ["report", checkpoints[0]] if command == "report" else ["probe", "order", checkpoints[0]]
    code, _, stderr = run_cli(*argv, "--out", out, "--quiet")
    assert code == 2 and message in stderr and len(stderr.strip().splitlines()) == 1
    assert (tmp_path / "dir").is_dir() and (tmp_path / "file").read_text() == ""


def test_progress_is_shown_inside_each_model_and_not_for_no_models(checkpoints, sweep_db, tmp_path):
    code, _, stderr = run_cli("report", sweep_db, "--no-models", "--out", str(tmp_path / "phase.html"))
    assert code == 0 and "model" not in stderr and "report" not in stderr  # no empty "0model" bar
    code, _, stderr = run_cli("report", checkpoints[0], "--no-probes", "--flow-prompts", "50", "--out", str(tmp_path / "r.html"))
    assert code == 0
    for what in report.ANALYSIS_STEPS:
        assert f"report {checkpoints[0]}: {what}" in stderr
    assert f"{len(report.ANALYSIS_STEPS)}/{len(report.ANALYSIS_STEPS)}" in stderr


def test_the_route_table_names_no_route_where_the_rule_is_ill_defined(built):
    analysis = built[2][0]
    assert 6 not in analysis.routes_by_position and analysis.flows.unrouted_key_positions() == [6]
    assert "key position 6: not named" in report._route_html(analysis)
    assert analysis.summary()["route by key position"].endswith("6:n/a")


# After plotly drew and the page's resize ran: for every figure, its width and its column's,
# and how far its drawn text, colour bars and heatmaps stay inside it (negative: clipped).
MEASURE = """<script>window.addEventListener('load', () => setTimeout(() => {
  const out = [...document.querySelectorAll('.js-plotly-plot')].map(d => {
    const column = (d.closest('.cell') || document.body).getBoundingClientRect(), svg = d.querySelector('.main-svg').getBoundingClientRect();
    let left = Infinity, right = -Infinity, what = '';
    d.querySelectorAll('.main-svg text, .main-svg .colorbar rect, .main-svg .heatmaplayer image').forEach(e => {
      const r = e.getBoundingClientRect();
      if (r.width > 0 && r.height > 0) { left = Math.min(left, r.left); if (r.right > right) { right = r.right; what = e.textContent.slice(0, 40); } }
    });
    return {title: (d.layout.title.text || '').slice(0, 50), column: column.width, width: svg.width, left: left - svg.left, right: svg.right - right, what};
  });
  const pre = document.createElement('pre'); pre.id = 'measured'; pre.textContent = JSON.stringify(out); document.body.appendChild(pre);
}, 1000));</script>"""


@pytest.fixture(scope="module")
def probed_page(built, tmp_path_factory) -> Path:
    """The report of the two tiny models with their causal probes (heatmaps, and notices
    where a probe is undefined for a random model) and a sweep over 7 gammas (a wide phase
    diagram), measuring itself."""
    from interp.sweep_report import sweep_sections
    from probes.report import report_sections

    analyses = [dataclasses.replace(a, probe_sections=report_sections(a.name, hooked.load(a.name), a.task, n=64)) for a in built[2]]
    folder = tmp_path_factory.mktemp("fit")
    sweep_db = make_sweep_db(folder / "wide.db", [(g / 10, g / 10, 1 - g / 10) for g in range(2, 9)])
    page = report.render_html(analyses, [(sweep_db, sweep_sections(sweep_db))])
    return write_text_atomic(folder / "report.html", page.replace("</body></html>", MEASURE + "</body></html>"))


@pytest.mark.parametrize("width", [1280, 1920])
def test_every_figure_fits_its_column(probed_page, width, tmp_path):
    import html
    import json

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("chromium is not installed; install it with: apt-get install -y chromium")
    result = subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path}", f"--window-size={width},1000", "--virtual-time-budget=30000",
                             "--dump-dom", probed_page.as_uri()], capture_output=True, text=True, timeout=300)
    figures = json.loads(html.unescape(re.search(r'<pre id="measured">(.*?)</pre>', result.stdout, re.S).group(1)))
    assert len(figures) == len(FIGURE_DIV.findall(probed_page.read_text())) > 30
    too_wide = [f for f in figures if f["width"] > f["column"] + 1 or f["left"] < -1 or f["right"] < -1]
    assert not too_wide, f"at {width} px, figures wider than their column or clipped: {too_wide}"


def test_every_section_says_how_to_read_it_and_defines_its_measures(probed_page, built):
    page = probed_page.read_text()
    headings = re.findall(r"<h2>(.*?)</h2>", page)
    assert len(headings) > 15
    for heading in headings:  # each heading is followed by its "how to read this" paragraph
        assert f"<h2>{heading}</h2><p class='how'><b>How to read this.</b>" in page, heading
    how = " ".join(re.findall(r"<p class='how'>(.*?)</p>", page))
    for term in ("parallel score", "x-10 = x + shift(4) + shift(3)", "copied_a:", "pair_only:", "First-step grouping score",
                 "stable rank", "normalised logit difference", "accuracy AFTER that ablation", "ordinal R^2"):
        assert term in html_unescape(how), term
    table = report._table_html(report.classification_table(built[2]))
    rows = re.findall(r"<tr>(.*?)</tr>", table.split("<tbody>")[1])
    assert len(rows) == len(built[2][0].summary())
    assert all(row.endswith("</td>") and not row.endswith("<td></td>") for row in rows)  # a definition in every row


def html_unescape(text: str) -> str:
    import html

    return html.unescape(text)
