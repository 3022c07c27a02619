"""The gain of CLIP reranking: attribute accuracy of a random generated sample
vs CLIP's top-1 of N, judged by a classifier that is independent of CLIP.

For every caption "a {colour} {shape}" (every colour x shape pair, the nine held-out
pairs of `synth.HELDOUT_PAIRS` included; with --captions-per-pair k, the pair is also
worded with the next k-1 shape templates: "a photo of a {colour} {shape}.", ...), the
generator draws n samples (caption i uses seed `--seed` + i). The attribute judge
(`benchmarks/judge.py`, a CNN trained on ground-truth colour and shape labels of renders of
every pair) says whether each sample shows the caption's colour and shape; the reranker
(`clipkit.Reranker`, CLIP) scores each sample against its caption.

Estimators, per caption, from its n samples with judge verdicts m_j in {0, 1}:

- random sample: mean_j m_j, the exact expected accuracy of one sample drawn at random.
- CLIP top-1 of N (N <= n): the expected verdict of CLIP's best-scored sample among N
  drawn without replacement from the n. With the samples sorted by CLIP score (rank
  r = 1 best), the best of a random N-subset is rank r with probability
  C(n - r, N - 1) / C(n, N), so the estimate is sum_r m_(r) C(n - r, N - 1) / C(n, N):
  the average over all N-subsets (the U-statistic), exact for N = 1 (= random) and
  N = n (the single best), lower in variance than one block of N for small N.
- oracle of N: the chance that at least one of N such samples matches,
  1 - C(n - k, N) / C(n, N) with k matching samples: the ceiling of any reranker.

Figures are means over captions, with a 95% interval (1.96 standard errors over
captions), for seen pairs, held-out pairs and all.

The judge's own accuracy is reported twice: on fresh renders (its validation set, saved
with its weights) and on dVAE round trips of fresh renders (decode(encode(x)) through the
generator's dVAE: the softer images a generator can at best produce).

    # the full measurement (shipped generator, shipped CLIP, shipped judge), one thread:
    .venv/bin/python benchmarks/rerank_gain.py --threads 1
    # a smoke test:
    .venv/bin/python benchmarks/rerank_gain.py --pairs 10 --n 8 --out-dir /tmp/rg \
        --gen-weights random:synth-mini --clip-weights runs/synth/checkpoint.pt
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# Passive OpenMP waiting: spinning threads on a shared, oversubscribed CPU cost more than
# they save (see bench_head.py). Must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

N_VALUES = (1, 4, 16, 32, 64)
TARGET_POINTS = 20.0  # the target benchmarks/README.md reports against: top-1 of 32 at least 20 points above random


# ---------------------------------------------------------------------------
# Estimators (pure functions of one caption's verdicts and scores)
# ---------------------------------------------------------------------------


def top1_of_n(matches, scores, N: int) -> float:
    """Expected verdict of the best-scored of N samples drawn without replacement."""
    import torch

    n = len(matches)
    if not 1 <= N <= n:
        raise ValueError(f"N must lie in [1, {n}], got {N}")
    order = torch.sort(torch.as_tensor(scores, dtype=torch.float64), descending=True, stable=True).indices
    m = torch.as_tensor(matches, dtype=torch.float64)[order]
    total = math.comb(n, N)
    weights = torch.tensor([math.comb(n - r, N - 1) / total for r in range(1, n + 1)], dtype=torch.float64)
    return float((weights * m).sum())


def oracle_of_n(matches, N: int) -> float:
    """Chance that at least one of N samples (without replacement) matches."""
    n, k = len(matches), int(sum(bool(x) for x in matches))
    return 1.0 - math.comb(n - k, N) / math.comb(n, N)


def summarise(values: list[float]) -> dict:
    """Mean and 95% half-width (1.96 standard errors) over captions."""
    k = len(values)
    mean = sum(values) / k if k else float("nan")
    var = sum((v - mean) ** 2 for v in values) / (k - 1) if k > 1 else 0.0
    return {"mean": mean, "ci95": 1.96 * math.sqrt(var / k) if k else float("nan"), "captions": k}


# ---------------------------------------------------------------------------
# Loading the three models
# ---------------------------------------------------------------------------


def _shown(path: str) -> str:
    """A path as the report shows it: relative to the repository when inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path(__file__).resolve().parents[1]))
    except ValueError:
        return str(path)


