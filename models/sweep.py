"""A sweep's spec and its results store: the grid of training runs a phase diagram is made
of, and the SQLite file that holds every cell and what it learned.

A cell is one `TrainConfig`; the grid is a product of axes, each any TrainConfig field
(gamma, n_layers, seed, lr, weight_decay, dataset_size, ...) or any HookedTransformerConfig
field (d_model, d_head, ..., which go to `TrainConfig.arch`).

    spec = SweepSpec.from_toml("phase")                           # a shipped spec, or SweepSpec.parse(grid=[...])
    meta, rows = results("models/sweeps/phase.db")                 # read a database
    check_database("models/sweeps/phase.db", spec)                 # does it hold exactly this grid?

Running a sweep trains, classifies and probes models, so it lives above models, probes and
interp: `interp.sweep.run_sweep`. The database is the sweep's only state: cells are written
before anything runs, each finished cell is committed in its own transaction, and a cell
left 'running' by a killed sweep is simply run again on resume.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import hashlib
import itertools
import json
import os
import socket
import sqlite3
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models import hooked
from models.train import TrainConfig

SPECS = Path(__file__).parent / "sweeps"  # shipped specs: `--spec phase` is SPECS/phase.toml
DEFAULT_SPEC = "phase"  # the default phase diagram: gamma x depth 2-4 x 5 seeds on the shipped recipe
ALIASES = {"layers": "n_layers", "depth": "n_layers", "seeds": "seed"}
TRAIN_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name not in ("arch", "task"))
TASK_SET = ("n_layers", "d_vocab", "n_ctx", "seed")  # HookedTransformerConfig fields that are not free axes


# ---- the spec ---------------------------------------------------------------------------
def parse_value(text: str) -> Any:
    """A command-line value as Python: numbers, None, True, lists; a bare word stays a string."""
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return text.strip()


def assignment(text: str, flag: str) -> tuple[str, str]:
    """NAME=VALUE as (name, raw value); `flag` names the option in the error."""
    if "=" not in text:
        raise ValueError(f"{flag} takes NAME=VALUE, got {text!r}")
    name, raw = text.split("=", 1)
    return name.strip(), raw


def canonical_name(name: str) -> str:
    """The TrainConfig / HookedTransformerConfig field a parameter name refers to; unknown
    names are refused with the valid ones."""
    name = ALIASES.get(name, name)
    if name in TRAIN_FIELDS:
        return name
    arch = hooked.config_fields() - set(TASK_SET)
    if name in arch:
        return name
    if name in TASK_SET or name in ("arch", "task"):
        raise ValueError(f"{name!r} cannot be swept: the task and TrainConfig set it")
    close = difflib.get_close_matches(name, [*TRAIN_FIELDS, *ALIASES, *arch], n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise ValueError(
        f"unknown parameter {name!r}{hint}; valid: the TrainConfig fields {', '.join(TRAIN_FIELDS)} "
        f"(aliases {', '.join(f'{a}={c}' for a, c in ALIASES.items())}), or any HookedTransformerConfig "
        "field, e.g. d_model, d_head, d_mlp, n_heads, act_fn, normalization_type"
    )


def _coerce(name: str, value: Any) -> Any:
    """A value of the type the TrainConfig field holds (TOML and the command line give ints
    for floats and lists for tuples); architecture values are checked by TransformerLens."""
    if name not in TRAIN_FIELDS:
        return value
    default = getattr(TrainConfig(), name)
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, tuple):
        ok = isinstance(value, (list, tuple))
        value = tuple(value) if ok else value
    elif default is None:  # dataset_size: None (fresh batches) or an int
        ok = value is None or (isinstance(value, int) and not isinstance(value, bool))
    else:
        ok = isinstance(value, type(default)) and not isinstance(value, bool)
    if not ok:
        raise ValueError(f"{name} must be {type(default).__name__ if default is not None else 'an int or None'}, got {value!r}")
    return value


def _json_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


@dataclass(frozen=True)
class Cell:
    """One training run of the sweep."""

    id: int  # position in the grid's expansion order
    params: dict[str, Any]  # the swept values of this cell
    config: TrainConfig


@dataclass(frozen=True)
class SweepSpec:
    """A grid: `grid` axes (expanded as a product, the first axis outermost) and `fixed`
    settings shared by every cell; anything not named keeps its TrainConfig default."""

    grid: dict[str, tuple]
    fixed: dict[str, Any]

    @classmethod
    def build(cls, grid: dict[str, Any], fixed: dict[str, Any] | None = None) -> "SweepSpec":
        """Checks names, types and contradictions; aliases become field names."""
        canon_grid: dict[str, tuple] = {}
        canon_fixed: dict[str, Any] = {}
        for where, items, out in (("grid", grid, canon_grid), ("fixed", fixed or {}, canon_fixed)):
            for raw_name, value in items.items():
                name = canonical_name(raw_name)
                if name in canon_grid or name in canon_fixed:
                    both = "both swept and fixed" if (name in canon_grid) != (where == "grid") else "given twice"
                    raise ValueError(f"contradictory grid: {name} is {both}")
                if where == "grid":
                    values = value if isinstance(value, (list, tuple)) else [value]
                    if not values:
                        raise ValueError(f"empty grid: axis {name} has no values")
                    values = tuple(_coerce(name, v) for v in values)
                    repeated = sorted({repr(v) for v in values if values.count(v) > 1})
                    if repeated:
                        raise ValueError(f"contradictory grid: axis {name} repeats {', '.join(repeated)}")
                    out[name] = values
                else:
                    out[name] = _coerce(name, value)
        if not canon_grid:
            raise ValueError("empty grid: give at least one axis (--grid NAME=V1,V2,... or a [grid] table)")
        spec = cls(canon_grid, canon_fixed)
        spec.cells()  # every cell must make a valid TrainConfig and model
        return spec

    @classmethod
    def parse(cls, grid: list[str] = (), fixed: list[str] = (), base: "SweepSpec | None" = None) -> "SweepSpec":
        """From command-line assignments (`gamma=0.3,0.5`, `max_steps=1500`), over `base`
        (a TOML spec) if given: a name on the command line replaces the base's entry."""
        given: dict[str, tuple[str, Any]] = {}  # canonical name -> (flag, value)
        for flag, texts in (("--grid", grid), ("--set", fixed)):
            for text in texts:
                name, raw = assignment(text, flag)
                name = canonical_name(name)
                if name in given:
                    where = f"twice to {flag}" if given[name][0] == flag else f"to {given[name][0]} and {flag}"
                    raise ValueError(f"contradictory grid: {name} given {where}")
                values = [parse_value(v) for v in raw.split(",")] if raw.strip() else []
                given[name] = (flag, values if flag == "--grid" else parse_value(raw))
        new_grid = {n: v for n, (flag, v) in given.items() if flag == "--grid"}
        new_fixed = {n: v for n, (flag, v) in given.items() if flag == "--set"}
        if base is None:
            return cls.build(new_grid, new_fixed)
        # A name on the command line replaces the base's entry; a replaced axis keeps its place.
        merged_grid = {n: new_grid.get(n, v) for n, v in base.grid.items() if n not in new_fixed}
        merged_fixed = {n: new_fixed.get(n, v) for n, v in base.fixed.items() if n not in new_grid}
        return cls.build({**merged_grid, **new_grid}, {**merged_fixed, **new_fixed})

    @classmethod
    def from_toml(cls, path: str | os.PathLike) -> "SweepSpec":
        """A TOML file with a [grid] table (name = [values]) and an optional [fixed] table;
        `default` (or another name) means models/sweeps/<name>.toml."""
        path = Path(path)
        if not path.exists() and (SPECS / f"{path}.toml").is_file():
            path = SPECS / f"{path}.toml"
        if not path.is_file():
            shipped = ", ".join(sorted(p.stem for p in SPECS.glob("*.toml")))
            raise FileNotFoundError(f"no sweep spec at {str(path)!r} (shipped: {shipped})")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"{path} is not valid TOML: {err}") from None
        unknown = set(data) - {"grid", "fixed"}
        if unknown:
            raise ValueError(f"{path}: unknown tables/keys {sorted(unknown)}; a spec has [grid] and [fixed]")
        return cls.build(data.get("grid", {}), data.get("fixed", {}))

    def to_dict(self) -> dict[str, Any]:
        return {
            "grid": {k: [_json_value(v) for v in vs] for k, vs in self.grid.items()},
            "fixed": {k: _json_value(v) for k, v in sorted(self.fixed.items())},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SweepSpec":
        return cls.build(d["grid"], d["fixed"])

    def cells(self) -> list[Cell]:
        """The product of the axes, first axis outermost, as validated TrainConfigs."""
        cells, models_checked = [], set()
        for i, values in enumerate(itertools.product(*self.grid.values())):
            params = dict(zip(self.grid, values))
            settings = {**self.fixed, **params}
            train_kw = {k: v for k, v in settings.items() if k in TRAIN_FIELDS}
            arch = {k: v for k, v in settings.items() if k not in TRAIN_FIELDS}
            try:
                config = TrainConfig(**train_kw, arch=arch)
                arch_key = json.dumps(config.hooked_config(), sort_keys=True, default=str)
                if arch_key not in models_checked:  # a config TransformerLens accepts
                    hooked.from_config(config.hooked_config())
                    models_checked.add(arch_key)
            except (ValueError, TypeError, AssertionError, RuntimeError) as err:
                raise ValueError(f"invalid grid: cell {params}: {err}") from None
            cells.append(Cell(i, params, config))
        return cells

    def describe(self) -> str:
        axes = " x ".join(f"{k} {list(map(_json_value, v))}" for k, v in self.grid.items())
        fixed = ", ".join(f"{k}={_json_value(v)}" for k, v in sorted(self.fixed.items()))
        return f"{len(list(itertools.product(*self.grid.values())))} cells: {axes}" + (f"; fixed {fixed}" if fixed else "")


def config_json(config: TrainConfig) -> str:
    return json.dumps({"recipe": config.recipe(), "seed": config.seed}, sort_keys=True)


def config_from_json(text: str) -> TrainConfig:
    d = json.loads(text)
    return TrainConfig.from_recipe(d["recipe"], d["seed"])


# ---- the results store ------------------------------------------------------------------
SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE cells (
    id INTEGER PRIMARY KEY,            -- position in the grid's expansion order
    params TEXT NOT NULL,              -- JSON: this cell's swept values
    config TEXT NOT NULL,              -- JSON: the full TrainConfig (recipe and seed)
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'running', 'done', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    label TEXT,                        -- probes.classify: inferential / symmetric / other / unfit
    seen_test_keys REAL,
    inferential_test_keys REAL,
    symmetric_test_keys REAL,
    metrics TEXT,                      -- JSON: the whole Classification.to_dict()
    steps INTEGER,
    stopped_early INTEGER,
    train_seconds REAL,                -- training only
    wall_seconds REAL,                 -- training + classification (+ checkpoint)
    threads INTEGER,                   -- torch threads of the run (results depend on it)
    worker TEXT,                       -- host:pid
    versions TEXT,                     -- JSON: python, torch, transformer_lens (+ machine, cpu, bf16_matmul in rows made since they were added)
    started TEXT,
    finished TEXT,
    error TEXT,                        -- traceback of a failed cell
    checkpoint TEXT,                   -- checkpoint folder, when kept
    history TEXT                       -- JSON: the training's live evaluations (TrainResult.history)
);
"""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class SweepStore:
    """One sweep's SQLite file. Every write is one transaction: a crash at any moment
    leaves each cell either finished (with all its results) or to be run."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no sweep database at {self.path}")
        self.db = sqlite3.connect(self.path, timeout=60)
        self.db.row_factory = sqlite3.Row
        try:
            meta = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as err:
            self.db.close()
            raise ValueError(f"{self.path} is not a sweep database ({err})") from None
        self.meta = {k: json.loads(v) for k, v in meta.items()}
        if self.meta.get("kind") != "anchor-interp sweep":
            self.db.close()
            raise ValueError(f"{self.path} is not a sweep database (no anchor-interp sweep metadata)")

    @classmethod
    def create(cls, path: str | os.PathLike, spec: SweepSpec, cells: list[Cell], command: str = "") -> "SweepStore":
        """A new database holding the spec and every cell as 'pending'. Built under a temporary
        name and linked into place, so a half-created database never exists, and of two sweeps
        creating the same file at once one is refused (a rename would replace the other's)."""
        path = Path(path)
        exists = f"{path} already exists: pass --resume to continue that sweep, or choose another --db"
        if path.exists():
            raise FileExistsError(exists)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.unlink(missing_ok=True)
        try:
            db = sqlite3.connect(tmp)
            try:
                with db:
                    db.executescript(SCHEMA)
                    meta = {
                        "kind": "anchor-interp sweep",
                        "schema": SCHEMA_VERSION,
                        "spec": spec.to_dict(),
                        "fingerprint": fingerprint(cells),
                        "created": _now(),
                        "command": command,
                    }
                    db.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
                    db.executemany(
                        "INSERT INTO cells (id, params, config) VALUES (?, ?, ?)",
                        [(c.id, json.dumps(c.params, default=_json_value), config_json(c.config)) for c in cells],
                    )
            finally:
                db.close()
            os.link(tmp, path)
        except FileExistsError:
            raise FileExistsError(exists) from None
        finally:
            tmp.unlink(missing_ok=True)
        return cls(path)

    def close(self) -> None:
        self.db.close()

    def spec(self) -> SweepSpec:
        return SweepSpec.from_dict(self.meta["spec"])

    def cells(self) -> list[Cell]:
        """The cells as stored (their configs exactly as they were made)."""
        rows = self.db.execute("SELECT id, params, config FROM cells ORDER BY id").fetchall()
        try:
            return [Cell(r["id"], json.loads(r["params"]), config_from_json(r["config"])) for r in rows]
        except (TypeError, KeyError, ValueError) as err:
            raise ValueError(f"{self.path}: its cells cannot be rebuilt by this version of TrainConfig ({err})") from None

    def difference(self, spec: SweepSpec) -> str:
        """In words, how this database differs from `spec` ("" if it holds exactly its cells):
        its recorded spec first, then the cells as stored, so a database whose cells were
        made with other training defaults, or lost or gained cells, is told apart too."""
        why = spec_difference(self.meta["spec"], spec.to_dict())
        if why:
            return why
        stored, wanted = self.cells(), spec.cells()
        if [c.id for c in stored] != [c.id for c in wanted]:
            return f"it holds {len(stored)} cells, the spec has {len(wanted)}"
        for old, new in zip(stored, wanted):
            if old.params != json.loads(json.dumps(new.params, default=_json_value)):
                return f"cell {old.id} is {old.params} in the database, {new.params} in the spec"
            if config_json(old.config) != config_json(new.config):
                return f"the grid is the same, but the training defaults changed since it started (cell {old.id}: {_recipe_difference(old.config, new.config)})"
        return ""

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(("pending", "running", "done", "failed"), 0)
        counts.update(dict(self.db.execute("SELECT status, COUNT(*) FROM cells GROUP BY status").fetchall()))
        return counts

    def todo(self, retry_failed: bool = True) -> list[int]:
        """Cells to run: pending ones, those a dead sweep left 'running', and failed ones
        unless told otherwise. Finished cells are never run again."""
        statuses = ("pending", "running", "failed") if retry_failed else ("pending", "running")
        marks = ",".join("?" * len(statuses))
        return [r[0] for r in self.db.execute(f"SELECT id FROM cells WHERE status IN ({marks}) ORDER BY id", statuses)]

    def mark_running(self, cell_id: int) -> None:
        with self.db:
            self.db.execute(
                "UPDATE cells SET status='running', attempts=attempts+1, started=?, error=NULL WHERE id=? AND status != 'done'",
                (_now(), cell_id),
            )

    def mark_pending(self, cell_ids: list[int]) -> None:
        with self.db:
            self.db.executemany("UPDATE cells SET status='pending' WHERE id=? AND status='running'", [(i,) for i in cell_ids])

    def _add_history_column(self) -> None:
        """Databases made before the history column get it on their first write (in the
        writing transaction); reading never changes a file."""
        if "history" not in {r[1] for r in self.db.execute("PRAGMA table_info(cells)")}:
            self.db.execute("ALTER TABLE cells ADD COLUMN history TEXT")

    def record_history(self, cell_id: int, history: list[dict[str, float]]) -> None:
        """Store a finished run's training history (for runs recorded before the column
        existed, from their kept checkpoint's card)."""
        with self.db:
            self._add_history_column()
            self.db.execute("UPDATE cells SET history=? WHERE id=? AND status='done'", (json.dumps(history), cell_id))

    def record_done(self, cell_id: int, outcome: dict[str, Any]) -> None:
        m = outcome["metrics"]
        with self.db:
            self._add_history_column()
            self.db.execute(
                """UPDATE cells SET status='done', label=?, seen_test_keys=?, inferential_test_keys=?,
                   symmetric_test_keys=?, metrics=?, steps=?, stopped_early=?, train_seconds=?, wall_seconds=?,
                   threads=?, worker=?, versions=?, finished=?, error=NULL, checkpoint=?, history=? WHERE id=?""",
                (
                    m["label"], m["seen_test_keys"], m["inferential_test_keys"], m["symmetric_test_keys"], json.dumps(m),
                    outcome["steps"], outcome["stopped_early"], outcome["train_seconds"], outcome["wall_seconds"],
                    outcome["threads"], outcome["worker"], json.dumps(outcome["versions"]), _now(), outcome["checkpoint"],
                    json.dumps(outcome["history"]) if outcome.get("history") is not None else None, cell_id,
                ),
            )

    def record_failed(self, cell_id: int, error: str) -> None:
        with self.db:
            self.db.execute("UPDATE cells SET status='failed', error=?, finished=? WHERE id=?", (error, _now(), cell_id))

    def claim(self) -> None:
        """Refuse a second live sweep on this file; a dead one's claim is taken over. Check
        and set are one IMMEDIATE transaction (the write lock is taken before the check), so
        of two sweeps claiming at the same instant exactly one wins."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            runner = self.meta_value("runner")
            if runner and runner["pid"] != os.getpid() and runner["host"] == socket.gethostname() and process_alive(runner["pid"]):
                raise ValueError(f"{self.path} is being run by process {runner['pid']} (since {runner['since']}); wait for it or stop it")
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('runner', ?)", (json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": _now()}),))
        except BaseException:
            self.db.rollback()
            raise
        self.db.commit()

    def release(self) -> None:
        with self.db:
            self.db.execute("DELETE FROM meta WHERE key='runner'")

    def meta_value(self, key: str) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def set_meta(self, key: str, value: Any) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def rows(self) -> list[dict[str, Any]]:
        """Every cell as a dict, JSON columns parsed, with its gamma, n_layers, seed, lr and
        d_model resolved from the config (swept or not)."""
        out = []
        for r in self.db.execute("SELECT * FROM cells ORDER BY id"):
            row = dict(r)
            row.setdefault("history", None)  # a database made before the column
            for key in ("params", "metrics", "versions", "history"):
                row[key] = json.loads(row[key]) if row[key] else None
            config = config_from_json(row.pop("config"))
            row["config"] = config
            row.update(gamma=config.gamma, n_layers=config.n_layers, seed=config.seed, lr=config.lr, d_model=config.hooked_config()["d_model"])
            out.append(row)
        return out


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fingerprint(cells: list[Cell]) -> str:
    """Identity of a sweep: the full config of every cell, in order."""
    text = json.dumps([[c.params, config_json(c.config)] for c in cells], sort_keys=True, default=_json_value)
    return hashlib.sha256(text.encode()).hexdigest()


def spec_difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    """In words, how two specs (SweepSpec.to_dict) differ."""
    diffs = []
    for part in ("grid", "fixed"):
        for name in sorted(set(old[part]) | set(new[part])):
            a, b = old[part].get(name, "unset"), new[part].get(name, "unset")
            if a != b:
                diffs.append(f"{part} {name}: {a} in the database, {b} now")
    if not diffs and list(old["grid"]) != list(new["grid"]):
        diffs.append(f"axis order {list(old['grid'])} in the database, {list(new['grid'])} now")
    return "; ".join(diffs)


def checkpoint_folder(db_path: str | os.PathLike) -> Path:
    """Where a sweep keeps its runs' checkpoints (`--keep-checkpoints`): <db>.checkpoints/,
    one cell-<id> folder a run."""
    db_path = Path(db_path)
    return db_path.with_name(db_path.stem + ".checkpoints")


def results(db_path: str | os.PathLike) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(meta, rows) of a sweep database, for figures and analysis."""
    store = SweepStore(db_path)
    try:
        return store.meta, store.rows()
    finally:
        store.close()


