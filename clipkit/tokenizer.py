"""CLIP's byte-level BPE tokenizer: text -> ``LongTensor[N, 77]``.

Semantics are openai/CLIP's (`clip.tokenize`), id for id:

1. clean: ``ftfy.fix_text``, ``html.unescape`` twice, collapse whitespace, strip,
   lower-case;
2. pre-split with :data:`PATTERN` (case-insensitive) into "pieces": the two special
   token spellings, English contractions, letter runs, single digits, and runs of
   anything else that is not whitespace;
3. byte-level BPE on each piece's UTF-8 bytes with the 48,894 merges of
   ``assets/bpe_simple_vocab_16e6.txt.gz``; the last symbol of a piece carries the
   end-of-word mark ``</w>``;
4. frame as ``<start_of_text> ids <end_of_text>`` and zero-pad to the context length.

Vocabulary (49,408 ids): the 256 byte symbols, the same 256 with ``</w>``, one token per
merge in file order (merge ``r`` creates id ``512 + r``), then ``<start_of_text>`` =
49406 and ``<end_of_text>`` = 49407. Padding is id 0 (which is also the token ``!``;
positions after the end-of-text are padding).

Two consequences of following openai exactly, where Hugging Face's ``CLIPTokenizer``
differs (besides its missing ftfy and HTML unescaping): ``str.lower`` writes a
word-final capital sigma as ``ς``; and under the case-insensitive regex the combining
mark U+0345 (which case-folds to the letter ``ι``) matches no alternative and is dropped.

Speed comes from caching. A batch is cleaned per text,
split on whitespace into "chunks" (the pre-split regex never matches whitespace, so
splitting the text first and the chunks afterwards gives the same pieces), and each
distinct chunk is tokenized once and remembered. Printable ASCII without ``&`` skips
ftfy and HTML unescaping, which leave such text unchanged (see :func:`_is_plain_ascii`;
the tests check it against the full cleaning). The caches are bounded plain dicts whose
single get/set/clear operations are atomic, so one tokenizer can be shared by threads
without a lock; a worker process gets a copy (fork) or rebuilds it from the file
(pickle, spawn). Pieces longer than 64 bytes go through an O(n log n) heap version of
the BPE loop (same merges), so a pathological 100k-letter "word" takes a fraction of a
second instead of hours.
"""
from __future__ import annotations

import gzip
import hashlib
import heapq
import html
import json
import os
import re
import sys
import threading
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import ftfy
import numpy as np
import regex
import torch

__all__ = [
    "Tokenizer",
    "get_tokenizer",
    "tokenize",
    "clean",
    "PATTERN",
    "DEFAULT_CONTEXT_LENGTH",
    "DEFAULT_VOCAB_PATH",
]

DEFAULT_VOCAB_PATH = Path(__file__).with_name("assets") / "bpe_simple_vocab_16e6.txt.gz"
DEFAULT_CONTEXT_LENGTH = 77  # CLIP's text tower has 77 positions
NUM_MERGES = 48_894  # lines 1..48894 of the merges file; the rest are never used

# How openai spells the special tokens inside text (the pre-split regex matches them,
# so a literal "<|endoftext|>" in user text becomes id 49407, as in every reference).
SOT_TEXT = "<|startoftext|>"
EOT_TEXT = "<|endoftext|>"
# How the vocabulary lists them.
SOT_TOKEN = "<start_of_text>"
EOT_TOKEN = "<end_of_text>"

PATTERN = (
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d"
    r"|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
)
_PIECES = regex.compile(PATTERN, regex.IGNORECASE)

# Printable ASCII except '&', plus the ASCII whitespace that ftfy keeps ('\r' becomes
# '\n', which the whitespace collapse treats the same). Anything else (control
# characters that ftfy deletes, '&' that may start an HTML entity, non-ASCII) takes the
# full cleaning path.
_NOT_PLAIN_ASCII = re.compile(r"[^\t\n\x0c\r\x20-\x25\x27-\x7e]")

_CACHE_LIMIT = 1 << 18  # entries per cache; a full cache is emptied and refilled
_LONG_WORD = 64  # pieces of more bytes than this use the O(n log n) BPE


# ---------------------------------------------------------------------------------------
# cleaning
# ---------------------------------------------------------------------------------------