def _file_id(path: str | None) -> str | None:
    if path is None or not Path(path).is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def load_generator(spec: str | None):
    """None: the shipped generator; "random:<config>": random weights (smoke tests only);
    else a file written by `Generator.save`."""
    import torch

    from clipkit.data.synth import all_pairs
    from clipkit.generator import Generator, load_default
    from clipkit.generator.generator import default_weights_path

    if spec is None:
        return load_default(), str(default_weights_path())
    if spec.startswith("random:"):
        from clipkit.generator import DALLETransformer, DVAE, get_generator_config

        from clipkit.generator.transformer import build_text_vocab

        torch.manual_seed(0)
        dvae_cfg, tf_cfg = get_generator_config(spec.split(":", 1)[1])
        gen = Generator(DVAE(dvae_cfg), DALLETransformer(tf_cfg)).eval()
        if tf_cfg.compact_vocab:  # the words of this benchmark's captions
            words = [f"{t} {c} {s}" for t in ("a", "a photo of a", "an image of a") for c, s in all_pairs()]
            gen.transformer.set_text_vocab(build_text_vocab(words, gen.tokenizer))
        return gen, spec
    return Generator.load(spec), spec


def load_reranker(spec: str | None):
    from clipkit.rerank import Reranker

    if spec is None:
        from clipkit.checkpoints import _PACKAGE_DIR, _SHIPPED

        return Reranker(), str(_PACKAGE_DIR / _SHIPPED["clipkit-synth"])
    return Reranker(spec), spec


def load_judge(spec: str | None):
    from benchmarks.judge import Judge, default_weights_path, load_default

    if spec is None:
        return load_default(), str(default_weights_path())
    return Judge.load(spec), spec


# ---------------------------------------------------------------------------
# The measurement
# ---------------------------------------------------------------------------


def build_captions(pairs: list[tuple[str, str]], per_pair: int) -> list[dict]:
    from clipkit.data.synth import SHAPE_TEMPLATES

    # "a {}" first: the plain caption the target is stated for; the others are training-grammar paraphrases.
    templates = ["a {}"] + [t for t in SHAPE_TEMPLATES if t != "a {}"]
    if per_pair > len(templates):
        raise ValueError(f"--captions-per-pair {per_pair} is more than the {len(templates)} templates")
    return [{"caption": templates[t].format(f"{c} {s}"), "colour": c, "shape": s}
            for t in range(per_pair) for c, s in pairs]


def as_uint8(images):
    """Images in [0, 1] -> uint8 in [0, 255]: what a PIL image of them would hold."""
    import torch

    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def dvae_round_trip(dvae, images):
    """decode(encode(images)) of uint8 renders (N, 3, S, S), as uint8, in batches of 64."""
    import torch

    with torch.no_grad():
        return as_uint8(torch.cat([dvae.reconstruct(x.float() / 255) for x in images.split(64)]))


def judge_on_dvae_round_trip(gen, judge, n: int = 810) -> dict | None:
    """The judge's accuracy on decode(encode(render)) of fresh renders of every pair."""
    from benchmarks.judge import render_labelled

    size = gen.dvae.config.image_size
    images, colour, shape = render_labelled(n, stream=102, image_size=size, config=judge.config)
    recon = dvae_round_trip(gen.dvae, images)
    return {"renders": judge.evaluate(images, colour, shape), "dvae_round_trip": judge.evaluate(recon, colour, shape)}


