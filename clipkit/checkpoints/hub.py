"""Where weights come from: registry names, the official release URLs (SHA-256 in the
URL), the shipped files, the cache, and a resumable, verified, atomic download."""
from __future__ import annotations

import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

from clipkit.checkpoints.errors import ChecksumError, DownloadError, ModelNotFoundError


# ---------------------------------------------------------------------------
# Where weights come from
# ---------------------------------------------------------------------------

# The official releases (openai/CLIP). The SHA-256 of each file is the path component
# before its name. Tests point entries at a local server.
OPENAI_URLS: dict[str, str] = {
    "RN50": "https://openaipublic.azureedge.net/clip/models/afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt",
    "RN101": "https://openaipublic.azureedge.net/clip/models/8fa8567bab74a42d41c5915025a8e4538c3bdbe8804a470a72f30b0d94fab599/RN101.pt",
    "RN50x4": "https://openaipublic.azureedge.net/clip/models/7e526bd135e493cef0776de27d5f42653e6b4c8bf9e0f653bb11773263205fdd/RN50x4.pt",
    "RN50x16": "https://openaipublic.azureedge.net/clip/models/52378b407f34354e150460fe41077663dd5b39c54cd0bfd2b27167a4a06ec9aa/RN50x16.pt",
    "RN50x64": "https://openaipublic.azureedge.net/clip/models/be1cfb55d75a9666199fb2206c106743da0f6468c9d327f3e0d0a543a9919d9c/RN50x64.pt",
    "ViT-B/32": "https://openaipublic.azureedge.net/clip/models/40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
    "ViT-B/16": "https://openaipublic.azureedge.net/clip/models/5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f/ViT-B-16.pt",
    "ViT-L/14": "https://openaipublic.azureedge.net/clip/models/b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
    "ViT-L/14@336px": "https://openaipublic.azureedge.net/clip/models/3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02/ViT-L-14-336px.pt",
}

# Models shipped inside the package: name -> safetensors path relative to the package
# folder (e.g. "weights/clipkit-synth.safetensors").
_SHIPPED: dict[str, str] = {"clipkit-synth": "weights/clipkit-synth.safetensors"}

_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the clipkit package folder


def sha256_from_url(url: str) -> str:
    """The SHA-256 published in an OpenAI URL (the path component before the file name)."""
    digest = url.rstrip("/").split("/")[-2]
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ValueError(f"no SHA-256 in URL {url!r}")
    return digest


def _file_stem(name: str) -> str:
    return name.replace("/", "-")


def _cached_candidates(name: str, root: Path) -> list[Path]:
    """Files in the cache folder `root` that may hold the weights of a registry name, in
    preference order: the project's safetensors, then the released file's own name."""
    candidates = [root / f"{_file_stem(name)}.safetensors"]
    if name in OPENAI_URLS:
        candidates.append(root / OPENAI_URLS[name].rsplit("/", 1)[-1])
    else:
        candidates.append(root / f"{_file_stem(name)}.pt")
    return candidates


# ---------------------------------------------------------------------------
# Download: resumable, SHA-256 verified, atomic
# ---------------------------------------------------------------------------

_CHUNK = 1 << 20


def _sha256_file(path: Path, h: "hashlib._Hash | None" = None) -> "hashlib._Hash":
    h = h or hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h


def _stamp_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _write_stamp(path: Path, sha256: str) -> None:
    st = path.stat()
    try:
        _stamp_path(path).write_text(f"{sha256} {st.st_size} {st.st_mtime_ns}\n")
    except OSError:  # a read-only cache: the file is simply hashed again next time
        pass


def verify_file(path: str | os.PathLike, sha256: str) -> bool:
    """Whether a file has the given SHA-256.

    A verified file gets a `<file>.sha256` stamp (digest, size, mtime): while the file is
    unchanged, later checks read the stamp instead of hashing hundreds of MB again.
    """
    path = Path(path)
    st = path.stat()
    try:
        digest, size, mtime = _stamp_path(path).read_text().split()
        if digest == sha256 and int(size) == st.st_size and int(mtime) == st.st_mtime_ns:
            return True
    except (OSError, ValueError):
        pass
    if _sha256_file(path).hexdigest() != sha256:
        return False
    _write_stamp(path, sha256)
    return True


def _manual_instructions(url: str, dest: Path, sha256: str) -> str:
    return (f"To install the file by hand, fetch\n  {url}\non a machine with network access and "
            f"put it at\n  {dest}\n(SHA-256 {sha256}).")


