"""The examples: each answers --help without loading anything, takes the models to run on
and --out, and runs with one torch thread per process unless told otherwise."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models import hooked

EXAMPLES = Path(__file__).parent.parent / "examples"
SCRIPTS = sorted(p.name for p in EXAMPLES.glob("*.py") if p.name != "example_args.py")


def test_there_are_examples():
    assert len(SCRIPTS) == 9


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_example_answers_help(script):
    result = subprocess.run([sys.executable, str(EXAMPLES / script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:") and "--threads" in result.stdout and "--out" in result.stdout
    assert "models" in result.stdout


def test_examples_use_one_torch_thread_by_default(monkeypatch):
    sys.path.insert(0, str(EXAMPLES))
    try:
        from example_args import example_args
    finally:
        sys.path.remove(str(EXAMPLES))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setattr(sys, "argv", ["x.py", "my-model"])
        args = example_args("doc", "out/x")
        assert torch.get_num_threads() == 1 and args.models == ["my-model"] and args.out == Path("out/x")
        monkeypatch.setattr(sys, "argv", ["x.py", "--threads", "2"])
        assert example_args("doc", "out/x").models == ["inferential", "symmetric"] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_an_example_runs_on_a_checkpoint_folder(tmp_path):
    tiny = dict(d_model=16, d_head=8, d_mlp=32)
    model = hooked.save(hooked.build(0.5, **tiny), tmp_path / "tiny", {"seed": 0}, hooked.hooked_config(**tiny))
    result = subprocess.run([sys.executable, str(EXAMPLES / "complexity.py"), str(model), "--out", str(tmp_path / "figs")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "figs" / "complexity.html").is_file()
