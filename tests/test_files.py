"""The one atomic text writer: whole files or none, readable, parents created."""

import stat

import pytest

from models.files import OutputPathError, output_file, write_text_atomic


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


def test_writes_through_a_symlink_and_keeps_the_link(tmp_path):
    target = write_text_atomic(tmp_path / "real.html", "old")
    link = tmp_path / "link.html"
    link.symlink_to(target)
    write_text_atomic(link, "new")
    assert link.is_symlink() and target.read_text() == "new"
    dangling = tmp_path / "dangling.html"
    dangling.symlink_to(tmp_path / "sub" / "later.html")
    write_text_atomic(dangling, "x")
    assert dangling.is_symlink() and (tmp_path / "sub" / "later.html").read_text() == "x"


@pytest.mark.parametrize("make", ["folder", "fifo", "device"])
def test_never_replaces_what_is_not_a_regular_file(tmp_path, make):
    import os
    from pathlib import Path

    if make == "folder":
        path = tmp_path / "out.html"
        path.mkdir()
    elif make == "fifo":
        path = tmp_path / "pipe"
        os.mkfifo(path)
    else:
        path = Path("/dev/full")
        if not path.exists():
            pytest.skip("no /dev/full")
    with pytest.raises(OutputPathError, match="is a folder|is not a regular file"):
        write_text_atomic(path, "x")
    assert not path.is_file() and (make != "device" or stat.S_ISCHR(path.stat().st_mode))
    assert not list(path.parent.glob(f".{path.name}.*"))  # no temporary file left


def test_output_location_is_checked_before_any_work(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(OutputPathError, match="is a file, not a folder"):
        output_file(tmp_path / "file" / "sub" / "out.html")
    (tmp_path / "dir").mkdir()
    with pytest.raises(OutputPathError, match="is a folder"):
        output_file(tmp_path / "dir")
    assert output_file(tmp_path / "new" / "out.html") == tmp_path / "new" / "out.html"
    assert not (tmp_path / "new").exists()  # checking creates nothing


def test_an_existing_file_keeps_its_permissions(tmp_path):
    path = write_text_atomic(tmp_path / "out.txt", "old")
    path.chmod(0o600)
    write_text_atomic(path, "new")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
