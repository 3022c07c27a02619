"""Nearest neighbours over normalised embeddings: exact cosine top-k and faiss ANN indexes.

Exact search is a matrix product done a block of the database at a time, keeping only
the running top k per query, so memory is (queries x block) whatever the database size;
the blocks may be a tensor's rows or shards streamed from disk. It is exact: the result is
the full product's top k (the test compares them), fine up to a few million vectors.

Beyond that, `ann_index` builds a faiss index of the kind faiss's own guidelines
("Guidelines to choose an index", faiss wiki) give for the size: an inverted file with
about 4 sqrt(N) lists (a power of two) and flat storage below a million vectors, an
inverted file with 65,536 lists and an HNSW coarse quantizer from one to ten million.
faiss is an optional dependency (``pip install "clipkit[search]"``).
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

BLOCK = 65_536  # database rows per matrix product: (Q, BLOCK) float32 scores at a time
ANN_THRESHOLD = 2_000_000  # above this many vectors `search` switches to the ANN index
FAISS_MISSING = 'approximate search needs faiss: pip install "clipkit[search]"'


@dataclass(frozen=True)
class Hit:
    path: str
    score: float

    def to_dict(self) -> dict:
        return {"path": self.path, "score": self.score}


def _merge(best_s: torch.Tensor | None, best_i: torch.Tensor | None, s: torch.Tensor, i: torch.Tensor,
           k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k best of the running best and a new block's candidates, per query row."""
    if best_s is not None:
        s, i = torch.cat([best_s, s], dim=1), torch.cat([best_i, i], dim=1)  # (Q, 2k)
    top = s.topk(min(k, s.shape[1]), dim=1)
    return top.values, i.gather(1, top.indices)


def topk_exact(queries: torch.Tensor, database: torch.Tensor | Iterable[torch.Tensor], k: int = 10, *,
               block: int = BLOCK) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k inner products: (scores (Q, k'), row indices (Q, k')), best first, k' = min(k, N).

    `database` is an (N, D) tensor or an iterable of (n_i, D) blocks (e.g. index shards)
    whose rows are numbered in order. For unit vectors the inner product is the cosine.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    q = queries.float()
    if q.ndim == 1:
        q = q[None]
    blocks = database.split(block) if isinstance(database, torch.Tensor) else database
    best_s = best_i = None
    offset = 0
    for rows in blocks:
        if rows.shape[1] != q.shape[1]:
            raise ValueError(f"queries have {q.shape[1]} dimensions, the database {rows.shape[1]}")
        for part in rows.split(block):  # big blocks are cut too: memory stays (Q, block)
            sims = q @ part.float().T  # (Q, n)
            top = sims.topk(min(k, sims.shape[1]), dim=1)
            best_s, best_i = _merge(best_s, best_i, top.values, top.indices + offset, k)
            offset += len(part)
    if best_s is None:
        return torch.empty(len(q), 0), torch.empty(len(q), 0, dtype=torch.long)
    return best_s, best_i


# ---------------------------------------------------------------------------
# faiss
# ---------------------------------------------------------------------------


def import_faiss():
    try:
        import faiss
    except ImportError as e:
        raise ImportError(FAISS_MISSING) from e
    return faiss


def recommended_factory(n: int) -> str:
    """The faiss index_factory string faiss's guidelines give for n vectors (inner product)."""
    if n < 1:
        raise ValueError("cannot build an index over no vectors")
    if n <= 1_000_000:
        # "below 1M vectors: IVFK with K between 4 sqrt(N) and 16 sqrt(N)", trained on at
        # least 30 K vectors: the lower end, a power of two, capped so every list gets ~39.
        lists = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(n))))
        lists = max(1, min(lists, n // 39))
        return f"IVF{lists},Flat"
    if n <= 10_000_000:
        return "IVF65536_HNSW32,Flat"
    return "IVF262144_HNSW32,Flat"


def default_nprobe(factory: str) -> int:
    """Lists visited per query: all of up to 64 lists, else 1/32 of them (at least 64).

    Measured (benchmarks/results/search.md, IVF4096 over a million clustered vectors):
    128 of 4096 lists gave recall@10 0.966 at a fifth of exact search's time per query."""
    lists = int(factory.split(",")[0].split("_")[0][3:])
    return lists if lists <= 64 else max(64, lists // 32)


class AnnIndex:
    """A faiss inner-product index over unit vectors, built by `ann_index`."""

    def __init__(self, index, factory: str, nprobe: int):
        self.index, self.factory = index, factory
        self.nprobe = nprobe
        self._set_nprobe(nprobe)

    def _set_nprobe(self, nprobe: int) -> None:
        faiss = import_faiss()
        ivf = faiss.extract_index_ivf(self.index)
        ivf.nprobe = nprobe
        self.nprobe = nprobe

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: torch.Tensor, k: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
        q = np.ascontiguousarray(queries.float().reshape(-1, self.index.d).numpy())
        scores, ids = self.index.search(q, min(k, len(self)))
        return torch.from_numpy(scores), torch.from_numpy(ids)

    def save(self, path) -> None:
        import_faiss().write_index(self.index, str(path))

    @classmethod
    def load(cls, path, factory: str, nprobe: int | None = None) -> "AnnIndex":
        index = import_faiss().read_index(str(path))
        return cls(index, factory, nprobe or default_nprobe(factory))


def ann_index(vectors: torch.Tensor | np.ndarray, factory: str | None = None, *, train_size: int | None = None,
              nprobe: int | None = None, seed: int = 0, add_block: int = 100_000) -> AnnIndex:
    """Build the recommended (or the named) faiss index over (N, D) unit vectors.

    The coarse quantizer is trained on `train_size` rows drawn at random (default 64 per
    list, at most N), then every row is added, `add_block` rows at a time.
    """
    faiss = import_faiss()
    x = vectors.numpy() if isinstance(vectors, torch.Tensor) else vectors
    n, d = x.shape
    factory = factory or recommended_factory(n)
    index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    lists = faiss.extract_index_ivf(index).nlist
    m = min(n, train_size or 64 * lists)
    rows = np.sort(np.random.default_rng(seed).choice(n, size=m, replace=False)) if m < n else slice(None)
    index.train(np.ascontiguousarray(x[rows], dtype=np.float32))
    for s in range(0, n, add_block):
        index.add(np.ascontiguousarray(x[s:s + add_block], dtype=np.float32))
    return AnnIndex(index, factory, nprobe or default_nprobe(factory))


def recall_at_k(approx: torch.Tensor, exact: torch.Tensor) -> float:
    """Mean share of each query's exact top-k ids that the approximate top-k also found."""
    k = exact.shape[1]
    hits = sum(len(set(a.tolist()) & set(e.tolist())) for a, e in zip(approx, exact))
    return hits / (k * len(exact)) if len(exact) else float("nan")
