"""Tests of medseg_tf.download against a local HTTP server on 127.0.0.1 (no internet)."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import re
import shutil
import socket
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from medseg_tf import download as dl
from medseg_tf.errors import DownloadError, OverwriteError

TASK = "Task04_Hippocampus"


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    """urllib honours *_proxy variables; make sure 127.0.0.1 is contacted directly."""
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


def _fake_task_files(seed: int = 0) -> dict[str, bytes]:
    """A tiny MSD-like task: dataset.json and a few incompressible 'NIfTI' files (~200 KB in all)."""
    rng = np.random.default_rng(seed)
    meta = {"name": "Hippocampus", "labels": {"0": "background", "1": "Anterior", "2": "Posterior"},
            "training": [{"image": "./imagesTr/hippocampus_001.nii.gz",
                          "label": "./labelsTr/hippocampus_001.nii.gz"}]}
    return {
        "dataset.json": json.dumps(meta).encode(),
        "imagesTr/hippocampus_001.nii.gz": rng.bytes(120_000),
        "labelsTr/hippocampus_001.nii.gz": rng.bytes(80_000),
    }


def _make_tar(path: Path, files: dict[str, bytes], top: str = TASK, mode: str = "w", extra=()) -> Path:
    """Write ``files`` under ``top/`` into a tar; ``extra`` is a list of raw TarInfo (links, evil names)."""
    with tarfile.open(path, mode) as tf:
        for rel, data in files.items():
            info = tarfile.TarInfo(f"{top}/{rel}" if top else rel)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for info, data in extra:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _tarinfo(name: str, *, data: bytes | None = None, link: str | None = None, kind=tarfile.REGTYPE):
    info = tarfile.TarInfo(name)
    info.type = kind
    if link is not None:
        info.linkname = link
    if data is not None:
        info.size = len(data)
    return info, data


class _Server:
    """A threaded HTTP server on 127.0.0.1 serving in-memory files, with Range support.

    ``mode``: ``"normal"``; ``"drop"`` (the next response announces the full length,
    sends half, then closes the connection); ``"ignore_range"`` (always 200 + whole file).
    ``requests`` records ``(path, Range header, status)`` of every request.
    """

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.mode = "normal"
        self.requests: list[tuple[str, str | None, int]] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                data = server.files.get(self.path)
                rng = self.headers.get("Range")
                if data is None:
                    server.requests.append((self.path, rng, 404))
                    self.send_error(404)
                    return
                start = 0
                match = re.fullmatch(r"bytes=(\d+)-", rng or "")
                if match and server.mode != "ignore_range":
                    start = int(match.group(1))
                    if start >= len(data):
                        server.requests.append((self.path, rng, 416))
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                    status = 206
                else:
                    self.send_response(200)
                    status = 200
                server.requests.append((self.path, rng, status))
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if server.mode == "drop":
                    server.mode = "normal"  # drop once
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}{path}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = _Server()
    yield srv
    srv.close()


@pytest.fixture
def task_archive(tmp_path):
    """(archive path, its md5, the files inside) of a fake Task04 tarball built outside the out dir."""
    files = _fake_task_files()
    (tmp_path / "src").mkdir()
    archive = _make_tar(tmp_path / "src" / f"{TASK}.tar", files)
    return archive, hashlib.md5(archive.read_bytes()).hexdigest(), files


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _assert_no_leftovers(out: Path):
    """No temporary extraction folders and no .part files remain in ``out``."""
    names = [p.name for p in out.iterdir()] if out.exists() else []
    assert not [n for n in names if ".extracting-" in n or n.endswith(".part")], names


# --------------------------------------------------------------------------- names and checksums


def test_task_table_and_names():
    assert len(dl.MSD_TASKS) == 10
    for name, entry in dl.MSD_TASKS.items():
        assert re.fullmatch(r"Task\d\d_\w+", name)
        assert entry["url"] == f"https://msd-for-monai.s3-us-west-2.amazonaws.com/{name}.tar"
        assert re.fullmatch(r"[0-9a-f]{32}", entry["md5"])
    for spelling in ("Task04_Hippocampus", "task04_hippocampus", "Task04", "TASK4", "hippocampus", "HippoCampus"):
        assert dl.resolve_task(spelling) == TASK
    assert dl.resolve_task("hepatic_vessel") == "Task08_HepaticVessel"
    assert dl.resolve_task("task10") == "Task10_Colon"
    with pytest.raises(ValueError, match="is not an MSD task"):
        dl.resolve_task("Task11")
    with pytest.raises(ValueError, match="md5"):
        dl.download_task("hippocampus", "/nonexistent", md5="not-a-checksum")


def test_md5sum_matches_hashlib(tmp_path):
    data = np.random.default_rng(1).bytes(3_000_001)
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert dl.md5sum(path, chunk_size=65_536) == hashlib.md5(data).hexdigest()


# --------------------------------------------------------------------------- download_task


def test_full_download_checksum_and_extraction(server, task_archive, tmp_path):
    archive, md5, files = task_archive
    server.files["/t4.tar"] = archive.read_bytes()
    out = tmp_path / "out"
    got = dl.download_task("hippocampus", out, url=server.url("/t4.tar"), md5=md5, progress=False)
    assert got == out / TASK
    assert _tree(got) == files
    assert dl.md5sum(out / f"{TASK}.tar") == md5  # the verified archive is kept under its final name
    assert [r[1:] for r in server.requests] == [(None, 200)]
    _assert_no_leftovers(out)
    # A second call finds the folder and does not contact the server.
    assert dl.download_task("Task04", out, url=server.url("/t4.tar"), md5=md5, progress=False) == got
    assert len(server.requests) == 1


def test_resume_after_interrupted_download(server, task_archive, tmp_path):
    archive, md5, files = task_archive
    data = archive.read_bytes()
    server.files["/t4.tar"] = data
    server.mode = "drop"
    out = tmp_path / "out"
    with pytest.raises(DownloadError, match="resume"):
        dl.download_task(TASK, out, url=server.url("/t4.tar"), md5=md5, progress=False)
    part = out / f"{TASK}.tar.part"
    kept = part.read_bytes()
    assert 0 < len(kept) < len(data) and data.startswith(kept)
    assert not (out / f"{TASK}.tar").exists() and not (out / TASK).exists()  # never looks complete

    got = dl.download_task(TASK, out, url=server.url("/t4.tar"), md5=md5, progress=True)  # bar starts at kept
    assert server.requests[-1][1:] == (f"bytes={len(kept)}-", 206)  # only the rest was requested
    assert dl.md5sum(out / f"{TASK}.tar") == md5
    assert _tree(got) == files
    _assert_no_leftovers(out)


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    data = np.random.default_rng(2).bytes(50_000)
    server.files["/blob"] = data
    server.mode = "ignore_range"
    dest = tmp_path / "blob.bin"
    Path(str(dest) + ".part").write_bytes(b"garbage that must not survive")
    got = dl.fetch(server.url("/blob"), dest, md5=hashlib.md5(data).hexdigest(), progress=False)
    assert server.requests == [("/blob", "bytes=29-", 200)]
    assert got.read_bytes() == data
    assert not Path(str(dest) + ".part").exists()


def test_fetch_complete_part_is_finalised_and_overlong_part_restarts(server, tmp_path):
    data = np.random.default_rng(3).bytes(10_000)
    server.files["/blob"] = data
    # A .part that is already complete (crash before the rename): 416 with the same size -> done.
    dest = tmp_path / "a.bin"
    Path(str(dest) + ".part").write_bytes(data)
    assert dl.fetch(server.url("/blob"), dest, progress=False).read_bytes() == data
    # A .part longer than the file cannot be resumed: restart from byte 0.
    dest = tmp_path / "b.bin"
    Path(str(dest) + ".part").write_bytes(data + b"extra")
    assert dl.fetch(server.url("/blob"), dest, progress=False).read_bytes() == data
    assert [r[2] for r in server.requests] == [416, 416, 200]


def test_checksum_mismatch_extracts_nothing(server, task_archive, tmp_path):
    archive, _, _ = task_archive
    server.files["/t4.tar"] = archive.read_bytes()
    out = tmp_path / "out"
    with pytest.raises(DownloadError, match="checksum mismatch"):
        dl.download_task(TASK, out, url=server.url("/t4.tar"), md5="0" * 32, progress=False)
    assert sorted(p.name for p in out.iterdir()) == []  # no archive, no .part, no task folder


def test_user_provided_archive_is_used_without_network(task_archive, tmp_path):
    archive, md5, files = task_archive
    out = tmp_path / "out"
    out.mkdir()
    shutil.copy(archive, out / f"{TASK}.tar")
    offline_url = f"http://127.0.0.1:{_closed_port()}/x.tar"
    # Wrong checksum: error, and the user's file is left in place.
    with pytest.raises(DownloadError, match="left in place"):
        dl.download_task(TASK, out, url=offline_url, md5="f" * 32, progress=False)
    assert (out / f"{TASK}.tar").is_file() and not (out / TASK).exists()
    got = dl.download_task(TASK, out, url=offline_url, md5=md5, progress=False)
    assert _tree(got) == files
    _assert_no_leftovers(out)


def test_user_provided_zip_without_top_folder(tmp_path):
    files = _fake_task_files()
    out = tmp_path / "out"
    out.mkdir()
    with zipfile.ZipFile(out / f"{TASK}.zip", "w") as zf:
        for rel, data in files.items():
            zf.writestr(rel, data)
        zf.writestr("__MACOSX/._dataset.json", b"mac junk")
    got = dl.download_task("hippocampus", out, url=f"http://127.0.0.1:{_closed_port()}/", progress=False)
    assert _tree(got) == files  # junk skipped, files at the archive root moved under out/Task04_Hippocampus


def test_offline_fails_fast_with_helpful_message(tmp_path):
    out = tmp_path / "out"
    url = f"http://127.0.0.1:{_closed_port()}/{TASK}.tar"
    start = time.perf_counter()
    with pytest.raises(DownloadError) as excinfo:
        dl.download_task("hippocampus", out, url=url, progress=False, timeout=2.0)
    assert time.perf_counter() - start < 5.0
    message = str(excinfo.value)
    assert str(out / f"{TASK}.tar") in message and str(out / TASK) in message
    assert "could not download" in message
    assert not out.exists() or list(out.iterdir()) == []


def test_timeout_when_server_never_answers(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:  # accepts, never replies
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/x.tar"
        start = time.perf_counter()
        with pytest.raises(DownloadError, match="could not download"):
            dl.fetch(url, tmp_path / "x.tar", progress=False, timeout=0.5)
        assert time.perf_counter() - start < 5.0


def test_existing_task_folder_is_untouched(tmp_path):
    out = tmp_path / "out"
    (out / TASK).mkdir(parents=True)
    (out / TASK / "mine.txt").write_text("user data")
    got = dl.download_task("Task04", out, url=f"http://127.0.0.1:{_closed_port()}/x.tar", progress=False)
    assert got == out / TASK
    assert _tree(out) == {f"{TASK}/mine.txt": b"user data"}


# --------------------------------------------------------------------------- unsafe archives


def _evil_members(outside: Path):
    """(name of the refused member, extra tar members) for each kind of escape."""
    return {
        "dotdot": (f"{TASK}/../evil", [_tarinfo(f"{TASK}/../evil", data=b"x")]),
        "absolute": (str(outside / "evil"), [_tarinfo(str(outside / "evil"), data=b"x")]),
        "symlink_abs": (f"{TASK}/link", [_tarinfo(f"{TASK}/link", link=str(outside), kind=tarfile.SYMTYPE),
                                         _tarinfo(f"{TASK}/link/evil", data=b"x")]),
        "symlink_rel": (f"{TASK}/link", [_tarinfo(f"{TASK}/link", link="../../outside", kind=tarfile.SYMTYPE),
                                         _tarinfo(f"{TASK}/link/evil", data=b"x")]),
        "hardlink": (f"{TASK}/hard", [_tarinfo(f"{TASK}/hard", link="../outside/secret", kind=tarfile.LNKTYPE)]),
        # Each link looks harmless alone (lexically l1 -> l2/.. is the root); once l2 -> . exists,
        # l1 really resolves to the parent of the extraction folder.
        "symlink_chain": ("l1/evil", [_tarinfo("l1", link="l2/..", kind=tarfile.SYMTYPE),
                                      _tarinfo("l2", link=".", kind=tarfile.SYMTYPE),
                                      _tarinfo("l1/evil", data=b"x")]),
        # Same links without a member written through them: the final sweep refuses l1.
        "symlink_chain_sweep": ("l1", [_tarinfo("l1", link="l2/..", kind=tarfile.SYMTYPE),
                                       _tarinfo("l2", link=".", kind=tarfile.SYMTYPE)]),
    }


@pytest.mark.parametrize(
    "case", ["dotdot", "absolute", "symlink_abs", "symlink_rel", "hardlink", "symlink_chain", "symlink_chain_sweep"]
)
def test_path_traversal_is_refused(tmp_path, case):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    out = tmp_path / "work" / "out"
    out.mkdir(parents=True)
    refused, extra = _evil_members(outside)[case]
    archive = _make_tar(tmp_path / "evil.tar", _fake_task_files(), extra=extra)
    before = {p for p in tmp_path.rglob("*")}
    with pytest.raises(DownloadError) as excinfo:
        dl.extract_archive(archive, out)
    assert repr(refused) in str(excinfo.value)
    assert {p for p in tmp_path.rglob("*")} == before  # nothing written anywhere, temp folder removed
    assert (outside / "secret").read_bytes() == b"secret"


def test_download_task_refuses_traversal_and_zip_traversal(server, tmp_path):
    archive = _make_tar(tmp_path / "evil.tar", _fake_task_files(), extra=[_tarinfo(f"{TASK}/../evil", data=b"x")])
    server.files["/evil.tar"] = archive.read_bytes()
    out = tmp_path / "out"
    with pytest.raises(DownloadError, match=re.escape(repr(f"{TASK}/../evil"))):
        dl.download_task(TASK, out, url=server.url("/evil.tar"), md5=dl.md5sum(archive), progress=False)
    assert not (tmp_path / "evil").exists() and not (out / TASK).exists()
    _assert_no_leftovers(out)

    zpath = tmp_path / "evil.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("ok.txt", b"ok")
        zf.writestr("../evil_zip", b"x")
    with pytest.raises(DownloadError, match="evil_zip"):
        dl.extract_archive(zpath, out)
    assert not (tmp_path / "evil_zip").exists() and not (out / "ok.txt").exists()


# --------------------------------------------------------------------------- extract_archive


def test_extract_archive_formats_inner_links_and_no_overwrite(tmp_path):
    files = _fake_task_files()
    inner_link = _tarinfo(f"{TASK}/latest.nii.gz", link="imagesTr/hippocampus_001.nii.gz", kind=tarfile.SYMTYPE)
    tgz = _make_tar(tmp_path / "a.tar.gz", files, mode="w:gz", extra=[inner_link])
    got = dl.extract_archive(tgz, tmp_path / "x")
    assert got == tmp_path / "x" / TASK
    assert (got / "latest.nii.gz").is_symlink()  # links that stay inside are allowed
    assert (got / "latest.nii.gz").read_bytes() == files["imagesTr/hippocampus_001.nii.gz"]
    _assert_no_leftovers(tmp_path / "x")

    # Extracting again must not overwrite the folder now present.
    (got / "dataset.json").write_text("edited by the user")
    with pytest.raises(OverwriteError):
        dl.extract_archive(tgz, tmp_path / "x")
    assert (got / "dataset.json").read_text() == "edited by the user"
    _assert_no_leftovers(tmp_path / "x")

    zpath = tmp_path / "flat.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        zf.writestr("a.txt", b"a")
        zf.writestr("sub/b.txt", b"b")
    assert dl.extract_archive(zpath, tmp_path / "z") == tmp_path / "z"  # several top-level entries
    assert _tree(tmp_path / "z") == {"a.txt": b"a", "sub/b.txt": b"b"}

    not_archive = tmp_path / "plain.tar"
    not_archive.write_bytes(b"this is not an archive")
    with pytest.raises(DownloadError, match="not a tar"):
        dl.extract_archive(not_archive, tmp_path / "n")
    _assert_no_leftovers(tmp_path / "n")


def test_download_module_does_not_import_tensorflow():
    import subprocess
    import sys

    code = "import sys, medseg_tf.download; print('tensorflow' in sys.modules or 'keras' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(dl.__file__).resolve().parent.parent)
    assert result.stdout.strip() == "False"
