"""The local web app: classify, generate and search views over one small JSON API.

    from clipkit.serve.app import create_app
    app = create_app(index="photos.idx")      # then: uvicorn.run(app, host="127.0.0.1")

Routes:

- ``GET /`` the page, ``GET /static/<name>`` its script and style (a fixed list of files);
- ``GET /api/info`` the shipped class sets, the index's size, the upload limit;
- ``POST /api/classify`` (multipart: ``files``, ``labels`` or ``classset``) -> top 5 per image;
- ``POST /api/generate`` (``caption``, ``n``, ``seed``) -> n images sorted by CLIP score;
- ``POST /api/search`` (``text`` or an ``image`` file, ``k``) -> hits with thumbnail URLs;
- ``GET /files/<path>`` an indexed image, and nothing else.

Safety: request bodies above `max_upload_bytes` are refused (413) before the app reads
them; uploads must decode as images (415 otherwise); every error is JSON ``{"error": ...}``
shown on the page, never a stack trace (tracebacks go to the server's log); ``/files``
serves only paths listed in the index and resolving inside its root, so ``../``, absolute
paths and their encoded forms are 404. Models load on first use; one lock serialises the
model work (the machine's cores go to torch, not to concurrent requests).
"""
from __future__ import annotations

import base64
import io
import logging
import threading
from pathlib import Path

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

STATIC = Path(__file__).parent / "static"
STATIC_FILES = {"app.js": "text/javascript", "style.css": "text/css"}
MAX_UPLOAD_BYTES = 8 * 1024 * 1024
MAX_FILES = 32
MAX_GENERATE = 16
SHAPE_SET = "colour-shape"  # the shipped model's own world: the 81 colour x shape names

log = logging.getLogger("clipkit.serve")


class UserError(Exception):
    """A bad request, told to the user as it is."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message, self.status = message, status


class LimitBody:
    """ASGI middleware: a request body over `max_bytes` gets 413 before the app reads any of it.

    The declared Content-Length is checked first; a body sent without one (chunked) is
    read up to the limit here and handed on, so the limit holds either way."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self._refuse(scope, send)
        messages, seen = [], 0
        while True:
            msg = await receive()
            messages.append(msg)
            if msg["type"] != "http.request":
                break
            seen += len(msg.get("body", b""))
            if seen > self.max_bytes:
                return await self._refuse(scope, send)
            if not msg.get("more_body"):
                break

        async def replay():
            return messages.pop(0) if messages else await receive()

        return await self.app(scope, replay, send)

    async def _refuse(self, scope, send):
        limit = f"{self.max_bytes / 2**20:.1f} MB" if self.max_bytes >= 2**20 else f"{self.max_bytes // 1024} KB"
        await JSONResponse({"error": f"upload too large: the limit is {limit} per request"},
                           status_code=413)(scope, None, send)


def _read_image(data: bytes, name: str):
    """Upload bytes -> an RGB PIL image; UserError 415 for anything PIL cannot decode."""
    import warnings

    from PIL import Image

    from clipkit.transforms import to_rgb

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # no bombs from the web
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                return to_rgb(img)
    except Exception as e:  # noqa: BLE001 - any decoder failure means "not an image we accept"
        raise UserError(f"{name or 'upload'} is not an image clipkit can read ({type(e).__name__})", 415) from e


def _png_data_url(img) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _parse_labels(text: str) -> list[str]:
    seen: dict[str, None] = {}
    for part in text.replace("\n", ",").split(","):
        name = part.strip()
        if name:
            seen.setdefault(name, None)
    return list(seen)


class Backend:
    """The models behind the views, loaded on first use, used under one lock."""

    def __init__(self, index=None, model=None, generator=None, device: str = "cpu"):
        self.index_spec, self.model_spec, self.generator_spec = index, model, generator
        self.device = device
        self.lock = threading.Lock()
        self._clip = self._gen = self._index = None

    def index(self):
        if self.index_spec is None:
            raise UserError("no index loaded: start the server with `clipkit serve --index INDEX`")
        if self._index is None:
            from clipkit.index import Index

            self._index = self.index_spec if isinstance(self.index_spec, Index) else Index(self.index_spec)
        return self._index

    def clip(self):
        if self._clip is None:
            from clipkit.encode import resolve_model

            self._clip = resolve_model(self.model_spec, device=self.device)
        return self._clip

    def generator(self):
        if self._gen is None:
            from clipkit.generator.generator import Generator, load_default

            spec = self.generator_spec
            self._gen = load_default() if spec is None else spec if isinstance(spec, Generator) else Generator.load(spec)
        return self._gen

    def class_sets(self) -> list[str]:
        from clipkit.templates import available_class_sets

        return [SHAPE_SET, *available_class_sets()]

    def classify(self, images: list, labels: list[str], classset: str) -> list[list[tuple[str, float]]]:
        from clipkit.zeroshot import zero_shot

        if classset == SHAPE_SET:
            from clipkit.data.synth import SHAPE_TEMPLATES, classnames_colour_shape

            classes, templates = classnames_colour_shape(), list(SHAPE_TEMPLATES)
        elif classset:
            if classset not in self.class_sets():
                raise UserError(f"unknown class set {classset!r}; choose one of {', '.join(self.class_sets())}")
            classes, templates = classset, None
        elif labels:
            classes, templates = labels, None
        else:
            raise UserError("type at least one label, or pick a class set")
        with self.lock:
            clf = zero_shot(classes, templates, model=self.clip(), progress=False)
            result = clf.classify_files(images, k=5)
        return [top for _, top in result.items]

    def generate(self, caption: str, n: int, seed: int):
        from clipkit.rerank import Reranker

        with self.lock:
            gen = self.generator()
            reranker = Reranker(self.clip(), tokenizer=gen.tokenizer)
            return gen.generate(caption, n=n, seed=seed, rerank=reranker)

    def search(self, text: str | None, image, k: int):
        with self.lock:
            return self.index().search(text, k, image=image)


