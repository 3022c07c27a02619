"""Search speed: exact chunked top-k over a million 512-d vectors, and the faiss index that
`clipkit search --ann` builds (faiss's recommendation for the size), recall@10 against exact.

The vectors are synthetic but shaped like image embeddings: unit vectors drawn around
`--clusters` random centres (cosine 1/(1 + noise^2) within a cluster, ~0 across), because on
structureless Gaussian noise every neighbour is almost equally far and no ANN index
(nor a user) can tell them apart. The queries are fresh draws from the same mixture.

    python benchmarks/bench_search.py                      # 1M x 512, ~2 GB of vectors
    python benchmarks/bench_search.py --n 100000 --out -   # quick look, print only

Writes its section of benchmarks/results/search.md (search_quality.py writes the other).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._machine import cpu_name, load_average  # noqa: E402
from clipkit.search import ann_index, recall_at_k, recommended_factory, topk_exact  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "search.md"


def mixture(n: int, dim: int, clusters: int, seed: int, noise: float = 1.0, block: int = 100_000) -> np.ndarray:
    """(n, dim) float32 unit vectors, each a random centre plus isotropic noise, renormalised.
    The centres are always the same (seed 0); `seed` draws the points."""
    centres = np.random.default_rng(0).standard_normal((clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, block):  # block by block: no (n, dim) float64 temporaries
        m = min(block, n - s)
        x = centres[rng.integers(0, clusters, m)] + rng.standard_normal((m, dim), dtype=np.float32) * np.float32(
            noise / np.sqrt(dim))
        out[s:s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def timed(fn, repeat: int = 1):
    times, result = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return result, statistics.median(times)


def write_section(path: Path, name: str, text: str) -> None:
    """Replace (or append) the section between `<!-- name -->` markers in `path`."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    old = path.read_text(encoding="utf-8") if path.exists() else "# Search: speed, ANN recall and quality\n"
    block = f"{start}\n{text.strip()}\n{end}"
    if start in old and end in old:
        head, rest = old.split(start, 1)
        new = head + block + rest.split(end, 1)[1]
    else:
        new = old.rstrip() + "\n\n" + block + "\n"
    path.write_text(new, encoding="utf-8")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000, help="database vectors [1,000,000]")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--clusters", type=int, default=20_000)
    p.add_argument("--noise", type=float, default=1.5, help="noise norm around a unit centre [1.5]")
    p.add_argument("--queries", type=int, default=1000, help="queries for recall and batch timing [1000]")
    p.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32, 64, 128, 256])
    p.add_argument("--out", default=str(RESULTS), help="markdown file to update, or - to print only")
    args = p.parse_args(argv)
    load_before = load_average()
    torch.manual_seed(0)

    t = time.perf_counter()
    db = mixture(args.n, args.dim, args.clusters, seed=1, noise=args.noise)
    queries = mixture(args.queries, args.dim, args.clusters, seed=2, noise=args.noise)  # never in the database
    gen_s = time.perf_counter() - t
    dbt, qt = torch.from_numpy(db), torch.from_numpy(queries)
    print(f"data: {args.n:,} x {args.dim} float32 ({db.nbytes / 2**30:.2f} GiB) in {gen_s:.1f} s", file=sys.stderr)

    k = 10
    (_, one_rows), one_s = timed(lambda: topk_exact(qt[:1], dbt, k), repeat=5)
    (exact_s, exact_i), batch_s = timed(lambda: topk_exact(qt, dbt, k))
    # the chunked product against the plain one (full (Q, N) matrix, then topk) on 100 queries
    sub = qt[:100]
    full = (sub @ dbt.T).topk(k, dim=1)
    same = torch.equal(topk_exact(sub, dbt, k)[1], full.indices)
    del full
    print(f"exact: 1 query {one_s * 1e3:.0f} ms, {args.queries} queries {batch_s:.2f} s, equal={same}",
          file=sys.stderr)

    factory = recommended_factory(args.n)
    ann, build_s = timed(lambda: ann_index(db, factory))
    rows = []
    for nprobe in args.nprobe:
        ann._set_nprobe(nprobe)
        ann.search(qt[:10], k)  # warm up
        (_, approx), s = timed(lambda: ann.search(qt, k))
        (_, _), one = timed(lambda: ann.search(qt[:1], k), repeat=5)
        rows.append((nprobe, recall_at_k(approx, exact_i), s, one))
        print(f"{factory} nprobe={nprobe}: recall@10 {rows[-1][1]:.4f}, {s:.2f} s / {args.queries} queries",
              file=sys.stderr)

    cmd = "python benchmarks/bench_search.py" + ("" if argv is None else " " + " ".join(argv))
    if argv is None and len(sys.argv) > 1:
        cmd += " " + " ".join(sys.argv[1:])
    lines = [
        f"## Search speed: {args.n:,} x {args.dim} float32 vectors ({db.nbytes / 2**30:.2f} GiB)",
        "",
        f"Synthetic unit vectors around {args.clusters:,} random centres (noise of norm {args.noise} around a unit "
        f"centre: cosine ~{1 / (1 + args.noise ** 2):.2f} within a cluster, ~0 across); "
        f"{args.queries:,} fresh queries from the same mixture; k = {k}. {cpu_name()}, "
        f"{os.cpu_count()} cores shared with other jobs (load average {load_before} before the run, "
        f"{load_average()} after), torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"faiss {_faiss_version()}, Python {platform.python_version()}.",
        "",
        "| exact search (`topk_exact`, blocks of 65,536 rows) | time |",
        "| --- | ---: |",
        f"| 1 query (median of 5) | {one_s * 1e3:.0f} ms |",
        f"| {args.queries:,} queries in one call | {batch_s:.2f} s ({batch_s / args.queries * 1e3:.1f} ms/query) |",
        "",
        f"Chunked top-10 identical to the full (Q, N) product + `topk` on 100 queries: **{same}**.",
        "",
        f"ANN: faiss `{factory}` (inner product), the index faiss's guidelines give for this size "
        f"(`recommended_factory`); built (k-means on {min(args.n, 64 * int(factory[3:].split(',')[0])):,} "
        f"sampled vectors, then adding all) in {build_s:.1f} s.",
        "",
        "| nprobe | recall@10 vs exact | time, all queries | ms/query (batch) | 1 query, median of 5 |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for nprobe, rec, s, one in rows:
        lines.append(f"| {nprobe} | {rec:.4f} | {s:.3f} s | {s / args.queries * 1e3:.2f} | {one * 1e3:.1f} ms |")
    lines += ["", f"Command: `{cmd}`"]
    text = "\n".join(lines)
    if args.out == "-":
        print(text)
    else:
        write_section(Path(args.out), f"bench_search noise={args.noise:g}", text)
        print(f"-> {args.out}", file=sys.stderr)
    return 0


def _faiss_version() -> str:
    try:
        import faiss

        return faiss.__version__
    except ImportError:
        return "missing"


if __name__ == "__main__":
    sys.exit(main())