def measure(args) -> dict:
    import torch

    from clipkit.data.synth import HELDOUT_PAIRS, all_pairs

    t_start = time.perf_counter()
    gen, gen_name = load_generator(args.gen_weights)
    reranker, clip_name = load_reranker(args.clip_weights)
    judge, judge_name = load_judge(args.judge_weights)
    held = set(HELDOUT_PAIRS)
    pairs = all_pairs()
    if args.pairs is not None:  # smoke tests: every held-out pair first, then seen ones
        pairs = list(HELDOUT_PAIRS) + [p for p in pairs if p not in held]
        pairs = pairs[:args.pairs]
    captions = build_captions(pairs, args.captions_per_pair)
    n = args.n
    n_values = [N for N in N_VALUES if N <= n] or [n]

    gen_kw = {k: v for k, v in (("guidance", args.guidance), ("temperature", args.temperature),
                                ("filter_top_k", args.filter_top_k), ("top_p", args.top_p)) if v is not None}
    rows, t_gen, t_clip, t_judge = [], 0.0, 0.0, 0.0
    for i, cap in enumerate(captions):
        t0 = time.perf_counter()
        images = gen.generate(cap["caption"], n=n, seed=args.seed + i, batch_size=args.batch_size, **gen_kw)
        t1 = time.perf_counter()
        scores = reranker.score(list(images), cap["caption"]).reshape(n)
        t2 = time.perf_counter()
        c_idx, s_idx = judge.predict_indices(list(images))
        matches = judge.matches_indices(c_idx, s_idx, cap["colour"], cap["shape"])
        t3 = time.perf_counter()
        t_gen, t_clip, t_judge = t_gen + t1 - t0, t_clip + t2 - t1, t_judge + t3 - t2
        colour_ok = (c_idx == judge.colours_.index(cap["colour"])).float().mean().item()
        shape_ok = (s_idx == judge.shapes_.index(cap["shape"])).float().mean().item()
        row = {**cap, "seed": args.seed + i, "heldout": (cap["colour"], cap["shape"]) in held,
               "random": matches.float().mean().item(), "random_colour": colour_ok, "random_shape": shape_ok,
               "top1": {str(N): top1_of_n(matches, scores, N) for N in n_values},
               "oracle": {str(N): oracle_of_n(matches.tolist(), N) for N in n_values},
               "matches": matches.int().tolist(), "scores": [round(float(s), 5) for s in scores]}
        rows.append(row)
        if args.progress:
            print(f"[{i + 1}/{len(captions)}] {cap['caption']!r}: random {row['random']:.3f}, "
                  f"top-1 of {n_values[-1]} {row['top1'][str(n_values[-1])]:.0f}, "
                  f"{t3 - t0:.1f} s", file=sys.stderr, flush=True)

    groups = {"seen": [r for r in rows if not r["heldout"]], "heldout": [r for r in rows if r["heldout"]],
              "all": rows}
    summary = {}
    for name, rs in groups.items():
        if not rs:
            continue
        summary[name] = {
            "random": summarise([r["random"] for r in rs]),
            "random_colour": summarise([r["random_colour"] for r in rs]),
            "random_shape": summarise([r["random_shape"] for r in rs]),
            "top1": {str(N): summarise([r["top1"][str(N)] for r in rs]) for N in n_values},
            "oracle": {str(N): summarise([r["oracle"][str(N)] for r in rs]) for N in n_values},
        }
        if "32" in summary[name]["top1"]:
            summary[name]["gain_top1_of_32_points"] = 100 * (summary[name]["top1"]["32"]["mean"]
                                                             - summary[name]["random"]["mean"])
    t_dvae = time.perf_counter()
    judge_dvae = judge_on_dvae_round_trip(gen, judge) if not args.skip_dvae_check else None
    t_dvae = time.perf_counter() - t_dvae
    return {
        "command": " ".join(shlex.quote(a) for a in [".venv/bin/python", "benchmarks/rerank_gain.py", *sys.argv[1:]]),
        "generator": {"weights": _shown(gen_name), "sha256_16": _file_id(gen_name),
                      "defaults": gen.defaults, "settings": gen_kw},
        "clip": {"weights": _shown(clip_name), "sha256_16": _file_id(clip_name)},
        "judge": {"weights": _shown(judge_name), "sha256_16": _file_id(judge_name), "metrics": judge.metrics_,
                  "check": judge_dvae},
        "n": n, "n_values": n_values, "captions": len(rows), "pairs": len(pairs),
        "heldout_captions": len(groups["heldout"]), "seen_captions": len(groups["seen"]),
        "estimators": {"random": "mean over the n samples of the judge's verdict",
                       "top1": "sum_r m_(r) C(n-r, N-1)/C(n, N): CLIP's best of N drawn from the n, "
                               "averaged over all N-subsets",
                       "oracle": "1 - C(n-k, N)/C(n, N): at least one of N matches"},
        "summary": summary,
        "seconds": {"total": time.perf_counter() - t_start, "generate": t_gen, "clip": t_clip,
                    "judge": t_judge, "judge_dvae_check": t_dvae},
        "threads": args.threads, "torch": torch.__version__, "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "per_caption": rows,
    }


