"""Fixed roots: typed paths confined (the same refusal whether or not a path exists), symlinks that leave a root
refused, folder scans bounded and never led out of the folder."""

from __future__ import annotations

import os

import pytest

from diagnostics.errors import AccessError, DataError
from diagnostics.serving.roots import Roots, scan_files


@pytest.fixture
def tree(tmp_path):
    """``root/`` (the allowed folder, with ``runs/`` and ``.secret``) beside ``outside/`` (with ``key.pem``)."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "runs").mkdir(parents=True)
    (root / ".secret").write_text("x")
    outside.mkdir()
    (outside / "key.pem").write_text("secret")
    return root, outside


def refusal(roots: Roots, path: str) -> str:
    with pytest.raises(AccessError) as caught:
        roots.confine(path, "The run store")
    return str(caught.value)


@pytest.mark.parametrize("relative", ["runs", "runs/new-store", "."], ids=["folder", "not-yet-made", "the-root"])
def test_paths_inside_a_root_are_accepted_resolved(tree, relative):
    root, _ = tree
    assert Roots([root]).confine(str(root / relative)) == (root / relative).resolve()


@pytest.mark.parametrize("name", ["outside", "outside/key.pem", "root/../outside/key.pem"],
                         ids=["folder", "file", "dot-dot"])
def test_a_path_outside_is_refused_with_the_same_message_whether_or_not_it_exists(tree, name):
    root, outside = tree
    roots = Roots([root])
    existing = str(outside.parent / name)
    missing = existing + "-missing"
    assert os.path.exists(existing) and not os.path.exists(missing)
    message = refusal(roots, existing)
    assert message.replace(repr(existing), "<path>") == refusal(roots, missing).replace(repr(missing), "<path>")
    assert "key.pem" not in message.replace(existing, "")          # nothing of the folder's entries is listed
    assert "was not opened" in message


def test_a_symlink_inside_a_root_that_leaves_it_is_refused(tree):
    root, outside = tree
    (root / "runs" / "escape").symlink_to(outside)
    (root / "runs" / "inner").symlink_to(root / "runs")
    roots = Roots([root])
    refusal(roots, str(root / "runs" / "escape" / "key.pem"))
    refusal(roots, str(root / "runs" / "escape"))
    assert roots.confine(str(root / "runs" / "inner")) == (root / "runs").resolve()


def test_hidden_names_below_a_root_are_refused(tree):
    root, _ = tree
    refusal(Roots([root]), str(root / ".secret"))
    assert Roots([root / ".."]).contains(str(root))                  # a root may itself sit anywhere


@pytest.mark.parametrize("path", ["", "   ", "runs\x00/x"], ids=["empty", "blank", "nul-byte"])
def test_empty_or_malformed_paths_are_refused(tree, path):
    refusal(Roots([tree[0]]), path)


def test_a_scan_follows_no_folder_symlink_and_no_file_symlink_out_of_the_folder(tree):
    root, outside = tree
    folder = root / "images"
    (folder / "cat").mkdir(parents=True)
    (folder / "cat" / "1.png").write_bytes(b"png")
    (folder / "cat" / "loop").symlink_to(folder)                     # a loop, as /proc/self/root is
    (folder / "cat" / "outside").symlink_to(outside)
    (folder / "cat" / "key.png").symlink_to(outside / "key.pem")
    (folder / "cat" / "alias.png").symlink_to(folder / "cat" / "1.png")
    (folder / "cat" / ".hidden.png").write_bytes(b"png")
    found = scan_files(folder, (".png",))
    assert [p.name for p in found] == ["1.png", "alias.png"]


def test_a_scan_stops_at_its_entry_budget(tmp_path):
    for i in range(30):
        (tmp_path / f"{i}.png").write_bytes(b"")
    assert len(scan_files(tmp_path, max_entries=30)) == 30
    with pytest.raises(DataError, match="more than 29 files and folders"):
        scan_files(tmp_path, max_entries=29)


def test_a_scan_stops_at_its_time_budget(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(DataError, match="took longer than -1 s; give a smaller one"):
        scan_files(tmp_path, max_seconds=-1.0)


def test_an_image_folder_with_links_to_the_whole_file_system_loads_only_its_own_images(tmp_path):
    import time

    from PIL import Image

    from diagnostics.experiments.data import load_image_folder

    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.new("RGB", (4, 4), (i * 40, 0, 0)).save(tmp_path / name / f"{i}.png")
    (tmp_path / "cat" / "everything").symlink_to("/")                  # the walk: 3 GB in 42 s, unending
    (tmp_path / "dog" / "proc-root").symlink_to("/proc/self/root")
    started = time.perf_counter()
    data = load_image_folder(tmp_path, image_size=4)
    assert time.perf_counter() - started < 5
    assert data.classes == ("cat", "dog") and len(data.y_train) + len(data.y_test) == 6
