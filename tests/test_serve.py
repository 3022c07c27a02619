"""`clipkit serve` through FastAPI's TestClient: the three APIs, errors as JSON (never a
traceback), the upload limit, non-images refused, and no file outside the index."""
from __future__ import annotations

import io

import pytest

pytest.importorskip("fastapi", reason="clipkit[serve] is not installed")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402

from clipkit.serve.app import create_app  # noqa: E402


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A folder of 12 rendered colour x shape scenes, its index (shipped model), a secret
    file beside the folder, and a client of the app over that index."""
    from clipkit.data.synth import colour_shape_eval_set
    from clipkit.index import Index

    base = tmp_path_factory.mktemp("site")
    root = base / "photos"
    (root / "sub").mkdir(parents=True)
    es = colour_shape_eval_set(n=81, split="all", image_size=64)  # one scene of each pair
    picked = list(range(0, 81, 7))  # 12 pairs of varied colours and shapes; the first is a red circle
    images = [es.images[j] for j in picked]
    names = []
    for i, (img, label) in enumerate(zip(images, [es.labels[j] for j in picked])):
        name = f"{'sub/' if i % 2 else ''}{es.classnames[label].replace(' ', '_')}_{i}.png"
        img.save(root / name)
        names.append(name)
    (base / "secret.png").write_bytes(png_bytes(images[0]))
    (base / "secret.txt").write_text("top secret")
    index = Index.build(root, base / "idx").index
    app = create_app(index, max_upload_bytes=64 * 1024)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield {"client": client, "root": root, "base": base, "names": names, "images": images,
               "index": index, "app": app}


def test_page_and_static_files(site):
    c = site["client"]
    page = c.get("/")
    assert page.status_code == 200 and 'id="classify-files"' in page.text and "/static/app.js" in page.text
    assert c.get("/static/app.js").headers["content-type"].startswith("text/javascript")
    assert c.get("/static/style.css").status_code == 200
    for bad in ("/static/index.html", "/static/..%2Fapp.py", "/static/%2e%2e%2fapp.py"):
        r = c.get(bad)
        assert r.status_code == 404 and r.json() == {"error": "not found"}
    info = c.get("/api/info").json()
    assert "mnist" in info["class_sets"] and "colour-shape" in info["class_sets"]
    assert info["index"]["images"] == 12 and info["max_upload_bytes"] == 64 * 1024


def test_classify_returns_top5_probabilities(site):
    c = site["client"]
    img = site["images"][0]  # a red circle (the first pair)
    r = c.post("/api/classify", files=[("files", ("one.png", png_bytes(img), "image/png")),
                                        ("files", ("two.png", png_bytes(site["images"][1]), "image/png"))],
               data={"labels": "red circle, blue square\ngreen triangle"})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["name"] for x in results] == ["one.png", "two.png"]
    top = results[0]["top"]
    assert len(top) == 3 and top[0]["label"] == "red circle"
    assert sum(t["probability"] for t in top) == pytest.approx(1.0)
    # a shipped class set: 81 classes, the top 5 shown
    r = c.post("/api/classify", files=[("files", ("one.png", png_bytes(img), "image/png"))],
               data={"classset": "colour-shape"})
    top = r.json()["results"][0]["top"]
    assert len(top) == 5 and top[0]["label"] == "red circle"
    assert [t["probability"] for t in top] == sorted((t["probability"] for t in top), reverse=True)


@pytest.mark.parametrize("data, files, status, message", [
    ({"labels": "cat"}, [], 400, "no image uploaded"),
    ({"labels": ""}, "image", 400, "type at least one label"),
    ({"classset": "nope"}, "image", 400, "unknown class set"),
    ({"labels": "cat"}, [("files", ("x.png", b"GIF89a not really", "image/png"))], 415, "x.png is not an image"),
    ({"labels": "cat"}, [("files", ("notes.txt", b"hello", "text/plain"))], 415, "notes.txt is not an image"),
    ({"labels": "cat, cat, dog"}, "image", 200, None),  # duplicates are merged, not an error
])
def test_classify_errors_are_json_messages(site, data, files, status, message):
    if files == "image":
        files = [("files", ("a.png", png_bytes(site["images"][0]), "image/png"))]
    r = site["client"].post("/api/classify", data=data, files=files or None)
    assert r.status_code == status, r.text
    if message:
        assert message in r.json()["error"] and "Traceback" not in r.text


def test_upload_limit_is_enforced_before_reading(site):
    c = site["client"]
    big = b"\x89PNG" + b"\0" * (80 * 1024)
    r = c.post("/api/classify", files=[("files", ("big.png", big, "image/png"))], data={"labels": "x"})
    assert r.status_code == 413 and r.json()["error"] == "upload too large: the limit is 64 KB per request"
    # a body without Content-Length (chunked) is counted as it arrives
    def chunks():
        for _ in range(10):
            yield b"x" * 10_000

    r = c.post("/api/search", content=chunks(), headers={"content-type": "application/octet-stream"})
    assert r.status_code == 413


def test_generate_sorts_by_clip_score(site):
    r = site["client"].post("/api/generate", data={"caption": "a red circle", "n": "4", "seed": "1"})
    assert r.status_code == 200, r.text
    images = r.json()["images"]
    assert len(images) == 4 and all(i["src"].startswith("data:image/png;base64,") for i in images)
    scores = [i["score"] for i in images]
    assert scores == sorted(scores, reverse=True) and sorted(i["sample"] for i in images) == [0, 1, 2, 3]


@pytest.mark.parametrize("data, message", [
    ({"caption": "  ", "n": "4"}, "type a caption"),
    ({"caption": "a red circle", "n": "0"}, "n must lie in [1, 16]"),
    ({"caption": "a red circle", "n": "99"}, "n must lie in [1, 16]"),
    ({"caption": "a red circle", "n": "many"}, "bad request: n:"),
])
def test_generate_errors(site, data, message):
    r = site["client"].post("/api/generate", data=data)
    assert r.status_code == 400 and message in r.json()["error"]


def test_search_by_text_and_by_image(site):
    c, index = site["client"], site["index"]
    r = c.post("/api/search", data={"text": "a red circle", "k": "3"})
    assert r.status_code == 200, r.text
    hits = r.json()["hits"]
    assert [h["path"] for h in hits] == [h.path for h in index.search("a red circle", k=3)]
    thumb = c.get(hits[0]["src"])
    assert thumb.status_code == 200 and thumb.content == (site["root"] / hits[0]["path"]).read_bytes()
    name = site["names"][3]
    r = c.post("/api/search", data={"k": "2"},
               files=[("image", ("q.png", (site["root"] / name).read_bytes(), "image/png"))])
    assert r.json()["hits"][0]["path"] == name
    for data, message in (({"k": "3"}, "type a text query or choose a query image"),
                          ({"text": "x", "k": "0"}, "k must lie in [1, 100]")):
        r = c.post("/api/search", data=data)
        assert r.status_code == 400 and message in r.json()["error"]


def test_search_without_an_index_says_how_to_start_one():
    app = create_app()
    with TestClient(app) as c:
        r = c.post("/api/search", data={"text": "a red circle"})
        assert r.status_code == 400 and "clipkit serve --index INDEX" in r.json()["error"]
        assert c.get("/files/anything.png").status_code == 400
        assert c.get("/api/info").json()["index"] is None


@pytest.mark.parametrize("path", [
    "../secret.png", "..%2Fsecret.png", "%2e%2e/secret.png", "%2E%2E%2Fsecret.txt", "sub/../../secret.png",
    "sub/%2e%2e/%2e%2e/secret.png", "%2Fetc%2Fpasswd", "/etc/passwd", "//etc/passwd", "..%5Csecret.png",
    "..\\secret.png", "%252e%252e%252fsecret.png", "secret.png", "nothere.png", "sub", "",
])
def test_no_file_outside_the_index_is_served(site, path):
    r = site["client"].get("/files/" + path)
    assert r.status_code in (400, 404) and b"top secret" not in r.content
    assert r.headers["content-type"].startswith("application/json")
    # and the raw, un-normalised request line too (clients may clean `..` before sending)
    import asyncio

    status = asyncio.run(_raw_get(site["app"], "/files/" + path))
    assert status in (400, 404)


async def _raw_get(app, raw_path: str) -> int:
    """The app called with exactly this path (no client-side normalisation)."""
    from urllib.parse import unquote

    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(msg):
        sent.append(msg)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": unquote(raw_path), "raw_path": raw_path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"testserver")], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}
    await app(scope, receive, send)
    return next(m["status"] for m in sent if m["type"] == "http.response.start")


def test_an_internal_error_shows_no_traceback(site, monkeypatch):
    backend = site["app"].state.backend

    def boom(*a, **k):
        raise RuntimeError("secret internals /home/user/x.py line 3")

    monkeypatch.setattr(backend, "search", boom)
    r = site["client"].post("/api/search", data={"text": "a red circle"})
    assert r.status_code == 500
    assert r.json() == {"error": "internal error (RuntimeError); the server log has the details"}


def test_serve_command_binds_localhost_by_default():
    from clipkit.cli import build_parser

    args = build_parser().parse_args(["serve"])
    assert args.host == "127.0.0.1" and args.port == 8000 and args.index is None


def test_serve_command_takes_the_shared_flags(monkeypatch):
    import os

    import uvicorn

    from clipkit.cli import build_parser, main
    from clipkit.serve import app as app_module

    args = build_parser().parse_args(["serve"])
    assert (args.model, args.checkpoint, args.device, args.no_cache) == (None, None, "cpu", False)
    made, served = {}, {}
    monkeypatch.setattr(app_module, "create_app", lambda index, **kw: made.update(kw) or "app")
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.update(no_cache=os.environ.get("CLIPKIT_NO_CACHE")))
    monkeypatch.delenv("CLIPKIT_NO_CACHE", raising=False)
    assert main(["serve", "--model", "ViT-B/32", "--checkpoint", "w.safetensors", "--device", "cpu",
                 "--no-cache"]) == 0
    assert made["model"] == "w.safetensors" and made["device"] == "cpu"  # --checkpoint overrides --model
    assert served == {"no_cache": "1"} and "CLIPKIT_NO_CACHE" not in os.environ  # for the server's life only