def create_app(index=None, *, model=None, generator=None, device: str = "cpu",
               max_upload_bytes: int = MAX_UPLOAD_BYTES) -> FastAPI:
    """The app. `index`: an index folder (or `clipkit.Index`) for the search view; `model`:
    CLIP for classify and generate (default: the shipped model); `generator`: weights for
    the generate view (default: the shipped generator)."""
    app = FastAPI(title="clipkit", docs_url=None, redoc_url=None, openapi_url=None)
    backend = Backend(index, model, generator, device)
    app.state.backend = backend
    app.add_middleware(LimitBody, max_bytes=max_upload_bytes)

    @app.exception_handler(UserError)
    async def _user_error(request: Request, exc: UserError):
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        parts = []
        for err in exc.errors():
            where = ".".join(str(x) for x in err.get("loc", ())[1:]) or "request"
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
        return JSONResponse({"error": "bad request: " + "; ".join(parts)}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        message = "not found" if exc.status_code == 404 else str(exc.detail)
        return JSONResponse({"error": message}, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception):
        log.exception("error in %s %s", request.method, request.url.path)  # the traceback stays here
        return JSONResponse({"error": f"internal error ({type(exc).__name__}); the server log has the details"},
                            status_code=500)

    @app.get("/", response_class=HTMLResponse)
    def page():
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    @app.get("/static/{name}")
    def static(name: str):
        if name not in STATIC_FILES:
            raise StarletteHTTPException(404)
        return Response((STATIC / name).read_bytes(), media_type=STATIC_FILES[name])

    @app.get("/api/info")
    def info():
        idx = None
        if backend.index_spec is not None:
            try:
                ix = backend.index()
                idx = {"images": len(ix), "model": ix.model_name}
            except (ValueError, OSError) as e:
                idx = {"error": str(e)}
        return {"class_sets": backend.class_sets(), "index": idx, "max_upload_bytes": max_upload_bytes,
                "max_files": MAX_FILES, "max_generate": MAX_GENERATE}

    async def read_images(files: list[UploadFile]) -> tuple[list, list[str]]:
        if not files:
            raise UserError("no image uploaded")
        if len(files) > MAX_FILES:
            raise UserError(f"at most {MAX_FILES} images per request, got {len(files)}")
        images, names = [], []
        for f in files:
            images.append(_read_image(await f.read(), f.filename or ""))
            names.append(f.filename or f"image {len(names) + 1}")
        return images, names

    @app.post("/api/classify")
    async def classify(files: list[UploadFile] = File(default=[]), labels: str = Form(""),
                       classset: str = Form("")):
        images, names = await read_images(files)
        tops = await _in_thread(backend.classify, images, _parse_labels(labels), classset.strip())
        return {"results": [{"name": n, "top": [{"label": lab, "probability": p} for lab, p in top]}
                            for n, top in zip(names, tops)]}

    @app.post("/api/generate")
    async def generate(caption: str = Form(""), n: int = Form(8), seed: int = Form(0)):
        caption = caption.strip()
        if not caption:
            raise UserError("type a caption")
        if not 1 <= n <= MAX_GENERATE:
            raise UserError(f"n must lie in [1, {MAX_GENERATE}], got {n}")
        images = await _in_thread(backend.generate, caption, n, seed)
        return {"caption": caption, "images": [{"src": _png_data_url(img), "score": s, "sample": j}
                                               for img, s, j in zip(images, images.scores, images.indices)]}

    @app.post("/api/search")
    async def search(text: str = Form(""), k: int = Form(12), image: UploadFile | None = File(default=None)):
        from urllib.parse import quote

        text = text.strip()
        query = None
        if image is not None and image.filename:
            query = _read_image(await image.read(), image.filename)
        if (query is None) == (not text):
            raise UserError("type a text query or choose a query image (one of them)")
        if not 1 <= k <= 100:
            raise UserError(f"k must lie in [1, 100], got {k}")
        hits = await _in_thread(backend.search, text or None, query, k)
        return {"hits": [{"path": h.path, "score": h.score, "src": "/files/" + quote(h.path)} for h in hits]}

    @app.get("/files/{path:path}")
    def files(path: str):
        try:
            full = backend.index().file(path)
        except KeyError:
            raise StarletteHTTPException(404) from None
        return FileResponse(full)

    return app


async def _in_thread(fn, *args):
    """Model work off the event loop, so the server keeps answering meanwhile."""
    from starlette.concurrency import run_in_threadpool

    try:
        return await run_in_threadpool(fn, *args)
    except UserError:
        raise
    except ValueError as e:  # the library's one-line messages (bad labels, a caption too long, ...)
        raise UserError(str(e)) from e