def clean(text: str) -> str:
    """openai/CLIP's text cleaning: ftfy, HTML-unescape twice, collapse whitespace, lower.

    ``" ".join(text.split())`` is exactly ``re.sub(r"\\s+", " ", text).strip()``: both
    use Python's ``str.isspace`` definition of whitespace.
    """
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return " ".join(text.split()).lower()


def _is_plain_ascii(text: str) -> bool:
    """True when ``clean(text) == " ".join(text.split()).lower()`` is guaranteed.

    On printable ASCII without '&', ftfy has nothing to do: there is no mojibake (ASCII
    decodes the same in every codec it tries), no entity (no '&'), no terminal escape or
    control character to remove (no '\\x1b' or other C0 control), no curly quote,
    ligature or full-width form, and NFC leaves ASCII alone. HTML unescaping needs '&'.
    """
    return text.isascii() and _NOT_PLAIN_ASCII.search(text) is None


def _chunks(text: str) -> list[str]:
    """The cleaned text, split on whitespace (the pieces never span whitespace)."""
    if _is_plain_ascii(text):
        return text.lower().split()
    return clean(text).split()


# ---------------------------------------------------------------------------------------
# vocabulary
# ---------------------------------------------------------------------------------------

def _byte_symbols() -> list[tuple[int, str]]:
    """(byte, symbol) for the 256 bytes, in vocabulary order.

    GPT-2's byte-to-unicode map: printable Latin-1 bytes stand for themselves, the 68
    others (controls, space, DEL, NBSP, soft hyphen) borrow the code points 256, 257, ...
    in byte order, so every merge-file symbol is a visible character. The vocabulary
    lists the self-standing bytes first, then the borrowed ones.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    kept = set(printable)
    others = [b for b in range(256) if b not in kept]
    return [(b, chr(b)) for b in printable] + [(b, chr(256 + n)) for n, b in enumerate(others)]


def _read_merges(path: Path) -> tuple[bytes, list[tuple[str, str]]]:
    raw = Path(path).read_bytes()
    # line 0 is the "#version" header; lines past NUM_MERGES are never used
    lines = gzip.decompress(raw).decode("utf-8").split("\n", NUM_MERGES + 1)
    merges = [tuple(line.split()) for line in lines[1:NUM_MERGES + 1]]
    if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
        raise ValueError(f"{path}: expected {NUM_MERGES} merge lines of two symbols each "
                         "after the header; is this CLIP's bpe_simple_vocab_16e6.txt.gz?")
    return raw, merges


# ---------------------------------------------------------------------------------------
# tokenizer
# ---------------------------------------------------------------------------------------

class TruncationWarning(UserWarning):
    """Texts were cut to the context length (end-of-text kept as the last token)."""


class Tokenizer:
    """CLIP tokenizer. ``tok(["a photo of a cat."])`` -> ``LongTensor[1, 77]``.

    - :meth:`encode` / :meth:`decode`: BPE ids without start/end, and back;
    - :meth:`encode_batch`: framed id lists, never truncated;
    - ``__call__``: framed, truncated (with a warning) or rejected, zero-padded tensor.

    Round trip: ``decode(encode(x)) == " ".join(PATTERN pieces of clean(x))``, i.e. the
    cleaned text with exactly one space between pieces. Where the pieces were already
    separated by whitespace (plain words) that is ``clean(x)`` itself; punctuation and
    contractions come back detached (``"it's a cat."`` -> ``"it 's a cat ."``),
    because ``</w>`` only records that a piece ended. A literal ``<|endoftext|>`` in
    the text encodes to the end id (as in openai/CLIP; open_clip's regex looks for its own
    spelling ``<end_of_text>`` instead), so decoding stops there.

    ``fingerprint`` (sha256 of the vocabulary file, the cleaning settings, the ftfy
    version and the context length) keys caches of anything computed from the ids.
    """

    sot_token_id = 49406
    eot_token_id = 49407
    pad_token_id = 0
    vocab_size = 49408

    def __init__(self, vocab_path: str | os.PathLike | None = None,
                 context_length: int = DEFAULT_CONTEXT_LENGTH):
        self.vocab_path = Path(vocab_path) if vocab_path is not None else DEFAULT_VOCAB_PATH
        self.context_length = _check_context_length(context_length)
        raw, merges = _read_merges(self.vocab_path)

        symbols = _byte_symbols()
        self._byte_ids = [0] * 256  # byte -> id of its symbol (without </w>)
        tokens = [s for _, s in symbols] + [s + "</w>" for _, s in symbols]
        for token_id, (byte, _) in enumerate(symbols):
            self._byte_ids[byte] = token_id
        ids = {t: i for i, t in enumerate(tokens)}
        # BPE runs on ids: pair (a, b) as the int a << 16 | b -> rank; merge r makes
        # id 512 + r. The merged strings are all distinct, so this is the string BPE.
        # A merge may only use tokens made by earlier merges (checked here), so a merge
        # of rank r never creates a pair of rank <= r; _bpe_long relies on that.
        self._ranks: dict[int, int] = {}
        for rank, (a, b) in enumerate(merges):
            if a not in ids or b not in ids:
                raise ValueError(f"{self.vocab_path}: merge {rank + 1} ({a} {b}) uses a token "
                                 "that no earlier merge made")
            self._ranks[ids[a] << 16 | ids[b]] = rank
            ids[a + b] = len(tokens)
            tokens.append(a + b)
        tokens += [SOT_TOKEN, EOT_TOKEN]
        if len(tokens) != self.vocab_size or len(ids) != len(tokens) - 2:
            raise ValueError(f"{self.vocab_path}: built {len(tokens)} tokens "
                             f"({len(ids)} distinct), expected {self.vocab_size}")
        self._tokens = tokens
        self._special = {SOT_TEXT: (self.sot_token_id,), EOT_TEXT: (self.eot_token_id,)}

        settings = {"clean": "ftfy.fix_text|html.unescape*2|collapse-whitespace|strip|lower",
                    "ftfy": ftfy.__version__, "pattern": PATTERN, "ignorecase": True,
                    "merges": NUM_MERGES, "context_length": self.context_length}
        digest = hashlib.sha256(raw)
        digest.update(json.dumps(settings, sort_keys=True).encode())
        self._fingerprint = digest.hexdigest()

        self._piece_cache: dict[str, tuple[int, ...]] = {}
        self._chunk_cache: dict[str, tuple[int, ...]] = {}
        self._decode_table: list[bytes] | None = None  # built on first decode

    # -- pickling: a worker rebuilds from the file instead of receiving the tables ----
    def __reduce__(self):
        return (type(self), (str(self.vocab_path), self.context_length))

    def __repr__(self):
        return (f"{type(self).__name__}(vocab_path={str(self.vocab_path)!r}, "
                f"context_length={self.context_length})")

    @property
    def fingerprint(self) -> str:
        """sha256 of the vocabulary file bytes and the cleaning settings (a cache key)."""
        return self._fingerprint

    @property
    def vocab(self) -> dict[str, int]:
        """token string -> id (a copy), in the merges file's spelling."""
        return {t: i for i, t in enumerate(self._tokens)}

    @property
    def merges(self) -> list[tuple[str, str]]:
        """The merge pairs in rank order."""
        return [(self._tokens[k >> 16], self._tokens[k & 0xFFFF])
                for k in sorted(self._ranks, key=self._ranks.__getitem__)]

    clean = staticmethod(clean)

    # -- BPE ---------------------------------------------------------------------------
    def _bpe(self, piece: str) -> tuple[int, ...]:
        special = self._special.get(piece)
        if special is not None:
            return special
        word = self._bpe_symbols(piece)
        return self._bpe_long(word) if len(word) > _LONG_WORD else self._bpe_short(word)

    def _bpe_symbols(self, piece: str) -> list[int]:
        """The piece's bytes as ids, the last one in its end-of-word (</w>) form."""
        word = [self._byte_ids[b] for b in piece.encode("utf-8")]
        word[-1] += 256
        return word

    def _bpe_short(self, word: list[int]) -> tuple[int, ...]:
        """BPE as openai wrote it: quadratic, and the fastest on short pieces."""
        ranks = self._ranks
        while len(word) > 1:
            # the lowest-ranked adjacent pair is merged everywhere, left to right
            best = None
            best_rank = NUM_MERGES
            for a, b in zip(word, word[1:]):
                r = ranks.get(a << 16 | b, NUM_MERGES)
                if r < best_rank:
                    best_rank, best = r, (a, b)
            if best is None:
                break
            first, second = best
            merged_id = 512 + best_rank
            merged = []
            i, n = 0, len(word)
            while i < n:
                if i < n - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(merged_id)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        return tuple(word)

    def _bpe_long(self, word: list[int]) -> tuple[int, ...]:
        """The same BPE in O(n log n) for long pieces (the loop above is quadratic).

        A heap of (rank, position) pairs over a linked list of symbols. All pairs of
        rank r are merged before any pair they create (those rank higher), and equal
        ranks pop left to right, which is exactly "merge every occurrence of the best
        pair, left to right". Stale heap entries are skipped by re-checking the pair.
        """
        ranks = self._ranks
        n = len(word)
        sym: list[int | None] = list(word)
        nxt = list(range(1, n + 1))  # n = no right neighbour
        prv = list(range(-1, n - 1))
        heap = [(r, i) for i in range(n - 1)
                if (r := ranks.get(word[i] << 16 | word[i + 1])) is not None]
        heapq.heapify(heap)
        while heap:
            r, i = heapq.heappop(heap)
            j = nxt[i]
            if sym[i] is None or j >= n or ranks.get(sym[i] << 16 | sym[j]) != r:
                continue  # stale: one of the two symbols has been merged since
            sym[i], sym[j] = 512 + r, None
            k = nxt[i] = nxt[j]
            if k < n:
                prv[k] = i
                rk = ranks.get(sym[i] << 16 | sym[k])
                if rk is not None:
                    heapq.heappush(heap, (rk, i))
            p = prv[i]
            if p >= 0:
                rp = ranks.get(sym[p] << 16 | sym[i])
                if rp is not None:
                    heapq.heappush(heap, (rp, p))
        return tuple(s for s in sym if s is not None)

    def _chunk_ids(self, chunk: str) -> tuple[int, ...]:
        """ids of one whitespace-free chunk of cleaned text (cached)."""
        ids = self._chunk_cache.get(chunk)
        if ids is not None:
            return ids
        pieces = self._piece_cache
        out: list[int] = []
        for piece in _PIECES.findall(chunk):
            p = pieces.get(piece)
            if p is None:
                p = self._bpe(piece)
                if len(pieces) >= _CACHE_LIMIT:
                    pieces.clear()
                pieces[piece] = p
            out += p
        ids = tuple(out)
        if len(self._chunk_cache) >= _CACHE_LIMIT:
            self._chunk_cache.clear()
        self._chunk_cache[chunk] = ids
        return ids

    def _ids(self, text: str) -> list[int]:
        cache = self._chunk_cache
        out: list[int] = []
        for chunk in _chunks(text):
            ids = cache.get(chunk)
            out += ids if ids is not None else self._chunk_ids(chunk)
        return out

    # -- public ------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """BPE ids of one text, without start/end tokens."""
        if not isinstance(text, str):
            raise TypeError(f"encode() expects a str, got {type(text).__name__}: {text!r:.80}")
        return self._ids(text)

    def encode_batch(self, texts: str | Iterable[str]) -> list[list[int]]:
        """``[sot, *ids, eot]`` per text, not truncated."""
        sot, eot = self.sot_token_id, self.eot_token_id
        return [[sot, *ids, eot] for ids in self._encode_all(_as_text_list(texts))]

    def _encode_all(self, texts: list[str]) -> list[list[int]]:
        seen: dict[str, list[int]] = {}  # a batch often repeats texts
        out = []
        for text in texts:
            ids = seen.get(text)
            if ids is None:
                ids = seen[text] = self._ids(text)
            out.append(ids)
        return out

    def __call__(self, texts: str | Iterable[str], context_length: int | None = None,
                 truncate: bool = True) -> torch.Tensor:
        """Framed, zero-padded ``LongTensor[N, context_length]`` (N = 1 for one str).

        A text needing more than ``context_length`` tokens (start and end included) is
        cut to ``context_length`` with its last kept token replaced by end-of-text, and
        one warning per call counts the cut texts; ``truncate=False`` raises instead.
        """
        n_ctx = self.context_length if context_length is None else _check_context_length(context_length)
        texts = _as_text_list(texts)
        encoded = self._encode_all(texts)
        sot, eot = self.sot_token_id, self.eot_token_id
        keep = n_ctx - 2  # BPE ids that fit between start and end
        lengths = np.empty(len(texts), dtype=np.int64)
        flat: list[int] = []
        cut = []
        for i, ids in enumerate(encoded):
            if len(ids) > keep:
                if not truncate:
                    raise ValueError(
                        f"text {i} needs {len(ids) + 2} tokens (start and end included), "
                        f"more than the context length {n_ctx}: {_shorten(texts[i])}; "
                        "shorten it or pass truncate=True")
                cut.append(i)
                ids = ids[:keep]
            flat.append(sot)
            flat += ids
            flat.append(eot)
            lengths[i] = len(ids) + 2
        if cut:
            first = cut[0]
            warnings.warn(
                f"{len(cut)} of {len(texts)} texts were longer than the context length "
                f"{n_ctx} and were truncated (end-of-text kept as the last token); first: "
                f"text {first} with {len(encoded[first]) + 2} tokens: {_shorten(texts[first])}",
                TruncationWarning, stacklevel=_caller_stacklevel())
        out = np.zeros((len(texts), n_ctx), dtype=np.int64)
        # row-major boolean assignment fills each row's first lengths[i] slots in order
        out[np.arange(n_ctx) < lengths[:, None]] = np.asarray(flat, dtype=np.int64)
        return torch.from_numpy(out)

    def decode(self, ids: Sequence[int] | torch.Tensor | np.ndarray) -> str:
        """Text of one id sequence: start tokens are skipped, and the end-of-text token
        and everything after it (padding) are dropped. Each ``</w>`` becomes one space;
        the one ending the last piece is dropped. Invalid UTF-8 is replaced (U+FFFD)."""
        if isinstance(ids, (torch.Tensor, np.ndarray)):
            if ids.ndim != 1:
                raise ValueError(f"decode() takes one sequence (1-d), got shape "
                                 f"{tuple(ids.shape)}; decode rows one at a time")
            ids = ids.tolist()
        table = self._decode_table
        if table is None:
            table = self._decode_table = self._build_decode_table()
        parts = []
        last = None
        for i in ids:
            if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < self.vocab_size:
                raise ValueError(f"decode(): {i!r} is not a token id in [0, {self.vocab_size})")
            if i == self.eot_token_id:
                break
            if i != self.sot_token_id:
                parts.append(table[i])
                last = i
        text = b"".join(parts).decode("utf-8", errors="replace")
        # ids 256..511 and merges ending in </w> close a word; drop the final space
        return text[:-1] if last is not None and self._ends_word[last] else text

    def _build_decode_table(self) -> list[bytes]:
        char_byte = {s: b for b, s in _byte_symbols()}
        table, ends_word = [], []
        for token in self._tokens[:-2]:
            end = token.endswith("</w>")
            body = token[:-4] if end else token
            table.append(bytes(char_byte[c] for c in body) + (b" " if end else b""))
            ends_word.append(end)
        self._ends_word = ends_word + [False, False]  # the specials never reach the text
        return table + [b"", b""]


