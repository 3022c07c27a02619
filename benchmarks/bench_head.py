"""Building the ImageNet zero-shot head: 1000 classes x 80 templates, ViT-B/32 text tower.

Random weights of the real shapes (the cost does not depend on the values), CPU, torch
threads 2. Measures, in one process:

1. fast path (`build_head(..., fast=True)`, the default): all 80,000 prompts, tokenised
   once, duplicates encoded once, sorted by length, each batch cut after its longest
   prompt. Timed in full.
2. the references' way (`fast=False`): every prompt at 77 tokens in the original order.
   At about 21 texts/s on this machine the full 80,000 take about an hour, so by default
   a fixed random subset of classes (`--slow-classes`, all 80 templates each) is timed
   and the full time extrapolated per prompt; `--full-slow` times all of it instead.
   The same subset is also built with the fast path, and the heads are compared
   (max |difference| of the weights), as are the subset's rows of the full fast head.
3. a rebuild from the disk cache: with the weights fingerprint already memoised on the
   model (a second build in the same process) and with it recomputed (what a new
   process pays: hashing all ~600 MB of ViT-B/32 weights).

    .venv/bin/python benchmarks/bench_head.py                 # writes benchmarks/results/head.md
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# On a shared, oversubscribed CPU, OpenMP threads that spin while waiting for each other
# made 2-thread inference up to 25x slower than 1 thread here; passive waiting avoids it.
# Must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="ViT-B/32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--slow-classes", type=int, default=25,
                   help="classes (x 80 templates) timed on the slow path [25 = 2,000 prompts]")
    p.add_argument("--full-slow", action="store_true", help="time the slow path on all 80,000 prompts")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "head.md"))
    args = p.parse_args(argv)

    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    os.environ["CLIPKIT_CACHE"] = tempfile.mkdtemp(prefix="clipkit-bench-head-")  # a cold, private cache
    os.environ.pop("CLIPKIT_NO_CACHE", None)

    from clipkit.models import create_model
    from clipkit.templates import load_classnames, load_templates
    from clipkit.tokenizer import get_tokenizer
    from clipkit.zeroshot import build_head

    load_before = os.getloadavg()[0]
    torch.manual_seed(0)
    model = create_model(args.model).eval()
    tok = get_tokenizer()
    names, templates = load_classnames("imagenet"), load_templates("imagenet")
    n_prompts = len(names) * len(templates)
    ids = tok([t.format(c) for c in names for t in templates])
    lengths = ids.argmax(1) + 1
    distinct = len({tuple(r) for r in ids.tolist()})
    print(f"{n_prompts} prompts, {distinct} distinct, token lengths {int(lengths.min())}..{int(lengths.max())} "
          f"(mean {lengths.float().mean():.1f})", flush=True)

    def timed(fn):
        t = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t

    # 1. fast path, everything
    fast_full, t_fast = timed(lambda: build_head(model, names, templates, cache=False, batch_size=args.batch_size,
                                                 progress=False))
    print(f"fast path, all {n_prompts}: {t_fast:.1f} s ({n_prompts / t_fast:.0f} prompts/s)", flush=True)

    # 2. the references' way on a fixed class subset (or everything)
    if args.full_slow:
        subset = list(range(len(names)))
    else:
        rng = np.random.default_rng(0)
        first_of_name = [i for i, n in enumerate(names) if names.index(n) == i]  # no repeated names
        subset = sorted(rng.choice(first_of_name, size=args.slow_classes, replace=False).tolist())
    sub_names = [names[i] for i in subset]
    n_sub = len(sub_names) * len(templates)
    slow_sub, t_slow = timed(lambda: build_head(model, sub_names, templates, cache=False, fast=False,
                                                batch_size=args.batch_size, progress=False))
    fast_sub, t_fast_sub = timed(lambda: build_head(model, sub_names, templates, cache=False, fast=True,
                                                    batch_size=args.batch_size, progress=False))
    diff_sub = float((slow_sub.weight - fast_sub.weight).abs().max())
    diff_full_rows = float((slow_sub.weight - fast_full.weight[subset]).abs().max())
    t_slow_full = t_slow * n_prompts / n_sub
    print(f"slow path, {n_sub} prompts: {t_slow:.1f} s ({n_sub / t_slow:.1f} prompts/s) -> "
          f"{'measured' if args.full_slow else 'extrapolated'} {t_slow_full:.0f} s for all", flush=True)
    print(f"fast path, same {n_sub}: {t_fast_sub:.1f} s; max |w_slow - w_fast| = {diff_sub:.2e} "
          f"(subset rows of the full fast head: {diff_full_rows:.2e})", flush=True)

    # 3. the disk cache
    build_head(model, names, templates, batch_size=args.batch_size, progress=False)  # writes the entry
    cached, t_hit = timed(lambda: build_head(model, names, templates, progress=False))
    object.__delattr__(model, "_clipkit_fingerprint") if hasattr(model, "_clipkit_fingerprint") else None
    cached2, t_hit_cold = timed(lambda: build_head(model, names, templates, progress=False))
    same = torch.equal(cached.weight, fast_full.weight) and torch.equal(cached2.weight, fast_full.weight)
    print(f"cache hit: {t_hit:.3f} s (fingerprint memoised), {t_hit_cold:.2f} s (fingerprint recomputed); "
          f"identical weights: {same}", flush=True)

    speedup = t_slow_full / t_fast
    slow_label = "measured" if args.full_slow else f"extrapolated from {n_sub:,} prompts ({len(sub_names)} classes x 80)"
    cmd = "python benchmarks/bench_head.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    lines = [
        f"# ImageNet zero-shot head: {len(names)} classes x {len(templates)} templates, {args.model} text tower",
        "",
        f"Random weights (seed 0), CPU, torch {torch.__version__}, {args.threads} threads, batch {args.batch_size}, "
        f"{platform.machine()}, Python {platform.python_version()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}. "
        f"The 2 cores are shared with other jobs "
        f"(load average {load_before:.2f} before the run), so absolute times are noisy; the ratio is the point.",
        f"Prompts: {n_prompts:,} ({distinct:,} distinct token sequences), {int(lengths.min())}-{int(lengths.max())} "
        f"tokens with start/end (mean {lengths.float().mean():.1f}).",
        "",
        "| path | prompts timed | time (s) | prompts/s | full head (s) |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| all at 77 tokens, in order (the references' way, `fast=False`) | {n_sub:,} | {t_slow:.1f} | "
        f"{n_sub / t_slow:.1f} | {t_slow_full:,.0f} ({'measured' if args.full_slow else 'extrapolated'}) |",
        f"| clipkit fast path, same subset | {n_sub:,} | {t_fast_sub:.1f} | {n_sub / t_fast_sub:.0f} | - |",
        f"| **clipkit fast path (default)** | {n_prompts:,} | {t_fast:.1f} | {n_prompts / t_fast:.0f} | "
        f"**{t_fast:.1f}** |",
        f"| rebuild from the disk cache, fingerprint memoised | - | {t_hit:.3f} | - | {t_hit:.3f} |",
        f"| rebuild from the disk cache, fingerprint recomputed (new process) | - | {t_hit_cold:.2f} | - | "
        f"{t_hit_cold:.2f} |",
        "",
        f"**Speed-up of the fast path over the references' way: x{speedup:.1f}** (slow path {slow_label}).",
        "",
        f"Exactness: max |weight difference| between the slow and fast heads on the subset: {diff_sub:.2e}; "
        f"between the slow subset head and the same rows of the full fast head: {diff_full_rows:.2e} "
        "(float32 rounding; the causal text tower makes the cut-off padding irrelevant). "
        f"Cache hits return bit-identical weights: {same}.",
        "",
        f"Command: `{cmd}`",
        "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
