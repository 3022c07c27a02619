"""An embedding index of an image folder: build it once, update it incrementally, search it.

    index = clipkit.Index.build("photos/", "photos.idx")      # embeds every image under photos/
    index.search("a red circle", k=10)                         # [Hit(path, score), ...] best first

On disk, an index is a folder:

- ``shards/<key>.safetensors``: the normalised image embeddings (n, D) float32 of one chunk
  of files, with the chunk's files (path relative to the root, size, mtime) and the files
  that could not be read in the header. `key` hashes the weights' fingerprint and the
  chunk's files, so a shard is written once, atomically (temporary file, then rename),
  and a rerun after an interruption finds it and does not encode the chunk again.
- ``manifest.json``: the root, the model's name and weights fingerprint, the fast image
  path the embeddings came from (``"fast"``: null, ``"bf16"`` or ``"int8"``), the embedding
  width, the shards in order with their files, and the skipped files. Written last,
  atomically; shards it does not name are leftovers and are removed.

A rerun embeds only new or changed files (by size and mtime), drops deleted ones (their
shards are rewritten without them) and keeps the rest. Images go through the one image
path, `clipkit.encode.encode_images`. Under ``torchrun`` the chunks are dealt over the
ranks with `clipkit.distributed` (as `bench` does); a chunk is always encoded as one unit, batched the
same way, so 2 processes write the same shards as 1.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from clipkit.search import ANN_THRESHOLD, AnnIndex, Hit, ann_index, recommended_factory, topk_exact

FORMAT = "clipkit-index/1"
MANIFEST = "manifest.json"
SHARDS = "shards"
CHUNK = 512  # files per shard: the unit of work, of resuming, and of a rank's share
KEEP_IN_MEMORY = 512 * 2**20  # embeddings up to this size stay in memory between queries


class BadIndexError(ValueError):
    """An index that cannot be used as asked (missing, another model, another root)."""


def image_files(root: str | os.PathLike) -> list[tuple[str, int, int]]:
    """(path relative to root with '/' separators, size, mtime_ns) of every image file under
    `root`, recursively, sorted by path; the extension decides what is an image."""
    from clipkit.data.datasets import IMAGE_EXTENSIONS

    root = Path(root)
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]  # no .git, .cache, ...
        for name in filenames:
            if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            full = Path(dirpath) / name
            try:
                st = full.stat()
            except OSError:
                continue  # vanished, or a dangling link
            out.append((full.relative_to(root).as_posix(), int(st.st_size), int(st.st_mtime_ns)))
    out.sort()
    return out


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.part")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _chunk_key(fingerprint: str, files: list[tuple[str, int, int]]) -> str:
    h = hashlib.sha256(f"{FORMAT}|{fingerprint}\n".encode())
    h.update(json.dumps(files).encode("utf-8"))
    return h.hexdigest()[:24]


def _read_shard_header(path: Path) -> dict | None:
    """A shard's metadata, or None if the file is absent or unreadable (then it is redone)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            rows = f.get_slice("embeddings").get_shape()[0]
        entries = [tuple(e) for e in json.loads(meta["entries"])]
        skipped = [tuple(e) for e in json.loads(meta["skipped"])]
    except (OSError, SafetensorError, KeyError, ValueError):
        return None
    if meta.get("format") != FORMAT or rows != len(entries):
        return None
    return {"fingerprint": meta.get("fingerprint"), "entries": entries, "skipped": skipped}


def _write_shard(path: Path, embeddings: torch.Tensor, entries: list, skipped: list, fingerprint: str) -> None:
    from safetensors.torch import save_file

    meta = {"format": FORMAT, "fingerprint": fingerprint, "entries": json.dumps(entries),
            "skipped": json.dumps(skipped)}
    _write_atomic(path, lambda tmp: save_file({"embeddings": embeddings.contiguous()}, str(tmp), metadata=meta))


def _model_label(model) -> str | None:
    """What the manifest calls the model: its name or path; None for an in-memory module."""
    if model is None:
        from clipkit.encode import DEFAULT_MODEL

        return DEFAULT_MODEL
    if isinstance(model, tuple):
        model = model[0]
    if isinstance(model, (str, os.PathLike)):
        path = Path(model)
        return str(path.resolve()) if path.exists() else str(model)
    return getattr(model, "name", None)