def _check_context_length(n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise ValueError(f"context_length must be an int >= 2 (room for start and end "
                         f"tokens), got {n!r}")
    return int(n)


def _as_text_list(texts) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    if isinstance(texts, (bytes, bytearray)) or not isinstance(texts, Iterable):
        raise TypeError(f"expected a str or a list of str, got {type(texts).__name__}")
    texts = list(texts)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] is {type(t).__name__}, not str: {t!r:.80}")
    return texts


def _caller_stacklevel() -> int:
    """warnings.warn stacklevel of the first frame outside this module (so a warning
    raised through tokenize() points at the user's line, not at tokenize)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename == __file__:
        frame, level = frame.f_back, level + 1
    return level


def _shorten(text: str, limit: int = 80) -> str:
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} chars)"


# ---------------------------------------------------------------------------------------
# shared default
# ---------------------------------------------------------------------------------------

_default: Tokenizer | None = None
_default_lock = threading.Lock()


def _reset_lock_after_fork():
    # a lock held by another thread at fork time would stay locked in the child forever
    global _default_lock
    _default_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_lock_after_fork)


def get_tokenizer() -> Tokenizer:
    """The shared default :class:`Tokenizer`, built on first use."""
    global _default
    tok = _default
    if tok is None:
        with _default_lock:
            if _default is None:
                _default = Tokenizer()
            tok = _default
    return tok


def tokenize(texts: str | Iterable[str], context_length: int = DEFAULT_CONTEXT_LENGTH,
             truncate: bool = True) -> torch.Tensor:
    """``get_tokenizer()(texts, context_length, truncate)``."""
    return get_tokenizer()(texts, context_length=context_length, truncate=truncate)
