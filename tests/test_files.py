"""The one atomic text writer: whole files or none, readable, parents created."""

import stat

import pytest

from models.files import write_text_atomic


def test_writes_whole_file_readable_with_parents(tmp_path):
    path = write_text_atomic(tmp_path / "a" / "b" / "out.html", "héllo\n")
    assert path == tmp_path / "a" / "b" / "out.html"
    assert path.read_text(encoding="utf-8") == "héllo\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    write_text_atomic(path, "replaced")
    assert path.read_text() == "replaced"
    assert [p.name for p in path.parent.iterdir()] == ["out.html"]  # no temporary file left


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = write_text_atomic(tmp_path / "out.txt", "old")
    with pytest.raises(TypeError):
        write_text_atomic(path, None)  # not text: fails while writing
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
