"""Downloads against a local HTTP server: checksum, atomic rename, Range resume, servers
that ignore Range, corrupted bytes, no network, and `clipkit.load(name)` end to end."""
from __future__ import annotations

import hashlib
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

import clipkit
from clipkit import checkpoints as ck
from clipkit.models import create_model


class _Handler(BaseHTTPRequestHandler):
    """Serves `server.payload` at any path. Modes (server.mode):
    normal       honours `Range: bytes=N-` with 206 (416 when N is past the end);
    corrupt      sends the payload with some bytes flipped;
    cut          the first response announces the full length, sends half, hangs up;
                 later responses are normal;
    ignore-range always answers 200 with the whole payload.
    """

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        server = self.server
        server.requests.append({"path": self.path, "range": self.headers.get("Range")})
        data = server.payload
        if server.mode == "corrupt":
            data = bytes(b ^ 0xFF if i % 97 == 0 else b for i, b in enumerate(data))
        start = 0
        rng = self.headers.get("Range")
        if rng and server.mode != "ignore-range":
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        if server.mode == "cut" and not server.cut_done:
            server.cut_done = True
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.payload = b""
    httpd.mode = "normal"
    httpd.cut_done = False
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def _serve(server, payload: bytes, name: str = "model.pt"):
    server.payload = payload
    digest = hashlib.sha256(payload).hexdigest()
    host, port = server.server_address
    return f"http://{host}:{port}/clip/models/{digest}/{name}", digest


@pytest.fixture
def payload():
    return torch.randint(0, 256, (300_000,), generator=torch.Generator().manual_seed(0),
                         dtype=torch.uint8).numpy().tobytes()


def test_download_verifies_and_renames_atomically(tmp_path, server, payload):
    url, digest = _serve(server, payload)
    assert ck.sha256_from_url(url) == digest
    path = ck.download(url, digest, tmp_path, progress=False)
    assert path == tmp_path / "model.pt" and path.read_bytes() == payload
    assert not (tmp_path / "model.pt.part").exists()
    # A second call finds the verified file and does not touch the network.
    server.requests.clear()
    assert ck.download(url, digest, tmp_path, progress=False) == path
    assert server.requests == []


def test_corrupted_download_is_deleted_and_reported(tmp_path, server, payload):
    url, digest = _serve(server, payload)
    server.mode = "corrupt"
    with pytest.raises(ck.ChecksumError) as info:
        ck.download(url, digest, tmp_path, progress=False)
    got = hashlib.sha256(bytes(b ^ 0xFF if i % 97 == 0 else b for i, b in enumerate(payload))).hexdigest()
    message = str(info.value)
    assert f"expected SHA-256 {digest}" in message and f"got {got}" in message
    assert list(tmp_path.iterdir()) == []  # neither the final file nor a .part is left


def test_cut_connection_keeps_partial_file_and_next_call_resumes(tmp_path, server, payload):
    url, digest = _serve(server, payload)
    server.mode = "cut"
    part = tmp_path / "model.pt.part"
    with pytest.raises(ck.DownloadError) as info:
        ck.download(url, digest, tmp_path, progress=False, retries=0)
    assert part.is_file() and part.stat().st_size == len(payload) // 2
    assert str(part) in str(info.value)
    assert not (tmp_path / "model.pt").exists()

    path = ck.download(url, digest, tmp_path, progress=False)
    assert path.read_bytes() == payload and not part.exists()
    assert server.requests[-1]["range"] == f"bytes={len(payload) // 2}-"


def test_cut_connection_is_resumed_within_one_call(tmp_path, server, payload):
    url, digest = _serve(server, payload)
    server.mode = "cut"
    path = ck.download(url, digest, tmp_path, progress=False, retries=2)
    assert path.read_bytes() == payload
    assert [r["range"] for r in server.requests] == [None, f"bytes={len(payload) // 2}-"]


