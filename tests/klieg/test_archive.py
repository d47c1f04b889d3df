"""Code archives: deterministic bytes, exclusions, safe unpacking, size limit."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from klieg import archive
from klieg.exceptions import DeployError

pytestmark = pytest.mark.timeout(30)


def make_tree(root: Path) -> None:
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "app.py").write_text("print('app')\n")
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "sub" / "model.py").write_text("WEIGHTS = 1\n")
    (root / "data.bin").write_bytes(bytes(range(256)))
    run = root / "run.sh"
    run.write_text("#!/bin/sh\necho hi\n")
    run.chmod(0o755)


def names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return tar.getnames()


def test_same_files_give_identical_bytes_whatever_the_mtimes(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    make_tree(a)
    first = archive.pack(a)
    for path in a.rglob("*"):
        os.utime(path, (1_000_000, 1_000_000))
    assert archive.pack(a) == first
    make_tree(b)
    for path in b.rglob("*"):
        os.utime(path, (2_000_000_000, 2_000_000_000))
    assert archive.pack(b) == first
    assert archive.digest(archive.pack(b)) == archive.digest(first)


def test_content_or_mode_change_changes_the_bytes(tmp_path: Path) -> None:
    make_tree(tmp_path)
    first = archive.pack(tmp_path)
    (tmp_path / "app.py").write_text("print('app2')\n")
    second = archive.pack(tmp_path)
    assert second != first
    (tmp_path / "app.py").chmod(0o755)
    assert archive.pack(tmp_path) != second
    assert archive.digest(first) != archive.digest(second)


def test_members_are_sorted_with_fixed_metadata(tmp_path: Path) -> None:
    make_tree(tmp_path)
    data = archive.pack(tmp_path)
    assert names(data) == sorted(names(data))
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            assert member.isfile()
            assert member.mtime == 0
            assert member.uid == 0 and member.gid == 0
            assert member.uname == "" and member.gname == ""


def test_junk_is_excluded(tmp_path: Path) -> None:
    make_tree(tmp_path)
    junk = [
        "__pycache__/app.cpython-311.pyc",
        "pkg/__pycache__/x.pyc",
        ".git/HEAD",
        ".venv/bin/python",
        "venv/lib/site.py",
        "node_modules/a/index.js",
        ".mypy_cache/x.json",
        ".env",
        "pkg/.secret",
        ".hidden/inside.py",
        "stale.pyc",
        "pkg/old.pyo",
    ]
    for rel in junk:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("junk")
    assert set(names(archive.pack(tmp_path))) == {
        "app.py",
        "data.bin",
        "run.sh",
        "pkg/__init__.py",
        "pkg/sub/model.py",
    }


def test_unpack_round_trips_content_and_exec_bits(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    make_tree(src)
    archive.unpack(archive.pack(src), dest)
    for rel in ("app.py", "data.bin", "run.sh", "pkg/__init__.py", "pkg/sub/model.py"):
        assert (dest / rel).read_bytes() == (src / rel).read_bytes()
    assert (dest / "run.sh").stat().st_mode & 0o777 == 0o755
    assert (dest / "app.py").stat().st_mode & 0o777 == 0o644
    assert archive.pack(dest) == archive.pack(src)


def tar_gz(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return raw.getvalue()


def regular(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    return info, data


@pytest.mark.parametrize("name", ["../evil.py", "ok/../../evil.py", "a/../../../evil.py"])
def test_unpack_refuses_members_outside_dest(tmp_path: Path, name: str) -> None:
    dest = tmp_path / "sandbox" / "dest"
    with pytest.raises(DeployError, match="evil"):
        archive.unpack(tar_gz(regular(name, b"pwned")), dest)
    assert not list(tmp_path.rglob("evil.py"))


def test_unpack_refuses_absolute_members(tmp_path: Path) -> None:
    target = tmp_path / "abs-evil.py"
    with pytest.raises(DeployError):
        archive.unpack(tar_gz(regular(str(target), b"pwned")), tmp_path / "dest")
    assert not target.exists()


def test_unpack_refuses_symlinks(tmp_path: Path) -> None:
    link = tarfile.TarInfo("link")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    dest = tmp_path / "dest"
    with pytest.raises(DeployError, match="link"):
        archive.unpack(tar_gz((link, b"")), dest)
    assert not (dest / "link").exists() and not (dest / "link").is_symlink()


def test_unpack_refuses_hardlinks_and_directories(tmp_path: Path) -> None:
    hard = tarfile.TarInfo("hard")
    hard.type = tarfile.LNKTYPE
    hard.linkname = "app.py"
    with pytest.raises(DeployError):
        archive.unpack(tar_gz(regular("app.py", b"x"), (hard, b"")), tmp_path / "d1")
    folder = tarfile.TarInfo("folder")
    folder.type = tarfile.DIRTYPE
    with pytest.raises(DeployError):
        archive.unpack(tar_gz((folder, b"")), tmp_path / "d2")


def test_size_limit_raises_deploy_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "weights.bin").write_bytes(os.urandom(8192))
    assert len(archive.pack(tmp_path)) > 4096
    monkeypatch.setattr(archive, "MAX_ARCHIVE_BYTES", 4096)
    with pytest.raises(DeployError, match="4096"):
        archive.pack(tmp_path)
