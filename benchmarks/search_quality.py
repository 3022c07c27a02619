"""Search quality with the shipped model: index rendered colour x shape scenes, query each
of the 81 colour x shape names, and count how many of the top 10 show that pair.

The scenes are fresh renders of the synthetic world (`synth.colour_shape_eval_set`,
split "all": every pair, the nine held-out pairs the model never saw in training
included, from the validation seed space), saved as PNG files and indexed with
`clipkit.Index.build`, exactly what `clipkit index` does; queries go through
`Index.search`, exactly what `clipkit search` does.

    python benchmarks/search_quality.py                  # 2,000 scenes, writes results/search.md
    python benchmarks/search_quality.py --n 500 --out -  # quick look
"""
from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._machine import cpu_name, load_average  # noqa: E402
from benchmarks.bench_search import write_section  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "search.md"
QUERY_FORMS = {"name": "{}", "a name": "a {}"}  # "red circle", "a red circle"


def main(argv=None) -> int:
    from clipkit.data import synth
    from clipkit.index import Index

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=2000, help="scenes to index [2000]")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--model", default=None, help="CLIP model [the shipped clipkit-synth]")
    p.add_argument("--out", default=str(RESULTS), help="markdown file to update, or - to print only")
    args = p.parse_args(argv)
    load_before = load_average()

    es = synth.colour_shape_eval_set(n=args.n, split="all", seed=args.seed, image_size=args.image_size)
    pairs = synth.all_pairs()
    heldout = {f"{c} {s}" for c, s in synth.HELDOUT_PAIRS}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "scenes"
        root.mkdir()
        truth = {}
        for i, (img, label) in enumerate(zip(es.images[:args.n], es.labels[:args.n])):
            name = f"{i:05d}.png"
            img.save(root / name)
            truth[name] = es.classnames[label]
        t = time.perf_counter()
        report = Index.build(root, Path(tmp) / "index", args.model, progress=False)
        build_s = time.perf_counter() - t
        index = report.index
        per_pair: dict[str, dict[str, float]] = {}
        t = time.perf_counter()
        for form, template in QUERY_FORMS.items():
            for colour, shape in pairs:
                name = f"{colour} {shape}"
                relevant = sum(v == name for v in truth.values())
                hits = index.search(template.format(name), k=max(args.k, relevant))
                found = [truth[h.path] == name for h in hits]
                per_pair.setdefault(name, {})[form] = sum(found[:args.k]) / args.k
                per_pair[name][form + " R"] = sum(found[:relevant]) / relevant  # R-precision
        query_s = (time.perf_counter() - t) / (len(QUERY_FORMS) * len(pairs))
        model_name = index.model_name
        fingerprint = index.fingerprint[:16]

    counts = torch.bincount(torch.tensor(es.labels[:args.n]), minlength=len(pairs))
    lines = [
        f"## Search quality: precision@{args.k} over {args.n:,} rendered scenes, 81 colour x shape queries",
        "",
        f"Model {model_name} (weights {fingerprint}), scenes of {args.image_size} px, {int(counts.min())}-"
        f"{int(counts.max())} per pair (so at least {min(args.k, int(counts.min()))} relevant images per query). "
        f"A hit is relevant when its scene shows the queried pair. Indexing took {build_s:.1f} s "
        f"(`Index.build`, one process), a query {query_s * 1e3:.0f} ms. {cpu_name()}, load average "
        f"{load_before} before, {load_average()} after; torch {torch.__version__}, Python {platform.python_version()}.",
        "",
        f"| query | precision@{args.k}, all 81 pairs | 72 training pairs | 9 held-out pairs | worst pair "
        f"| R-precision (top R = all the pair's scenes), all pairs | held-out pairs |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    summary = {}
    for form, template in QUERY_FORMS.items():
        values = {n: v[form] for n, v in per_pair.items()}
        mean = sum(values.values()) / len(values)
        train = [v for n, v in values.items() if n not in heldout]
        held = [v for n, v in values.items() if n in heldout]
        worst = min(values, key=values.get)
        summary[form] = mean
        r_prec = {n: v[form + " R"] for n, v in per_pair.items()}
        r_held = [v for n, v in r_prec.items() if n in heldout]
        lines.append(f"| `{template.format('red circle')}` | **{mean:.3f}** | {sum(train) / len(train):.3f} | "
                     f"{sum(held) / len(held):.3f} | {worst} ({values[worst]:.1f}) | "
                     f"{sum(r_prec.values()) / len(r_prec):.3f} | {sum(r_held) / len(r_held):.3f} |")
    low = sorted((v["name"], n) for n, v in per_pair.items() if v["name"] < 1.0)
    shown = ", ".join(f"{n} {v:.1f}" for v, n in low[:10]) + (f" and {len(low) - 10} more" if len(low) > 10 else "")
    lines += ["", f"Target: >= 0.9 for the plain names. {len(low)} of 81 pairs below 1.0 with the plain name"
              + (f": {shown}." if low else "."), "",
              f"Command: `python benchmarks/search_quality.py{' ' + ' '.join(sys.argv[1:]) if argv is None and len(sys.argv) > 1 else ''}`"]
    text = "\n".join(lines)
    if args.out == "-":
        print(text)
    else:
        write_section(Path(args.out), "search_quality", text)
        print(f"-> {args.out}", file=sys.stderr)
    print(f"precision@{args.k}: " + ", ".join(f"{f} {v:.3f}" for f, v in summary.items()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