def test_server_ignoring_range_restarts_from_zero(tmp_path, server, payload):
    url, digest = _serve(server, payload)
    server.mode = "ignore-range"
    (tmp_path / "model.pt.part").write_bytes(b"\0" * 1000)  # stale bytes from an earlier attempt
    path = ck.download(url, digest, tmp_path, progress=False)
    assert path.read_bytes() == payload
    assert server.requests[0]["range"] == "bytes=1000-"


def test_complete_part_file_is_finished_without_refetching(tmp_path, server, payload):
    url, digest = _serve(server, payload)
    (tmp_path / "model.pt.part").write_bytes(payload)  # interrupted just before the rename
    path = ck.download(url, digest, tmp_path, progress=False)
    assert path.read_bytes() == payload
    assert len(server.requests) == 1  # answered 416: nothing left to send


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_offline_error_says_which_url_and_where_to_put_it(tmp_path):
    digest = "0" * 64
    url = f"http://127.0.0.1:{_closed_port()}/clip/models/{digest}/ViT-B-32.pt"
    with pytest.raises(ck.DownloadError) as info:
        ck.download(url, digest, tmp_path, progress=False, timeout=5)
    message = str(info.value)
    assert url in message and str(tmp_path / "ViT-B-32.pt") in message and digest in message


# ---------------------------------------------------------------------------
# clipkit.load by name
# ---------------------------------------------------------------------------


@pytest.fixture
def tiny_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = create_model("tiny-vit").eval()
    path = tmp_path / "src" / "tiny.pt"
    path.parent.mkdir()
    torch.save(model.state_dict(), path)
    return model, path.read_bytes()


def _same_outputs(a, b):
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(a.encode_image(images), b.encode_image(images), atol=0, rtol=0)


def test_load_by_name_downloads_into_the_cache(tmp_path, server, monkeypatch, tiny_checkpoint):
    model, data = tiny_checkpoint
    url, _ = _serve(server, data, name="tiny-vit.pt")
    cache = tmp_path / "cache"
    monkeypatch.setenv("CLIPKIT_CACHE", str(cache))
    monkeypatch.setitem(ck.OPENAI_URLS, "tiny-vit", url)
    loaded, _ = clipkit.load("tiny-vit")
    assert (cache / "tiny-vit.pt").read_bytes() == data
    _same_outputs(loaded, model)

    # Cached and verified: loading again asks the server nothing.
    server.requests.clear()
    loaded, _ = clipkit.load("tiny-vit", download=False)
    _same_outputs(loaded, model)
    assert server.requests == []

    # cache_dir= puts the download elsewhere.
    loaded, _ = clipkit.load("tiny-vit", cache_dir=tmp_path / "elsewhere")
    assert (tmp_path / "elsewhere" / "tiny-vit.pt").read_bytes() == data
    assert len(server.requests) == 1


def test_load_by_name_offline_names_the_cache_path(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("CLIPKIT_CACHE", str(cache))
    url = ck.OPENAI_URLS["ViT-B/32"].replace("https://openaipublic.azureedge.net",
                                              f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setitem(ck.OPENAI_URLS, "ViT-B/32", url)
    with pytest.raises(ck.DownloadError) as info:
        clipkit.load("ViT-B/32")
    assert url in str(info.value) and str(cache / "ViT-B-32.pt") in str(info.value)
    with pytest.raises(FileNotFoundError) as info:
        clipkit.load("ViT-B/32", download=False)
    assert url in str(info.value) and str(cache / "ViT-B-32.pt") in str(info.value)


def test_corrupt_cached_file_is_replaced(tmp_path, server, monkeypatch, tiny_checkpoint):
    model, data = tiny_checkpoint
    url, _ = _serve(server, data, name="tiny-vit.pt")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "tiny-vit.pt").write_bytes(b"truncated")
    monkeypatch.setenv("CLIPKIT_CACHE", str(cache))
    monkeypatch.setitem(ck.OPENAI_URLS, "tiny-vit", url)
    with pytest.raises(ck.ChecksumError, match="published SHA-256"):
        clipkit.load("tiny-vit", download=False)
    loaded, _ = clipkit.load("tiny-vit")
    _same_outputs(loaded, model)
    assert (cache / "tiny-vit.pt").read_bytes() == data