@dataclass
class BuildReport:
    """What one `Index.build` did. `index` is None on ranks other than 0."""

    index: "Index | None"
    added: int = 0  # files embedded in this run (resumed shards count as added, not encoded)
    encoded: int = 0  # files encoded in this run
    kept: int = 0  # unchanged files carried over
    removed: int = 0  # deleted or changed files dropped
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason) of unreadable files
    seconds: float = 0.0


class Index:
    """An image-embedding index on disk (see the module docstring). Open with ``Index(path)``."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        manifest_path = self.path / MANIFEST
        if not manifest_path.is_file():
            raise BadIndexError(f"no index at {self.path} (no {MANIFEST}): build one with "
                              f"`clipkit index DIR --out {self.path}`")
        try:
            m = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise BadIndexError(f"cannot read {manifest_path}: {e}") from e
        if m.get("format") != FORMAT:
            raise BadIndexError(f"{manifest_path} is not a {FORMAT} manifest (format {m.get('format')!r})")
        self.manifest = m
        self.root = Path(m["root"])
        self.model_name: str | None = m.get("model")
        self.fingerprint: str = m["fingerprint"]
        self.dim: int = int(m["dim"])
        self.paths: list[str] = [e[0] for s in m["shards"] for e in s["entries"]]
        self._row = {p: i for i, p in enumerate(self.paths)}
        self._model = None
        self._fast_model = None  # the image path of `fast`, for image queries
        self._ann: AnnIndex | None = None
        self._kept: torch.Tensor | None = None  # all embeddings, when small enough to keep

    def __len__(self) -> int:
        return len(self.paths)

    def __contains__(self, path: str) -> bool:
        return path in self._row

    def __repr__(self) -> str:
        return f"Index({str(self.path)!r}, {len(self)} images of {str(self.root)!r}, model={self.model_name!r})"

    @property
    def skipped(self) -> list[tuple[str, str]]:
        return [(e[0], e[3]) for e in self.manifest.get("skipped", [])]

    # -- embeddings -------------------------------------------------------------

    def shards(self):
        """The embedding blocks (n_i, D) in row order, read one shard at a time."""
        from safetensors.torch import load_file

        for s in self.manifest["shards"]:
            yield load_file(str(self.path / SHARDS / s["file"]))["embeddings"]

    def embeddings(self) -> torch.Tensor:
        """All embeddings (N, D), float32, in the order of `paths`."""
        blocks = list(self.shards())
        return torch.cat(blocks) if blocks else torch.empty(0, self.dim)

    # -- files --------------------------------------------------------------------

    def file(self, path: str) -> Path:
        """The file on disk of an indexed `path`; KeyError for anything else, so no name (``..``,
        absolute, a link out of the root) reaches a file outside the root that was not indexed."""
        if not isinstance(path, str) or path not in self._row:
            raise KeyError(f"{path!r} is not in the index")
        root = self.root.resolve()
        full = (root / path).resolve()
        if not full.is_relative_to(root) or not full.is_file():
            raise KeyError(f"{path!r} is not a file under the index root")
        return full

    # -- the model ------------------------------------------------------------------

    def model(self, model=None, device: str = "cpu"):
        """(CLIP module, preprocess) for queries: `model`, else the one the index was built with.
        Its weights must be the index's (same fingerprint), or the scores mean nothing."""
        if model is None and self._model is not None:
            return self._model
        from clipkit.utils import weights_fingerprint
        from clipkit.encode import resolve_model

        if model is None and self.model_name is None:
            raise BadIndexError(f"the index {self.path} does not name its model (built from a module): pass model=")
        clip, preprocess = resolve_model(model if model is not None else self.model_name, device=device)
        fp = weights_fingerprint(clip)
        if fp != self.fingerprint:
            raise BadIndexError(f"the index {self.path} was built with other weights ({self.model_name}, "
                              f"fingerprint {self.fingerprint[:12]}) than the model given (fingerprint "
                              f"{fp[:12]}): query it with the same model, or rebuild it")
        self._model = (clip.eval(), preprocess)
        return self._model

    @property
    def fast(self) -> str | None:
        """The fast image path the stored embeddings came from (None: the model in float32)."""
        return self.manifest.get("fast")

    def encode_query(self, text: str | None = None, image=None, model=None) -> torch.Tensor:
        """The normalised query embedding (D,) of a text or an image (path or PIL image).
        An image goes through the same image path as the index's images (`fast`)."""
        if (text is None) == (image is None):
            raise ValueError("give a text query or an image query (exactly one)")
        from clipkit.encode import encode_images
        from clipkit.zeroshot import encode_prompts

        clip, preprocess = self.model(model)
        if text is not None:
            if not text.strip():
                raise ValueError("the text query is empty")
            return encode_prompts(clip, [text], progress=False)[0]
        if self.fast and self._fast_model is None:
            from clipkit.models.fast import fast_model

            self._fast_model = fast_model(clip, self.fast)
        return encode_images(self._fast_model or clip, [image], preprocess=preprocess, progress=False).features[0]

    # -- search ---------------------------------------------------------------------

    def search_vectors(self, queries: torch.Tensor, k: int = 10, *, ann: bool | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores (Q, k), rows (Q, k)) best first. Exact (a chunked product over the shards)
        unless `ann` is True, or None and the index holds over `ANN_THRESHOLD` images."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if ann is None:
            ann = len(self) > ANN_THRESHOLD
        if not len(self):
            q = queries.reshape(-1, self.dim)
            return torch.empty(len(q), 0), torch.empty(len(q), 0, dtype=torch.long)
        if ann:
            return self.ann().search(queries, k)
        if len(self) * self.dim * 4 <= KEEP_IN_MEMORY:  # a server's repeated queries read the disk once
            if self._kept is None:
                self._kept = self.embeddings()
            return topk_exact(queries, self._kept, k)
        return topk_exact(queries, self.shards(), k)  # bounded memory: one shard at a time

    def search(self, text: str | None = None, k: int = 10, *, image=None, ann: bool | None = None,
               model=None) -> list[Hit]:
        """The k indexed images most similar to a text or an image query, best first."""
        q = self.encode_query(text, image, model)
        scores, rows = self.search_vectors(q[None], k, ann=ann)
        return [Hit(self.paths[r], float(s)) for s, r in zip(scores[0].tolist(), rows[0].tolist()) if r >= 0]

    def ann(self) -> AnnIndex:
        """The faiss index over the embeddings, built on first use and saved beside the shards
        (reused while the manifest is unchanged)."""
        if self._ann is not None:
            return self._ann
        factory = recommended_factory(len(self))
        key = hashlib.sha256(json.dumps([s["file"] for s in self.manifest["shards"]]).encode()).hexdigest()[:16]
        path = self.path / f"ann-{key}-{factory.replace(',', '+')}.faiss"
        if path.is_file():
            self._ann = AnnIndex.load(path, factory)
        else:
            self._ann = ann_index(self.embeddings(), factory)
            for old in self.path.glob("ann-*.faiss"):
                with contextlib.suppress(OSError):
                    old.unlink()
            _write_atomic(path, self._ann.save)
        return self._ann

    def contact_sheet(self, hits: list[Hit], cell: int = 128, cols: int | None = None):
        """A PIL image of the hits' images in a grid (each fitted into a square cell), with
        rank and score under each; a missing or unreadable file is an empty red frame."""
        import math

        from PIL import Image, ImageDraw

        from clipkit.transforms import load_image

        cols = cols or max(1, min(5, len(hits)))
        rows = max(1, math.ceil(len(hits) / cols))
        pad, label = 4, 14
        sheet = Image.new("RGB", (cols * (cell + pad) + pad, rows * (cell + label + pad) + pad), (255, 255, 255))
        draw = ImageDraw.Draw(sheet)
        for i, h in enumerate(hits):
            r, c = divmod(i, cols)
            x, y = pad + c * (cell + pad), pad + r * (cell + label + pad)
            try:
                img = load_image(self.file(h.path))
                img.thumbnail((cell, cell))
                sheet.paste(img, (x + (cell - img.width) // 2, y + (cell - img.height) // 2))
            except (KeyError, ValueError, OSError):
                draw.rectangle((x, y, x + cell - 1, y + cell - 1), outline=(200, 0, 0))
            draw.text((x + 1, y + cell + 1), f"{i + 1}. {h.score:.3f}", fill=(0, 0, 0))
        return sheet

    # -- building -------------------------------------------------------------------

    @classmethod
    def build(cls, root: str | os.PathLike, out: str | os.PathLike, model=None, *, batch_size: int = 64,
              chunk_size: int = CHUNK, device: str = "cpu", rebuild: bool = False, progress: bool | None = None,
              fast: str | None = None, dist_ctx=None, stop_after_chunks: int | None = None) -> BuildReport:
        """Create or update the index at `out` over the images under `root` (see the module
        docstring). `model`: a name or path, a (model, preprocess) pair or a CLIP module
        (default: the shipped model). An index built with other weights, or over another
        root, is an error unless ``rebuild=True``, which starts it afresh. `fast`: ``"bf16"`` or
        ``"int8"`` embeds the images with `clipkit.models.fast.fast_model` (recorded in the
        manifest; an update must use the same path, since the embeddings differ slightly).
        `stop_after_chunks` stops after encoding that many chunks (to test resuming).
        """
        from clipkit.distributed import process_group

        t0 = time.perf_counter()
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        root = Path(root).resolve()
        if not root.is_dir():
            raise NotADirectoryError(f"{root} is not a folder of images")
        out = Path(out)
        if out.exists() and not out.is_dir():
            raise BadIndexError(f"{out} exists and is not an index folder")
        with contextlib.nullcontext(dist_ctx) if dist_ctx is not None else process_group() as ctx:
            return cls._build(ctx, root, out, model, batch_size, chunk_size, device, rebuild, progress,
                              fast, stop_after_chunks, t0)

    @classmethod
    def _build(cls, ctx, root, out, model, batch_size, chunk_size, device, rebuild, progress, fast,
               stop_after_chunks, t0) -> BuildReport:
        import torch.distributed as dist

        from clipkit.utils import weights_fingerprint
        from clipkit.encode import resolve_model

        clip, preprocess = resolve_model(model, device=device)
        clip.eval()
        from clipkit.models.fast import fast_mode, fast_model

        fast = fast_mode(fast)  # one spelling, checked before any work
        fp = weights_fingerprint(clip)
        old = _previous(out, root, fp, rebuild, fast)
        # shards are keyed by what made their embeddings: the weights and the image path
        shard_fp = fp if fast is None else f"{fp}+{fast}"
        image_model = fast_model(clip, fast)

        files = image_files(root) if ctx.main else None
        if ctx.world > 1:  # one listing for all ranks
            box = [files]
            dist.broadcast_object_list(box, src=0)
            files = box[0]
        current = {f[0]: f for f in files}
        kept_rows = {}  # path -> entry, for unchanged files already embedded
        old_skipped = []
        if old is not None:
            for s in old["shards"]:
                for e in s["entries"]:
                    if current.get(e[0]) == tuple(e):
                        kept_rows[e[0]] = tuple(e)
            old_skipped = [tuple(e) for e in old.get("skipped", []) if current.get(e[0]) == tuple(e[:3])]
        done = set(kept_rows) | {e[0] for e in old_skipped}  # unchanged unreadable files are not retried
        todo = [f for f in files if f[0] not in done]
        chunks = [todo[s:s + chunk_size] for s in range(0, len(todo), chunk_size)]
        keys = [_chunk_key(shard_fp, c) for c in chunks]
        shard_dir = out / SHARDS
        shard_dir.mkdir(parents=True, exist_ok=True)

        from clipkit.utils import progress_bar

        mine = list(range(ctx.rank, len(chunks), ctx.world))
        encoded = done_now = 0
        with progress_bar(sum(len(chunks[c]) for c in mine), unit="img", desc="indexing",
                          progress=progress if ctx.main else False) as bar:
            for c in mine:
                path = shard_dir / f"{keys[c]}.safetensors"
                header = _read_shard_header(path)
                if header is None or header["fingerprint"] != shard_fp:
                    if stop_after_chunks is not None and done_now >= stop_after_chunks:
                        raise InterruptedError(f"stopped after {done_now} chunks (stop_after_chunks)")
                    _encode_chunk(image_model, preprocess, root, chunks[c], path, shard_fp, batch_size, device)
                    encoded += len(chunks[c])
                    done_now += 1
                bar.update(len(chunks[c]))
        if ctx.world > 1:
            counts: list[Any] = [None] * ctx.world
            dist.all_gather_object(counts, encoded)
            encoded = sum(counts)
        if not ctx.main:
            return BuildReport(None, encoded=encoded)

        manifest, report = _assemble(out, root, fp, shard_fp, fast, _model_label(model), int(clip.config.embed_dim),
                                     old, kept_rows, old_skipped, keys)
        _write_atomic(out / MANIFEST, lambda tmp: tmp.write_text(json.dumps(manifest, indent=1), encoding="utf-8"))
        referenced = {s["file"] for s in manifest["shards"]}
        for leftover in shard_dir.iterdir():  # replaced shards, and parts of killed writes
            if leftover.name not in referenced:
                with contextlib.suppress(OSError):
                    leftover.unlink()
        report.index = cls(out)
        report.encoded = encoded
        report.seconds = time.perf_counter() - t0
        return report


def _previous(out: Path, root: Path, fp: str, rebuild: bool, fast: str | None = None) -> dict | None:
    """The existing manifest at `out` if it can be updated; None to start afresh."""
    if not (out / MANIFEST).is_file() or rebuild:
        return None
    old = Index(out).manifest
    if old["fingerprint"] != fp:
        raise BadIndexError(f"the index {out} was built with other weights ({old.get('model')}, fingerprint "
                          f"{old['fingerprint'][:12]}; this model's is {fp[:12]}): use the same model, "
                          f"or pass --rebuild (rebuild=True) to embed everything again")
    if old.get("fast") != fast:
        def said(mode):
            return f"--fast {mode}" if mode else "without --fast"

        raise BadIndexError(f"the index {out} was built {said(old.get('fast'))} and this run is {said(fast)}: "
                          f"the embeddings would not match; use the same setting, or pass --rebuild "
                          f"(rebuild=True) to embed everything again")
    if Path(old["root"]) != root:
        raise BadIndexError(f"the index {out} covers {old['root']}, not {root}: choose another --out, "
                          f"or pass --rebuild (rebuild=True) to start it over")
    return old


@torch.inference_mode()
def _encode_chunk(clip, preprocess, root: Path, files: list, path: Path, fp: str, batch_size: int,
                  device: str) -> None:
    from clipkit.encode import encode_images

    enc = encode_images(clip, [str(root / f[0]) for f in files], preprocess=preprocess, batch_size=batch_size,
                        device=device, skip_unreadable=True, progress=False)
    entries = [list(files[i]) for i in enc.indices]
    reasons = {str(w): r for w, r in enc.skipped}
    kept = set(enc.indices)
    skipped = [[*f, reasons.get(str(root / f[0]), "unreadable")] for i, f in enumerate(files) if i not in kept]
    _write_shard(path, enc.features.float(), entries, skipped, fp)


def _assemble(out: Path, root: Path, fp: str, shard_fp: str, fast: str | None, model: str | None, dim: int,
              old: dict | None, kept_rows: dict, old_skipped: list, keys: list[str]) -> tuple[dict, BuildReport]:
    """The new manifest: old shards (rewritten without dropped rows), then this run's shards."""
    from safetensors.torch import load_file

    shard_dir = out / SHARDS
    shards, report = [], BuildReport(None)
    for s in (old or {}).get("shards", []):
        live = [i for i, e in enumerate(s["entries"]) if e[0] in kept_rows]
        report.removed += len(s["entries"]) - len(live)
        report.kept += len(live)
        if len(live) == len(s["entries"]):
            shards.append(s)
        elif live:
            emb = load_file(str(shard_dir / s["file"]))["embeddings"][live]
            entries = [s["entries"][i] for i in live]
            name = f"{_chunk_key(shard_fp, [tuple(e) for e in entries])}.safetensors"
            _write_shard(shard_dir / name, emb, entries, [], shard_fp)
            shards.append({"file": name, "entries": entries})
    skipped = [list(e) for e in old_skipped]
    for key in keys:
        header = _read_shard_header(shard_dir / f"{key}.safetensors")
        if header is None:
            raise BadIndexError(f"shard {key} is missing after encoding: was {shard_dir} changed meanwhile?")
        if header["entries"]:
            shards.append({"file": f"{key}.safetensors", "entries": [list(e) for e in header["entries"]]})
        report.added += len(header["entries"])
        skipped += [list(e) for e in header["skipped"]]
    report.skipped = [(e[0], e[3]) for e in skipped]
    manifest = {"format": FORMAT, "root": str(root), "model": model, "fingerprint": fp, "fast": fast, "dim": dim,
                "count": sum(len(s["entries"]) for s in shards), "shards": shards, "skipped": skipped,
                "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return manifest, report