def download(url: str, sha256: str, dest_dir: str | os.PathLike | None = None, *,
             filename: str | None = None, progress: bool = True, timeout: float = 30.0,
             retries: int = 2) -> Path:
    """Download `url` into `dest_dir` (default: the clipkit cache), verify its SHA-256.

    The bytes go to `<file>.part` and are renamed into place only once verified, so the
    final name never holds a partial or corrupt file. An interrupted download resumes
    from the `.part` file with an HTTP Range request (restarting when the server ignores
    Range); up to `retries` resumes are tried within one call. Without network the error
    says which URL to fetch and where to put the file. A checksum mismatch deletes the
    bad bytes and raises ChecksumError with the expected and actual digests.
    """
    from clipkit.utils import cache_dir

    dest_dir = Path(dest_dir) if dest_dir is not None else cache_dir()
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / (filename or url.rstrip("/").rsplit("/", 1)[-1])
    sha256 = sha256.lower()
    if dest.is_file():
        if verify_file(dest, sha256):
            return dest
        dest.unlink()  # a corrupt or stale file under the final name: fetch it again
    part = dest.with_name(dest.name + ".part")
    attempt = 0
    while True:
        try:
            complete = _fetch_into(url, part, progress=progress, timeout=timeout, desc=dest.name)
        except urllib.error.HTTPError as e:
            raise DownloadError(
                f"could not download {url}: the server answered HTTP {e.code} {e.reason}.\n"
                + _manual_instructions(url, dest, sha256)
            ) from e
        except (OSError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", None) or e
            if attempt < retries and part.is_file() and part.stat().st_size > 0 \
                    and not isinstance(e, urllib.error.URLError):
                attempt += 1  # the connection broke mid-way: resume from what arrived
                continue
            kept = (f"\nThe {part.stat().st_size:,} bytes received so far are kept in {part}; "
                    "the next attempt resumes from there.") if part.is_file() and part.stat().st_size else ""
            raise DownloadError(
                f"could not download {url} (no network or server unreachable: {reason}).\n"
                + _manual_instructions(url, dest, sha256) + kept
            ) from e
        if not complete:
            if attempt < retries:
                attempt += 1
                continue
            raise DownloadError(
                f"the download of {url} ended early {retries + 1} times; the bytes received "
                f"are kept in {part} and the next attempt resumes from there.\n"
                + _manual_instructions(url, dest, sha256)
            )
        break
    got = _sha256_file(part).hexdigest()
    if got != sha256:
        part.unlink()
        raise ChecksumError(
            f"checksum mismatch for {url}: expected SHA-256 {sha256}, got {got}. "
            "The corrupt download was deleted; try again. " + _manual_instructions(url, dest, sha256)
        )
    os.replace(part, dest)
    _write_stamp(dest, sha256)
    return dest


def _fetch_into(url: str, part: Path, *, progress: bool, timeout: float, desc: str) -> bool:
    """Append the rest of `url` to `part`; True when the whole body arrived."""
    from tqdm.auto import tqdm

    have = part.stat().st_size if part.is_file() else 0
    headers = {"User-Agent": "clipkit"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to send: the part file may be complete
            total = _content_range_total(e.headers.get("Content-Range", ""))
            if total == have:
                return True
            part.unlink()  # inconsistent with the server: start again
            return _fetch_into(url, part, progress=progress, timeout=timeout, desc=desc)
        raise
    with response:
        length = response.headers.get("Content-Length")
        length = int(length) if length is not None else None
        if have and response.status == 206:
            start = _content_range_start(response.headers.get("Content-Range", ""))
            if start != have:
                raise http.client.HTTPException(f"server resumed at byte {start}, not {have}")
            mode = "ab"
        else:  # a fresh download, or the server ignored Range: start over
            have, mode = 0, "wb"
        total = have + length if length is not None else None
        received = 0
        with open(part, mode) as f, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                         unit_divisor=1024, desc=desc, disable=not progress) as bar:
            try:
                while block := response.read(_CHUNK):
                    f.write(block)
                    received += len(block)
                    bar.update(len(block))
            finally:
                f.flush()
                os.fsync(f.fileno())
    return length is None or received == length


def _content_range_start(value: str) -> int | None:
    m = re.match(r"bytes (\d+)-\d+/(\d+|\*)", value.strip())
    return int(m.group(1)) if m else None


def _content_range_total(value: str) -> int | None:
    m = re.match(r"bytes (?:\d+-\d+|\*)/(\d+)", value.strip())
    return int(m.group(1)) if m else None


# ---------------------------------------------------------------------------
# The entry point
# ---------------------------------------------------------------------------


def _resolve(name: str, *, cache_dir: str | os.PathLike | None, download_ok: bool) -> Path:
    """The local file holding the weights of a model name, downloading if needed."""
    if name in _SHIPPED:
        shipped = _PACKAGE_DIR / _SHIPPED[name]
        if shipped.is_file():
            return shipped
    if cache_dir is None:
        from clipkit.utils import cache_dir as default_cache_dir

        root = default_cache_dir()
    else:
        root = Path(cache_dir)
    candidates = _cached_candidates(name, root)
    url = OPENAI_URLS.get(name)
    for candidate in candidates:
        if candidate.is_file():
            if url is not None and candidate.name == url.rsplit("/", 1)[-1]:
                sha = sha256_from_url(url)
                if not verify_file(candidate, sha):
                    if not download_ok:
                        raise ChecksumError(
                            f"{candidate} does not have the published SHA-256 {sha}; delete it and "
                            f"download again (or call load with download=True)."
                        )
                    break  # download() replaces it
            return candidate
    if url is None:
        raise ModelNotFoundError(
            f"no weights for {name!r}: it is an architecture without published weights. Put a "
            f"checkpoint at {candidates[0]} (any supported format: use clipkit.save for safetensors), "
            f"pass a path to load(), or use clipkit.create_model({name!r}) for random weights."
        )
    dest_dir = candidates[-1].parent
    if not download_ok:
        raise ModelNotFoundError(
            f"no local weights for {name!r} and download=False. "
            + _manual_instructions(url, dest_dir / url.rsplit("/", 1)[-1], sha256_from_url(url))
        )
    return download(url, sha256_from_url(url), dest_dir)