def open_sweep(spec: SweepSpec | None, db: str | os.PathLike, resume: bool = False, command: str = "") -> SweepStore:
    """A new sweep database for `spec`, or (resume) the existing one, refusing a database
    made from a different spec."""
    db = Path(db)
    if not (resume and db.exists()):
        if spec is None:
            raise ValueError(f"no sweep database at {db} to resume, and no grid given to start one")
        return SweepStore.create(db, spec, spec.cells(), command)
    store = SweepStore(db)
    why = store.difference(spec) if spec is not None else ""
    if why:
        store.close()
        raise ValueError(f"{db} holds a different sweep ({why}); resume it without grid flags to continue its own spec, or use another --db")
    return store


def check_database(db: str | os.PathLike, spec: SweepSpec | str | os.PathLike) -> None:
    """Refuse (ValueError, with the first difference) a database whose spec or cells are not
    exactly `spec`'s (a SweepSpec, or a TOML file or shipped name): same grid, the same
    cells in the same order, each with the same full training recipe and seed."""
    spec = spec if isinstance(spec, SweepSpec) else SweepSpec.from_toml(spec)
    store = SweepStore(db)
    try:
        why = store.difference(spec)
    finally:
        store.close()
    if why:
        raise ValueError(f"{db} does not hold the sweep {spec.describe()}: {why}")


def _recipe_difference(old: TrainConfig, new: TrainConfig) -> str:
    a, b = old.recipe(), new.recipe()
    return ", ".join(f"{k} {a.get(k)} -> {b.get(k)}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))
