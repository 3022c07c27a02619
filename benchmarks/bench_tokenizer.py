"""Tokenizer throughput on ImageNet zero-shot prompts (1000 class names x 80 templates).

Times, in one run, clipkit's Tokenizer, Hugging Face's ``CLIPTokenizer`` built from the
same BPE file, and open_clip's ``SimpleTokenizer``, each turning the 80,000 prompts into
a ``[80000, 77]`` id tensor, and checks every row against open_clip.

- cold: a fresh Python process per tokenizer (empty caches) builds it, then times ONE
  call on all prompts. This is the headline figure.
- warm: the same call repeated in this process after a first call filled the caches
  (median of ``--repeats``).

open_clip only imports in the oracle environment, so run the script there; it puts the
repository root on ``sys.path`` to import clipkit:

    /work/oracle-venv/bin/python benchmarks/bench_tokenizer.py

The class names and templates are read (with ``ast``, never executed) from a Python file
that defines ``IMAGENET_CLASSNAMES`` and ``OPENAI_IMAGENET_TEMPLATES`` as literals /
f-string lambdas, by default open_clip's ``zero_shot_metadata.py``. Without one,
``--synthetic`` makes up 1000 class names (figures are then not comparable).
"""
from __future__ import annotations

import argparse
import ast
import gzip
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAYON_NUM_THREADS", "2")  # Hugging Face tokenizers' thread pool

NAMES = ("clipkit", "hf", "open_clip")
LABELS = {"clipkit": "clipkit `Tokenizer`",
          "hf": "HF `CLIPTokenizer` (same vocab)",
          "open_clip": "open_clip `SimpleTokenizer`"}


# ---------------------------------------------------------------------------------------
# prompts
# ---------------------------------------------------------------------------------------

def _template_of(node: ast.AST) -> str:
    """``lambda c: f'a photo of a {c}.'`` -> ``'a photo of a {}.'``"""
    body = node.body if isinstance(node, ast.Lambda) else node
    if isinstance(body, ast.Constant):
        return body.value
    parts = []
    for v in body.values:
        parts.append(v.value.replace("{", "{{").replace("}", "}}")
                     if isinstance(v, ast.Constant) else "{}")
    return "".join(parts)


def load_metadata(path: Path) -> tuple[list[str], list[str]]:
    found = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            found[node.targets[0].id] = node.value
    classes = [ast.literal_eval(e) for e in found["IMAGENET_CLASSNAMES"].elts]
    templates = [_template_of(e) for e in found["OPENAI_IMAGENET_TEMPLATES"].elts]
    return classes, templates


def default_metadata() -> Path | None:
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "zero_shot_metadata.py"
    return path if path.exists() else None


def synthetic_metadata() -> tuple[list[str], list[str]]:
    syll = ["ka", "lo", "mi", "ne", "su", "ra", "ti", "vo", "ze", "pu"]
    classes = [" ".join(syll[i % 10] + syll[i // 10 % 10] + syll[i // 100 % 10] for _ in range(1 + i % 3))
               for i in range(1000)]
    templates = [f"a {adj} photo of a {{}}." for adj in
                 [f"{a}{b}" for a in syll for b in syll[:8]]]
    return classes, templates


def prompts_from(args) -> tuple[list[str], str]:
    if args.synthetic:
        classes, templates = synthetic_metadata()
        source = "synthetic"
    else:
        path = Path(args.metadata) if args.metadata else default_metadata()
        if path is None:
            sys.exit("no class names: pass --metadata PATH (a file defining IMAGENET_CLASSNAMES "
                     "and OPENAI_IMAGENET_TEMPLATES) or --synthetic")
        classes, templates = load_metadata(path)
        source = str(path)
    return [t.format(c) for c in classes for t in templates], f"{len(classes)} classes x {len(templates)} templates from {source}"


# ---------------------------------------------------------------------------------------
# tokenizers: build() -> callable(list[str]) -> LongTensor[N, 77], padding 0
# ---------------------------------------------------------------------------------------

def _hf_from_bpe_file():
    from transformers import CLIPTokenizer
    from clipkit.tokenizer import DEFAULT_VOCAB_PATH, NUM_MERGES, _byte_symbols
    lines = gzip.open(DEFAULT_VOCAB_PATH, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1:NUM_MERGES + 1]]
    chars = [s for _, s in _byte_symbols()]
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    tok = CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=merges)
    assert len(tok) == 49408, f"HF tokenizer has {len(tok)} tokens"
    return tok


