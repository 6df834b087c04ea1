"""Damaged CIFAR-100 archives and folders, and interrupted downloads, fail with a clear error.

Downloads come from an HTTP server that each test starts on 127.0.0.1; no
test contacts any other host.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import labkit.data
from labkit.data import (
    ARCHIVE_NAME,
    FOLDER_NAME,
    MEMBER_MD5,
    SYNTHETIC_MANIFEST,
    DataError,
    download_cifar100,
    load_cifar100,
    md5_of,
    read_cifar100,
    write_synthetic_cifar100,
)


@pytest.fixture(scope="module")
def small_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic archive of 200 train and 50 test images (about 0.6 MB)."""
    return write_synthetic_cifar100(tmp_path_factory.mktemp("small"), seed=0, train_size=200, test_size=50)


def copy_bytes(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def extracted(tmp_path: Path, archive: Path) -> Path:
    """Extract ``archive`` under ``tmp_path`` and return its cifar-100-python folder."""
    with tarfile.open(archive, "r:gz") as handle:
        handle.extractall(tmp_path, filter="data")
    return tmp_path / FOLDER_NAME


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


# Archives and folders on disk.

def test_missing_folder_names_download(tmp_path):
    with pytest.raises(DataError) as error:
        load_cifar100(tmp_path / "nowhere", download=False)
    message = str(error.value)
    assert "No CIFAR-100 data found" in message
    assert str(tmp_path / "nowhere") in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz" in message
    assert "eb9058c3a382ffc7106e4002c42a8d85" in message


def test_missing_archive_file_named(tmp_path):
    path = tmp_path / ARCHIVE_NAME
    with pytest.raises(DataError, match="not found") as error:
        read_cifar100(path)
    assert f"{path} not found" in str(error.value)


@pytest.mark.parametrize("kept", [0.5, 0.02, 0.0])
def test_truncated_archive_names_file_and_md5(tmp_path, small_archive, kept):
    data = small_archive.read_bytes()
    path = copy_bytes(tmp_path / ARCHIVE_NAME, data[: int(len(data) * kept)])
    with pytest.raises(DataError) as error:
        read_cifar100(tmp_path)
    message = str(error.value)
    assert str(path) in message
    assert "truncated" in message
    assert md5_of(path.read_bytes()) in message
    assert "Delete" in message


def test_corrupt_archive_fails_md5_check(tmp_path, small_archive):
    path = copy_bytes(tmp_path / ARCHIVE_NAME, small_archive.read_bytes())
    flip_byte(path, path.stat().st_size // 2)
    with pytest.raises(DataError) as error:
        read_cifar100(path)
    message = str(error.value)
    assert str(path) in message
    assert "md5" in message
    assert "Delete" in message


def test_load_does_not_download_over_corrupt_archive(tmp_path, small_archive, monkeypatch):
    path = copy_bytes(tmp_path / ARCHIVE_NAME, small_archive.read_bytes())
    flip_byte(path, path.stat().st_size // 2)

    def no_download(*args, **kwargs):
        raise AssertionError("load_cifar100 tried to download although an archive exists")

    monkeypatch.setattr(labkit.data, "download_cifar100", no_download)
    with pytest.raises(DataError, match="md5"):
        load_cifar100(tmp_path, download=True)


def test_extracted_corrupt_member_names_member(tmp_path, small_archive):
    folder = extracted(tmp_path, small_archive)
    manifest = json.loads((folder / SYNTHETIC_MANIFEST).read_text())
    flip_byte(folder / "train", 5000)
    with pytest.raises(DataError) as error:
        read_cifar100(tmp_path)
    message = str(error.value)
    assert f"{folder}: member {FOLDER_NAME}/train failed its md5 check" in message
    assert manifest["md5"]["train"] in message
    assert md5_of((folder / "train").read_bytes()) in message


def test_extracted_truncated_member_names_member(tmp_path, small_archive):
    folder = extracted(tmp_path, small_archive)
    (folder / "test").write_bytes((folder / "test").read_bytes()[:1000])
    with pytest.raises(DataError, match=f"member {FOLDER_NAME}/test failed its md5 check"):
        read_cifar100(folder)


@pytest.mark.parametrize("member", ["train", "test", "meta"])
def test_extracted_missing_member_named(tmp_path, small_archive, member):
    folder = extracted(tmp_path, small_archive)
    (folder / member).unlink()
    with pytest.raises(DataError, match=f"member {FOLDER_NAME}/{member} is missing"):
        read_cifar100(folder)


def test_official_md5_applies_without_manifest(tmp_path, small_archive):
    folder = extracted(tmp_path, small_archive)
    (folder / SYNTHETIC_MANIFEST).unlink()
    with pytest.raises(DataError) as error:
        read_cifar100(folder)
    message = str(error.value)
    assert f"member {FOLDER_NAME}/train failed its md5 check (expected {MEMBER_MD5['train']}" in message
    assert "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz" in message


def test_synthetic_fix_hint_does_not_send_to_download(tmp_path, small_archive):
    folder = extracted(tmp_path, small_archive)
    flip_byte(folder / "meta", 10)
    with pytest.raises(DataError) as error:
        read_cifar100(folder)
    message = str(error.value)
    assert "write_synthetic_cifar100" in message
    assert "toronto" not in message


def test_invalid_manifest_rejected(tmp_path, small_archive):
    folder = extracted(tmp_path, small_archive)
    (folder / SYNTHETIC_MANIFEST).write_text('{"seed": 0, "md5": {"train": "')
    with pytest.raises(DataError, match=f"{SYNTHETIC_MANIFEST} is not a valid manifest"):
        read_cifar100(folder)


def test_manifest_without_member_sums_rejected(tmp_path, small_archive):
    folder = extracted(tmp_path, small_archive)
    manifest = json.loads((folder / SYNTHETIC_MANIFEST).read_text())
    del manifest["md5"]["meta"]
    (folder / SYNTHETIC_MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="must list md5 sums for train, test, meta"):
        read_cifar100(folder)


def test_member_not_pickle_rejected(tmp_path, small_archive):
    folder = extracted(tmp_path, small_archive)
    garbage = b"this is not a pickle"
    (folder / "test").write_bytes(garbage)
    manifest = json.loads((folder / SYNTHETIC_MANIFEST).read_text())
    manifest["md5"]["test"] = md5_of(garbage)
    (folder / SYNTHETIC_MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=f"{FOLDER_NAME}/test passed its md5 check but is not a CIFAR-100 file"):
        read_cifar100(folder)


def test_intact_extracted_folder_reads(tmp_path, small_archive):
    folder = extracted(tmp_path, small_archive)
    arrays = read_cifar100(folder)
    assert arrays.source == "synthetic"
    assert arrays.train_images.shape == (200, 32, 32, 3)


# Downloads from a local server.

class ArchiveServer:
    """Serve one file over HTTP on 127.0.0.1, whole, cut short, or stalled half-way."""

    def __init__(self, payload: bytes, mode: str) -> None:
        self.payload = payload
        self.mode = mode  # "complete", "truncated" or "stall"
        self.half_sent = threading.Event()
        self.release = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/{ARCHIVE_NAME}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/gzip")
                # The full length is announced in every mode, as a server that drops the connection would.
                self.send_header("Content-Length", str(len(owner.payload)))
                self.end_headers()
                if owner.mode == "complete":
                    self.wfile.write(owner.payload)
                    return
                self.wfile.write(owner.payload[: len(owner.payload) // 2])
                self.wfile.flush()
                owner.half_sent.set()
                if owner.mode == "stall":
                    owner.release.wait(timeout=60)
                self.close_connection = True

            def log_message(self, *args: object) -> None:
                pass

        return Handler

    def __enter__(self) -> "ArchiveServer":
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    # A proxy from the environment would otherwise receive the requests meant for the local server.
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")


def test_download_complete_file_is_kept(tmp_path, small_archive):
    payload = small_archive.read_bytes()
    with ArchiveServer(payload, "complete") as server:
        path = download_cifar100(tmp_path, url=server.url, md5=md5_of(payload))
    assert path == tmp_path / ARCHIVE_NAME
    assert path.read_bytes() == payload
    assert read_cifar100(tmp_path).source == "synthetic"
    assert not list(tmp_path.glob(".download-*"))


def test_download_cut_short_leaves_nothing(tmp_path, small_archive):
    payload = small_archive.read_bytes()
    with ArchiveServer(payload, "truncated") as server:
        with pytest.raises(DataError) as error:
            download_cifar100(tmp_path, url=server.url, md5=md5_of(payload))
    assert server.url in str(error.value)
    assert sorted(path.name for path in tmp_path.iterdir()) == []
    with pytest.raises(DataError, match="No CIFAR-100 data found"):
        load_cifar100(tmp_path, download=False)


def test_download_wrong_md5_discarded(tmp_path, small_archive):
    payload = small_archive.read_bytes()
    with ArchiveServer(payload, "complete") as server:
        with pytest.raises(DataError, match="failed its md5 check") as error:
            download_cifar100(tmp_path, url=server.url, md5="0" * 32)
    assert md5_of(payload) in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_killed_download_leaves_no_archive(tmp_path, small_archive):
    payload = small_archive.read_bytes()
    script = "import sys; from labkit.data import download_cifar100; download_cifar100(sys.argv[1], url=sys.argv[2], md5=sys.argv[3])"
    with ArchiveServer(payload, "stall") as server:
        process = subprocess.Popen([sys.executable, "-c", script, str(tmp_path), server.url, md5_of(payload)],
                                   env={**os.environ, "no_proxy": "127.0.0.1"},
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            partial = wait_for_partial_download(tmp_path, server)
            os.kill(process.pid, signal.SIGKILL)
        finally:
            process.wait(timeout=30)
    assert 0 < partial.stat().st_size < len(payload)
    assert not (tmp_path / ARCHIVE_NAME).exists()
    with pytest.raises(DataError, match="No CIFAR-100 data found"):
        load_cifar100(tmp_path, download=False)

    # The leftover staging folder does not stop a later download from completing.
    with ArchiveServer(payload, "complete") as server:
        download_cifar100(tmp_path, url=server.url, md5=md5_of(payload))
    assert (tmp_path / ARCHIVE_NAME).read_bytes() == payload


def wait_for_partial_download(root: Path, server: ArchiveServer, timeout: float = 60.0) -> Path:
    """Return the staged file once the server sent half the payload and some of it reached disk."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        staged = [path for path in root.glob(f".download-*/{ARCHIVE_NAME}") if path.stat().st_size > 0]
        if server.half_sent.is_set() and staged:
            return staged[0]
        time.sleep(0.05)
    raise AssertionError(f"no partial download appeared under {root} within {timeout} s")


def test_synthetic_archive_follows_umask(tmp_path):
    previous = os.umask(0o022)
    try:
        path = write_synthetic_cifar100(tmp_path, train_size=20, test_size=10)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == [ARCHIVE_NAME]
