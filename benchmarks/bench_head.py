"""Building the ImageNet zero-shot head: 1000 classes x 80 templates, ViT-B/32 text tower.

Random weights of the real shapes (the cost does not depend on the values), CPU, torch
threads 2. Three ways to encode the prompts, all giving the same head to float rounding:

1. `fast=False`, the references' way: every prompt at 77 tokens, in order.
2. `fast="length"` (clipkit's previous default): each distinct prompt once, sorted by
   length, each batch cut after its longest prompt.
3. `fast=True` / `"prefix"` (the default): each distinct shared prefix once
   (`clipkit.models.prefix`); only each prompt's own tokens run against the prefix's
   keys/values.

The 77-token path runs at about 15-20 prompts/s here, so the full 80,000 would take over
an hour: it is timed on a subset of classes and extrapolated per prompt. To keep load
from other processes from favouring one path, the work is interleaved: the classes are
cut into `--pieces` pieces of 100, and each round times, back to back, the 77-token path
on `--slow-per-piece` classes of the piece (all 80 templates), the length path and the
prefix path on the same classes, and the prefix path on the whole piece. The full head
time is the sum of the prefix path over the pieces (every one of the 80,000 prompts);
then the whole head is also built in one call. Finally a rebuild from the disk cache.

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
    p.add_argument("--batch-size", type=int, default=64, help="prompts per batch of the 77-token and length paths")
    p.add_argument("--pieces", type=int, default=10, help="rounds; the classes are cut into this many pieces [10]")
    p.add_argument("--slow-per-piece", type=int, default=2,
                   help="classes (x 80 templates) of each piece timed on the 77-token path [2]")
    p.add_argument("--no-single", action="store_true", help="skip the one-call build of the whole head")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "head.md"))
    p.add_argument("--append", action="store_true",
                   help="add this run to --out as a section at the end (headings one level down) instead of "
                        "replacing the file")
    args = p.parse_args(argv)

    import numpy as np
    import torch

    from benchmarks._machine import cpu_name, load_average

    torch.set_num_threads(args.threads)
    os.environ["CLIPKIT_CACHE"] = tempfile.mkdtemp(prefix="clipkit-bench-head-")  # a cold, private cache
    os.environ.pop("CLIPKIT_NO_CACHE", None)

    from clipkit.models import create_model
    from clipkit.templates import load_classnames, load_templates
    from clipkit.tokenizer import get_tokenizer
    from clipkit.zeroshot import build_head, class_embeddings, head_from_embeddings

    load_before = load_average()
    t_begin = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    torch.manual_seed(0)
    model = create_model(args.model).eval()
    tok = get_tokenizer()
    names, templates = load_classnames("imagenet"), load_templates("imagenet")
    n_prompts = len(names) * len(templates)
    ids = tok([t.format(c) for c in names for t in templates])
    lengths = ids.argmax(1) + 1
    distinct = {tuple(r[:n]) for r, n in zip(ids.tolist(), lengths.tolist())}
    trie = len({s[:j] for s in distinct for j in range(1, len(s) + 1)})
    print(f"{n_prompts} prompts, {len(distinct)} distinct, token lengths {int(lengths.min())}..{int(lengths.max())} "
          f"(mean {lengths.float().mean():.1f}); {trie} distinct prefixes (token positions of the prefix tree)",
          flush=True)

    def timed(fn):
        t = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - t

    def head(classes, fast=True):
        """The head's weights (C, D), no disk cache. ImageNet's list repeats a few names
        ("crane", "maillot"), which build_head refuses; the arithmetic is build_head's."""
        return head_from_embeddings(class_embeddings(model, classes, templates, fast=fast,
                                                     batch_size=args.batch_size, progress=False))

    # Interleaved rounds over the pieces
    rng = np.random.default_rng(0)
    size = -(-len(names) // args.pieces)
    t = {"slow": 0.0, "length": 0.0, "prefix_sub": 0.0, "prefix_all": 0.0}
    n_slow = 0
    diff_len = diff_pre = diff_rows = 0.0
    full_rows = []
    for r in range(args.pieces):
        piece = list(range(r * size, min((r + 1) * size, len(names))))
        if not piece:
            continue
        sub = sorted(rng.choice(piece, size=min(args.slow_per_piece, len(piece)), replace=False).tolist())
        sub_names = [names[i] for i in sub]
        slow, dt = timed(lambda: head(sub_names, False))
        t["slow"] += dt
        by_length, dt = timed(lambda: head(sub_names, "length"))
        t["length"] += dt
        by_prefix, dt = timed(lambda: head(sub_names, True))
        t["prefix_sub"] += dt
        piece_names = [names[i] for i in piece]
        whole, dt = timed(lambda: head(piece_names))
        t["prefix_all"] += dt
        full_rows.append(whole)
        n_slow += len(sub_names) * len(templates)
        rows = [piece.index(i) for i in sub]
        diff_len = max(diff_len, float((slow - by_length).abs().max()))
        diff_pre = max(diff_pre, float((slow - by_prefix).abs().max()))
        diff_rows = max(diff_rows, float((slow - whole[rows]).abs().max()))
        print(f"round {r + 1}/{args.pieces}: slow {t['slow']:.1f} s, length {t['length']:.1f} s, "
              f"prefix {t['prefix_sub']:.1f} s ({n_slow} prompts); prefix on {len(piece)} classes {dt:.1f} s "
              f"(load {load_average()})", flush=True)
    load_mid = load_average()
    per_prompt_slow = t["slow"] / n_slow
    t_slow_full = per_prompt_slow * n_prompts
    t_len_full = t["length"] / n_slow * n_prompts
    speedup = t_slow_full / t["prefix_all"]

    single = None
    if not args.no_single:
        single_head, t_single = timed(lambda: head(names))
        pieces_weight = torch.cat(full_rows)
        single = (t_single, float((single_head - pieces_weight).abs().max()))
        print(f"whole head in one call: {t_single:.1f} s (load {load_average()})", flush=True)

    # the disk cache (build_head, on the distinct names)
    unique_names = list(dict.fromkeys(names))
    build_head(model, unique_names, templates, batch_size=args.batch_size, progress=False)  # writes the entry
    cached, t_hit = timed(lambda: build_head(model, unique_names, templates, progress=False))
    if hasattr(model, "_clipkit_fingerprint"):
        object.__delattr__(model, "_clipkit_fingerprint")
    cached2, t_hit_cold = timed(lambda: build_head(model, unique_names, templates, progress=False))
    same = torch.equal(cached.weight, cached2.weight)
    load_after = load_average()

    k = args.slow_per_piece
    cmd = "python benchmarks/bench_head.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip()
    lines = [
        f"# ImageNet zero-shot head: {len(names)} classes x {len(templates)} templates, {args.model} text tower",
        "",
        f"Random weights (seed 0), CPU: {cpu_name()} ({os.cpu_count()} cores visible), torch {torch.__version__}, "
        f"{args.threads} threads, Python {platform.python_version()}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}. "
        f"Started {t_begin}. Load average (1/5/15 min): before {load_before}, after the interleaved rounds "
        f"{load_mid}, at the end {load_after}. The 2 cores are shared with other engineers' jobs: a load "
        "above 2 means this run shared them, which slows every row; the rounds are interleaved so the ratios "
        "hold, the absolute times do not.",
        f"Prompts: {n_prompts:,} ({len(distinct):,} distinct token sequences), {int(lengths.min())}-"
        f"{int(lengths.max())} tokens with start/end (mean {lengths.float().mean():.1f}): "
        f"{n_prompts * 77:,} token positions at 77 each, {int(lengths.sum()):,} cut at end-of-text, "
        f"{trie:,} in the prefix tree.",
        "",
        f"{args.pieces} interleaved rounds; each times the three paths on {k} classes x 80 templates of one "
        f"piece of {size} classes, then the prefix path on the whole piece.",
        "",
        "| path | prompts timed | time (s) | prompts/s | full 80,000-prompt head (s) | × 77-token path |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| every prompt at 77 tokens, in order (`fast=False`, the references' way) | {n_slow:,} | {t['slow']:.1f} | "
        f"{n_slow / t['slow']:.1f} | {t_slow_full:,.0f} (extrapolated per prompt) | 1.0 |",
        f"| each prompt once, batches cut at the longest (`fast=\"length\"`, the previous default) | {n_slow:,} | "
        f"{t['length']:.1f} | {n_slow / t['length']:.0f} | {t_len_full:,.0f} (extrapolated per prompt) | "
        f"{t['slow'] / t['length']:.1f} |",
        f"| shared prefixes, same {k}-class subsets (little to share: {k} classes per template) | {n_slow:,} | "
        f"{t['prefix_sub']:.1f} | {n_slow / t['prefix_sub']:.0f} | - | {t['slow'] / t['prefix_sub']:.1f} |",
        f"| **shared prefixes (`fast=True`, the default), all classes in {args.pieces} pieces** | {n_prompts:,} | "
        f"{t['prefix_all']:.1f} | {n_prompts / t['prefix_all']:.0f} | **{t['prefix_all']:.1f}** (measured) | "
        f"**{speedup:.1f}** |",
    ]
    if single is not None:
        lines.append(f"| shared prefixes, the whole head in one call (after the rounds) | {n_prompts:,} | "
                     f"{single[0]:.1f} | {n_prompts / single[0]:.0f} | {single[0]:.1f} (measured) | "
                     f"{t_slow_full / single[0]:.1f} |")
    lines += [
        f"| rebuild from the disk cache, fingerprint memoised | - | {t_hit:.3f} | - | {t_hit:.3f} | - |",
        f"| rebuild from the disk cache, fingerprint recomputed (new process) | - | {t_hit_cold:.2f} | - | "
        f"{t_hit_cold:.2f} | - |",
        "",
        f"**Speed-up of the default (shared prefixes) over the 77-token path: x{speedup:.1f}** (77-token path "
        f"extrapolated from {n_slow:,} prompts timed in the same rounds); over the length path: "
        f"x{t_len_full / t['prefix_all']:.1f}.",
        "",
        f"Exactness (max |weight difference| against the 77-token head on the same classes): length path "
        f"{diff_len:.2e}, prefix path {diff_pre:.2e}, rows of the prefix path's 100-class heads {diff_rows:.2e}"
        + (f"; the one-call head against the pieces' heads {single[1]:.2e}" if single else "")
        + f". Cache hits return bit-identical weights: {same}.",
        "",
        f"Command: `{cmd}`",
        "",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.append and out.exists():  # earlier runs stay; this one becomes a section at the end
        body = "\n".join("#" + ln if ln.startswith("#") else ln for ln in lines)
        out.write_text(out.read_text(encoding="utf-8").rstrip("\n") + "\n\n" + body, encoding="utf-8")
    else:
        out.write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
