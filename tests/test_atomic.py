"""The one atomic-write helper module: a file or directory appears whole or not at all.

Truths: the bytes on disk after a write are the bytes given; after a writer fails mid-way the
previous content is byte-identical and no temporary is left; a swapped directory holds exactly
the new directory's files. Also: no hand-rolled ``os.replace`` is left outside `harness.atomic`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from harness.atomic import atomic_dir, atomic_path, atomic_write, swap_in
from harness.store import remove_stale_temporaries

ROOT = Path(__file__).resolve().parent.parent


def test_atomic_write_replaces_whole_and_keeps_umask_permissions(tmp_path):
    path = tmp_path / "a" / "x.json"
    atomic_write(path, "first")
    atomic_write(path, b"second")
    assert path.read_bytes() == b"second"
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.json"]


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "x.bin"
    atomic_write(path, b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed mid-write")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.bin"]


def test_atomic_dir_swaps_as_a_whole(tmp_path):
    target = tmp_path / "report"
    with atomic_dir(target) as tmp:
        (tmp / "a.csv").write_text("1")
        (tmp / "a.md").write_text("1")
    with atomic_dir(target) as tmp:
        (tmp / "a.md").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["a.md"]
    assert (target / "a.md").read_text() == "2"
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "b.md").write_text("3")
        raise RuntimeError("boom")
    assert sorted(p.name for p in target.iterdir()) == ["a.md"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


def test_swap_in_keeps_the_winner_when_asked(tmp_path):
    target = tmp_path / "built"
    target.mkdir()
    (target / "theirs").write_text("x")
    mine = tmp_path / ".mine"
    mine.mkdir()
    (mine / "mine").write_text("y")
    swap_in(mine, target, replace=False)
    assert sorted(p.name for p in target.iterdir()) == ["theirs"] and not mine.exists()


def test_stale_temporaries_of_a_dead_writer_are_removed(tmp_path):
    import subprocess
    import sys

    # a writer that dies inside atomic_path / atomic_dir leaves its temporaries behind
    code = ("import os, sys\nfrom harness.atomic import atomic_path, atomic_dir\n"
            "cm = atomic_path(sys.argv[1] + '/x.json'); tmp = cm.__enter__(); tmp.write_text('half')\n"
            "cd = atomic_dir(sys.argv[1] + '/rep'); d = cd.__enter__(); (d / 'f').write_text('half')\n"
            "os._exit(9)\n")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=False)
    left = [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    assert len(left) == 2
    removed = remove_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted(left) and not list(tmp_path.iterdir())


def test_no_hand_rolled_os_replace_outside_the_helper():
    offenders = []
    for base in ("harness", "plugins"):
        for path in (ROOT / base).rglob("*.py"):
            if path.name == "atomic.py" and path.parent.name == "harness":
                continue
            text = path.read_text(encoding="utf-8")
            if re.search(r"\bos\.replace\(|\bos\.rename\(|\.rename\((tmp|target|root)", text):
                offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, offenders
