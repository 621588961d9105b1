"""Seed statistics: the declared seed ranges, exact binomial intervals, grouping of sweep rows,
and the `seeds` command end to end (a tiny recipe, run twice: the second run reproduces the
first run's database rows)."""

import json
import re
from pathlib import Path

import pytest

from interp import cli
from interp.seeds import CLEAN, format_groups, interval, markdown_table, reproduced, seed_groups, seed_list
from models.sweep import results

TINY = ["--set", "max_steps=12", "--set", "warmup_steps=2", "--set", "eval_every=6", "--set", "early_stop=False",
        "--set", "batch_size=32", "--set", "d_model=16", "--set", "d_head=8", "--set", "d_mlp=32"]


def test_seed_ranges_come_from_the_committed_protocol():
    assert seed_list("validation") == list(range(1000, 1020))
    assert seed_list("3-5") == [3, 4, 5]
    assert seed_list("7,2") == [7, 2]
    for bad in ("five", "5-3", "1-x"):
        with pytest.raises(ValueError, match="seeds"):
            seed_list(bad)


def test_interval_is_the_exact_clopper_pearson_one():
    lo, hi = interval(19, 20)
    assert lo == pytest.approx(0.7513, abs=1e-4) and hi == pytest.approx(0.9987, abs=1e-4)
    assert interval(0, 5)[0] == 0.0 and interval(5, 5)[1] == 1.0
    assert interval(0, 0) == (0.0, 1.0)


def _row(seed, gamma, label=None, inferential=0.0, symmetric=0.0, status="done"):
    metrics = {"inferential_test_keys": inferential, "symmetric_test_keys": symmetric,
               "inferential_by_position": [inferential] * 7, "symmetric_by_position": [symmetric] * 6 + [1 - symmetric]}
    return {"params": {"seed": seed, "gamma": gamma}, "seed": seed, "gamma": gamma, "status": status, "label": label,
            "metrics": metrics if status == "done" else None}


def test_groups_report_what_a_run_cost():
    rows = [{**_row(seed, 0.8, "inferential", 1.0, 0.0), "steps": steps, "train_seconds": seconds}
            for seed, steps, seconds in ((1, 900, 60.0), (2, 1500, 100.0))]
    (group,) = seed_groups(rows + [_row(3, 0.8, status="pending")])
    assert (group.steps, group.train_seconds) == ([900, 1500], [60.0, 100.0])
    assert group.cost() == "steps 1200 (900-1500), training 80 (60-100) s"
    assert "   a run             steps 1200 (900-1500), training 80 (60-100) s" in format_groups([group]).splitlines()
    assert seed_groups([_row(1, 0.8, "inferential", 1.0, 0.0)])[0].cost() == "not recorded"


def test_groups_count_labels_clean_runs_and_positions_per_gamma():
    rows = [_row(1, 0.8, "inferential", 1.0, 0.0), _row(2, 0.8, "inferential", 0.9, 0.0), _row(3, 0.8, "symmetric", 0.14, 0.86),
            _row(4, 0.8, status="pending"), _row(1, 0.3, "symmetric", 0.0, 1.0)]
    by_gamma = {g.setting["gamma"]: g for g in seed_groups(rows, {0.8: "inferential", 0.3: "symmetric"})}
    g = by_gamma[0.8]
    assert (g.n, g.pending, g.labels, g.solution) == (3, 1, {"inferential": 2, "symmetric": 1}, "inferential")
    assert (g.k_solution, g.k_clean) == (2, 1)
    assert g.seeds == [1, 2, 3] and g.accuracy == [1.0, 0.9, 0.14]
    assert g.position_clean() == [1] * 7
    d = by_gamma[0.3].to_dict()
    assert d["position_mean"] == [1.0] * 6 + [0.0]  # a failure confined to key position 6 shows
    assert d["clean_runs"] == 1 and CLEAN == 0.95
    # Without an expectation a group counts its most common solution.
    assert {g.setting["gamma"]: g.solution for g in seed_groups(rows)} == {0.8: "inferential", 0.3: "symmetric"}