def build(name: str):
    if name == "clipkit":
        from clipkit.tokenizer import Tokenizer
        return Tokenizer()
    if name == "open_clip":
        from open_clip.tokenizer import SimpleTokenizer
        return SimpleTokenizer()
    if name == "hf":
        hf = _hf_from_bpe_file()
        eot = hf.eos_token_id

        def call(texts):
            ids = hf(texts, padding="max_length", max_length=77, truncation=True,
                     return_tensors="pt")["input_ids"]
            # HF pads with end-of-text; clip pads with 0 after the first end-of-text
            after = (ids == eot).int().cumsum(1) - (ids == eot).int() > 0
            return ids.masked_fill(after, 0)
        return call
    raise ValueError(name)


def cold(name: str, prompts: list[str]) -> dict:
    import torch
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    tok = build(name)
    t1 = time.perf_counter()
    ids = tok(prompts)
    t2 = time.perf_counter()
    assert tuple(ids.shape) == (len(prompts), 77), ids.shape
    return {"build_s": t1 - t0, "call_s": t2 - t1}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--metadata", help="Python file with IMAGENET_CLASSNAMES / OPENAI_IMAGENET_TEMPLATES")
    ap.add_argument("--synthetic", action="store_true", help="made-up class names (not comparable)")
    ap.add_argument("--repeats", type=int, default=3, help="warm repeats (median reported)")
    ap.add_argument("--only", choices=NAMES, nargs="+", default=list(NAMES))
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "tokenizer.md"))
    ap.add_argument("--cold-child", choices=NAMES, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    prompts, source = prompts_from(args)
    if args.cold_child:
        print(json.dumps(cold(args.cold_child, prompts)))
        return

    import torch
    torch.set_num_threads(2)
    n = len(prompts)
    rows = {}
    for name in args.only:
        child = [sys.executable, __file__, "--cold-child", name]
        child += ["--synthetic"] if args.synthetic else (["--metadata", args.metadata] if args.metadata else [])
        res = subprocess.run(child, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            sys.exit(f"cold run of {name} failed:\n{res.stderr}")
        rows[name] = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"{name}: cold {rows[name]}", file=sys.stderr)

    outputs = {}
    for name in args.only:
        tok = build(name)
        outputs[name] = tok(prompts)  # fills the caches
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            tok(prompts)
            times.append(time.perf_counter() - t0)
        rows[name]["warm_s"] = statistics.median(times)
        print(f"{name}: warm {times}", file=sys.stderr)

    ref = outputs.get("open_clip")
    lines = [
        f"Tokenizers on {n:,} ImageNet prompts ({source.split(' from ')[0]}), "
        f"`[{n}, 77]` LongTensor out, torch threads 2, {platform.processor() or platform.machine()}, "
        f"Python {platform.python_version()}, load average before run "
        f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores.",
        "",
        "| tokenizer | build (s) | **cold: one call, fresh process (texts/s)** | build + cold call (texts/s) "
        "| warm (texts/s) | × open_clip cold | × open_clip warm | rows ≠ open_clip |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in args.only:
        r = rows[name]
        cold_rate, warm_rate = n / r["call_s"], n / r["warm_s"]
        if ref is not None:
            ratio_c = f"{rows['open_clip']['call_s'] / r['call_s']:.2f}"
            ratio_w = f"{rows['open_clip']['warm_s'] / r['warm_s']:.2f}"
            mismatch = f"{int((outputs[name] != ref).any(1).sum())}"
        else:
            ratio_c = ratio_w = mismatch = "n/a"
        with_build = n / (r["build_s"] + r["call_s"])
        lines.append(f"| {LABELS[name]} | {r['build_s']:.3f} | {cold_rate:,.0f} | {with_build:,.0f} | {warm_rate:,.0f} "
                     f"| {ratio_c} | {ratio_w} | {mismatch} |")
    command = " ".join([sys.executable, "benchmarks/bench_tokenizer.py",
                        *(argv if argv is not None else sys.argv[1:])])
    lines += ["", f"Prompts: {source}. Cold runs are separate processes, one after another; "
              f"warm is the median of {args.repeats} calls after a first one. Command: `{command}`."]
    table = "\n".join(lines)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