# ---------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = result["n_values"]
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    styles = {"seen": ("tab:blue", "seen pairs"), "heldout": ("tab:red", "held-out pairs"),
              "all": ("black", "all")}
    for name, (colour, label) in styles.items():
        s = result["summary"].get(name)
        if s is None:
            continue
        y = [100 * s["top1"][str(N)]["mean"] for N in ns]
        e = [100 * s["top1"][str(N)]["ci95"] for N in ns]
        k = s["random"]["captions"]
        ax.errorbar(ns, y, yerr=e, color=colour, marker="o", capsize=3, lw=1.8 if name == "all" else 1.2,
                    label=f"CLIP top-1 of N, {label} ({k} captions)")
        ax.axhline(100 * s["random"]["mean"], color=colour, ls="--", lw=0.9,
                   label=f"random sample, {label}")
        if name == "all":
            ax.plot(ns, [100 * s["oracle"][str(N)]["mean"] for N in ns], color="gray", ls=":", marker=".",
                    label="oracle: any of N matches (all)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(N) for N in ns])
    ax.set_xlabel("N samples per caption (CLIP keeps the best)")
    ax.set_ylabel("attribute accuracy (judge), %")
    ax.set_ylim(0, 100)
    j = result["judge"]["metrics"].get("val", {})
    ax.set_title(f"Reranking gain, judge accuracy {100 * j.get('joint', float('nan')):.1f}% "
                 f"(n={result['n']})", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def markdown(result: dict) -> str:
    ns = result["n_values"]
    s = result["summary"]
    names = [k for k in ("seen", "heldout", "all") if k in s]
    head = {"seen": "seen pairs", "heldout": "held-out pairs", "all": "all"}

    def cell(v):
        return f"{100 * v['mean']:.1f} ± {100 * v['ci95']:.1f}"

    lines = ["# Reranking gain: random sample vs CLIP's top-1 of N", "",
             "Attribute accuracy (%, judge says the image shows the caption's colour and shape; "
             "mean ± 95% interval over captions).", "",
             "| | " + " | ".join(f"{head[k]} ({s[k]['random']['captions']})" for k in names) + " |",
             "|---|" + "---|" * len(names),
             "| random sample | " + " | ".join(cell(s[k]["random"]) for k in names) + " |"]
    for N in ns:
        lines.append(f"| CLIP top-1 of {N} | " + " | ".join(cell(s[k]["top1"][str(N)]) for k in names) + " |")
    lines.append(f"| oracle, any of {ns[-1]} | " + " | ".join(cell(s[k]["oracle"][str(ns[-1])]) for k in names) + " |")
    lines.append("| random sample, colour only | " + " | ".join(cell(s[k]["random_colour"]) for k in names) + " |")
    lines.append("| random sample, shape only | " + " | ".join(cell(s[k]["random_shape"]) for k in names) + " |")
    if "32" in s.get("all", {}).get("top1", {}):
        gains = ", ".join(f"{head[k]} {s[k]['gain_top1_of_32_points']:+.1f}" for k in names)
        ok = s["all"]["gain_top1_of_32_points"] >= TARGET_POINTS
        lines += ["", f"Gain of top-1 of 32 over a random sample, points: {gains} "
                      f"(target ≥ {TARGET_POINTS:.0f}: {'met' if ok else 'NOT met'})."]
    j = result["judge"]
    val = j["metrics"].get("val", {})
    lines += ["", "## The judge", "",
              f"`{j['weights']}` (sha256 {j['sha256_16']}…): a CNN independent of CLIP, trained on "
              f"{j['metrics'].get('n_train', '?')} renders of all 81 colour × shape pairs "
              f"({j['metrics'].get('data', '')}).", "",
              f"- validation renders ({val.get('n', '?')}): colour {100 * val.get('colour', float('nan')):.2f}%, "
              f"shape {100 * val.get('shape', float('nan')):.2f}%, joint {100 * val.get('joint', float('nan')):.2f}%"]
    worst = j["metrics"].get("val_per_pair_min_joint")
    if worst:
        lines.append(f"- its worst pair on them: {worst['pair']} ({100 * worst['joint']:.0f}%)")
    if j.get("check"):
        for k, label in (("renders", "fresh renders"), ("dvae_round_trip", "dVAE round trips of them")):
            v = j["check"][k]
            lines.append(f"- {label} ({v['n']}): colour {100 * v['colour']:.2f}%, shape {100 * v['shape']:.2f}%, "
                         f"joint {100 * v['joint']:.2f}%")
    sec = result["seconds"]
    g = result["generator"]
    lines += ["", "## Setup", "",
              f"- command: `{result['command']}`",
              f"- wall time: {sec['total']:.0f} s (generate {sec['generate']:.0f} s, CLIP {sec['clip']:.0f} s, "
              f"judge {sec['judge']:.0f} s, judge dVAE check {sec['judge_dvae_check']:.0f} s), "
              f"{result['threads']} thread(s), {result['machine']}, torch {result['torch']}",
              f"- generator: `{g['weights']}` (sha256 {g['sha256_16']}), defaults {g['defaults']}, "
              f"settings {g['settings'] or 'defaults'}",
              f"- CLIP: `{result['clip']['weights']}` (sha256 {result['clip']['sha256_16']})",
              f"- {result['captions']} captions ({result['seen_captions']} seen, {result['heldout_captions']} "
              f"held-out), {result['pairs']} pairs, n = {result['n']} samples each",
              "- estimators: " + "; ".join(f"{k}: {v}" for k, v in result["estimators"].items()),
              ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n\n".join(__doc__.split("\n\n")[-1:]))
    p.add_argument("--captions-per-pair", type=int, default=2,
                   help="wordings per colour x shape pair [2: 162 captions, 18 held-out]")
    p.add_argument("--pairs", type=int, default=None,
                   help="only the first PAIRS pairs, held-out ones first (smoke tests) [all 81]")
    p.add_argument("--n", type=int, default=64, help="samples per caption [64]")
    p.add_argument("--seed", type=int, default=0, help="caption i uses seed SEED + i")
    p.add_argument("--gen-weights", default=None,
                   help="Generator.save file, or random:<config> for a smoke test [the shipped generator]")
    p.add_argument("--clip-weights", default=None, help="CLIP weights for Reranker [clipkit-synth]")
    p.add_argument("--judge-weights", default=None, help="judge file [benchmarks/weights/judge.safetensors]")
    p.add_argument("--guidance", type=float, default=None, help="[the generator's default]")
    p.add_argument("--temperature", type=float, default=None, help="[1.0]")
    p.add_argument("--filter-top-k", type=int, default=None, help="sample among the k likeliest codes [all]")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling mass [1.0: off]")
    p.add_argument("--batch-size", type=int, default=64, help="generator batch")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--skip-dvae-check", action="store_true", help="skip the judge's dVAE round-trip check")
    p.add_argument("--out-dir", default=str(REPO / "benchmarks" / "results"))
    p.add_argument("--name", default="rerank_gain", help="output file stem [rerank_gain]")
    p.add_argument("--progress", action="store_true", help="one line per caption on stderr")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    result = measure(args)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, out / f"{args.name}.png")
    md = markdown(result)
    (out / f"{args.name}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