def test_seeds_command_runs_resumes_and_reproduces_its_rows(tmp_path, capsys):
    first, second = tmp_path / "first.db", tmp_path / "second.db"
    args = ["seeds", "--gamma", "0.8,0.3", "--seeds", "0-1", "--workers", "1", "--threads", "1", "--quiet", *TINY]
    assert cli.main([*args, "--db", str(first)]) == 0
    assert cli.main([*args, "--db", str(second), "--check", str(first), "--json"]) == 0
    out = capsys.readouterr().out
    assert "reproduced 4 of 4 runs" in out
    stats = json.loads(out.strip().splitlines()[-1])
    assert [s["setting"] for s in stats] == [{"gamma": 0.8}, {"gamma": 0.3}] and all(s["runs"] == 2 for s in stats)
    _, rows = results(second)
    assert {r["config"].precision for r in rows} == {"bf16"} and len(rows) == 4
    same, total, differ = reproduced(rows, results(first)[1])
    assert (same, total, differ) == (4, 4, [])
    # Rerun: nothing left to train; a summary reads the database alone.
    assert cli.main([*args, "--db", str(second)]) == 0
    assert all(len(r["history"]) == 2 and r["history"][-1]["step"] == 12 for r in rows)  # the live evaluations, in the database
    assert cli.main(["seeds", "--db", str(second), "--summary", "--markdown", "--histories", "--replay-patience", "1"]) == 0
    out = capsys.readouterr().out
    assert "| gamma 0.8 |" in out and "   history           2 runs: " in out
    assert "patience 1        2 runs: 100% of the steps (mean 12 -> 12); same label in 2 of 2" in out  # no early stop to replay
    # A summary of a subset: the seeds and gammas another database shares.
    assert cli.main(["seeds", "--db", str(second), "--summary", "--seeds", "1", "--gamma", "0.3", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [(s["setting"], s["runs"], s["seeds"]) for s in stats] == [({"gamma": 0.3}, 1, [1])]


def test_a_card_takes_the_validation_of_its_own_recipe_only():
    from models.train import TrainConfig

    from interp.seeds import card_validation

    rows = [_row(s, 0.8, "inferential", 1.0, 0.0) | {"config": TrainConfig(gamma=0.8, seed=s)} for s in (1, 2)]
    groups = seed_groups(rows, {0.8: "inferential"})
    card = {"gamma": 0.8, "recipe": TrainConfig(gamma=0.8).recipe()}
    v = card_validation(card, groups, rows, "v.db")
    assert (v["runs"], v["solution_runs"], v["clean_runs"], v["database"]) == (2, 2, 2, "v.db")
    older = {"gamma": 0.8, "recipe": {k: v for k, v in card["recipe"].items() if k != "decay_after_solution"}}  # a card from before that setting
    assert card_validation(older, groups, rows, "v.db") == v
    other = {"gamma": 0.8, "recipe": TrainConfig(gamma=0.8, lr=5e-4).recipe()}
    with pytest.raises(ValueError, match="another command"):
        card_validation(other, groups, rows, "v.db")


def test_two_ways_of_running_the_same_seeds_compare_label_by_label():
    from interp.seeds import compare_runs

    bf16 = [_row(1, 0.8, "inferential", 1.0, 0.0), _row(2, 0.8, "inferential", 1.0, 0.0), _row(3, 0.8, "symmetric", 0.1, 0.9)]
    fp32 = [_row(1, 0.8, "inferential", 1.0, 0.0), _row(2, 0.8, "symmetric", 0.1, 0.9), _row(4, 0.8, "inferential", 1.0, 0.0)]
    (c,) = compare_runs(bf16, fp32, {0.8: "inferential"})
    assert (c["runs"], c["same_label"], c["solution_runs"], c["clean_runs"]) == (2, 1, [2, 1], [2, 1])  # seeds 1 and 2 only
    assert c["fisher_p"] == pytest.approx(1.0)
    many = [_row(s, 0.8, "inferential", 1.0, 0.0) for s in range(20)]
    (c,) = compare_runs(many, [_row(s, 0.8, "symmetric", 0.0, 1.0) for s in range(20)], {0.8: "inferential"})
    assert c["same_label"] == 0 and c["fisher_p"] < 1e-9


README_SEED_ROW = re.compile(r"^\| (?P<db>[\w/]+\.db)(?: \([^|]*\))? \| gamma (?P<gamma>[\d.]+) \| (?P<columns>.*)$")


def test_every_seed_table_row_in_the_readme_is_printed_from_its_database():
    """Each README row `| DB | gamma G | runs | labels | solution | clean | positions |` is
    what `anchor-interp seeds --db DB --summary --markdown` prints for that gamma, over all of
    the database's seeds or over the tuning seeds 100-107 the CPU screens share (the GPU
    databases hold 100-115): no seed statistic in the README is typed by hand."""
    sweeps = Path(__file__).parents[1] / "models" / "sweeps"
    readme_rows = [m for line in (sweeps.parents[1] / "README.md").read_text().splitlines() if (m := README_SEED_ROW.match(line))]
    assert len(readme_rows) >= 20
    for m in readme_rows:
        _, rows = results(sweeps / m["db"])
        gamma, solution = float(m["gamma"]), m["columns"].split(" | ")[2].split()[0]
        printed = set()
        for seeds in (None, set(range(100, 108))):
            chosen = [r for r in rows if r["gamma"] == gamma and (seeds is None or r["seed"] in seeds)]
            for line in markdown_table(seed_groups(chosen, {gamma: solution}), "x").splitlines()[2:]:
                printed.add(line.split(" | ", 2)[2])
        assert m["columns"] in printed, f"README row for {m['db']} gamma {gamma} is not what its database prints"


def test_histories_find_the_runs_that_reached_their_solution_and_lost_it(tmp_path):
    from interp.seeds import format_histories, solution_histories

    def evaluation(step, seen, symmetric):
        return {"step": step, "seen_test": seen, "inferential": 1 - symmetric, "symmetric": symmetric}

    courses = {  # seed -> the live evaluations its checkpoint's card holds
        1: [evaluation(100, 0.5, 0.2), evaluation(200, 1.0, 0.95), evaluation(300, 1.0, 1.0)],
        2: [evaluation(100, 0.5, 0.2), evaluation(200, 1.0, 0.97), evaluation(300, 1.0, 0.4)],  # a lookup lost to composition
        3: [evaluation(100, 0.9, 0.0)],  # no kept checkpoint: left out
    }
    rows = [_row(1, 0.3, "symmetric", 0.0, 1.0), _row(2, 0.3, "inferential", 0.6, 0.4), _row(3, 0.3, "inferential", 1.0, 0.0)]
    for cell_id, row in enumerate(rows):
        row |= {"id": cell_id, "steps": 300}
        if row["seed"] != 3:
            card = tmp_path / "v.checkpoints" / f"cell-{cell_id}" / "card.json"
            card.parent.mkdir(parents=True)
            card.write_text(json.dumps({"history": courses[row["seed"]]}))
    (group,) = seed_groups(rows, {0.3: "symmetric"})
    histories = solution_histories(tmp_path / "v.db", group, rows)
    assert [(h["seed"], h["fit_step"], h["peak"], h["peak_step"], h["lost"]) for h in histories] == [(1, 200, 1.0, 300, False), (2, 200, 0.97, 200, True)]
    text = format_histories(group, histories)
    assert "2 runs: seen pairs fit at step 200-200" in text and "symmetric >= 0.9 at some evaluation in 2, lost later in 1" in text
    assert "seed 2: 0.970 at step 200 -> 0.400 at 300" in text
    assert "none stored" in format_histories(group, [])


def test_a_shorter_patience_is_replayed_with_the_training_rule_on_stored_histories():
    from interp.seeds import format_replay, replay_patience
    from models.train import TrainConfig

    def evaluation(step, symmetric):
        return {"step": step, "seen_test": 1.0, "inferential": 1 - symmetric, "symmetric": symmetric}

    # Seed 1 holds its lookup from step 200; seed 2 holds one from 200 to 400, then composes.
    courses = {1: [evaluation(s, 1.0) for s in range(100, 800, 100)],
               2: [evaluation(s, 1.0) for s in (100, 200, 300, 400)] + [evaluation(s, 0.0) for s in range(500, 1200, 100)]}
    config = TrainConfig(gamma=0.3, patience=4, min_steps=0)
    rows = [_row(1, 0.3, "symmetric", 0.0, 1.0), _row(2, 0.3, "inferential", 1.0, 0.0)]
    for cell_id, row in enumerate(rows):
        row |= {"id": cell_id, "config": config, "history": courses[row["seed"]]}
    (group,) = seed_groups(rows, {0.3: "symmetric"})
    replay = replay_patience("unused.db", group, rows, 2)
    assert [(r["seed"], r["steps"], r["replayed_steps"], r["label"], r["replayed_label"]) for r in replay] == [
        (1, 700, 300, "symmetric", "symmetric"), (2, 1100, 300, "inferential", "symmetric")]
    text = format_replay(group, 2, replay)
    assert "2 runs: 33% of the steps (mean 900 -> 300); same label in 1 of 2; seed 2 inferential -> symmetric (step 300 not 1100)" in text
    with pytest.raises(ValueError, match="replay can only stop earlier"):
        replay_patience("unused.db", group, rows, 5)


README_COMPARE_ROW = re.compile(r"^\| (?P<db>\w+\.db) vs (?P<other>\w+\.db(?: \+ \w+\.db)*) \| gamma (?P<gamma>[\d.]+) \| (?P<columns>.*)$")


def test_every_comparison_row_in_the_readme_is_printed_from_its_two_databases():
    """Each README row `| A.db vs B.db [+ C.db] | gamma G | ... |` (bf16 against fp32, say) is
    what `anchor-interp seeds --db A --summary --compare B [C] --markdown` prints for that
    gamma (over all of A's seeds that B and C hold)."""
    from interp.seeds import compare_runs, compare_table

    sweeps = Path(__file__).parents[1] / "models" / "sweeps"
    readme_rows = [m for line in (sweeps.parents[1] / "README.md").read_text().splitlines() if (m := README_COMPARE_ROW.match(line))]
    assert len(readme_rows) >= 4
    for m in readme_rows:
        gamma, solution = float(m["gamma"]), m["columns"].split(" | ")[2].split()[0]
        other = [row for name in m["other"].split(" + ") for row in results(sweeps / name)[1]]
        comparisons = compare_runs(results(sweeps / m["db"])[1], other, {gamma: solution})
        printed = compare_table([c for c in comparisons if c["setting"]["gamma"] == gamma], m["db"], m["other"])
        assert m.group(0) in printed.splitlines(), f"README row for {m['db']} vs {m['other']} gamma {gamma} is not what they print"


def test_the_readme_replay_lines_are_printed_from_the_stored_histories():
    """The README's early-stopping replay (Training speed) is what `seeds --replay-patience`
    prints from the shipped databases' stored histories."""
    from interp.seeds import format_replay, replay_patience

    sweeps = Path(__file__).parents[1] / "models" / "sweeps"
    readme = [line.strip() for line in (sweeps.parents[1] / "README.md").read_text().splitlines() if re.match(r"^ +patience \d+ +\d+ runs:", line)]
    assert len(readme) == 8
    printed = set()
    for name, expect in (("validation_next.db", {0.8: "inferential", 0.2: "symmetric"}), ("validation.db", {0.8: "inferential", 0.3: "symmetric"})):
        _, rows = results(sweeps / name)
        for group in seed_groups(rows, expect):
            printed |= {format_replay(group, p, replay_patience(sweeps / name, group, rows, p)).strip() for p in (2, 3)}
    assert set(readme) <= printed
