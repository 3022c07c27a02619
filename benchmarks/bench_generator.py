"""The shipped generator: sampling speed, dVAE reconstruction error, a sample grid.

One process, one torch thread, CPU. Measures, on the shipped weights (or --weights):

1. image-token sampling speed for a batch of 16 rows at the full length (all grid²
   image tokens after the text), with the key/value cache and with full recomputation of
   the whole prefix at every step, at guidance 1 (one stream) and at the model's default
   guidance (conditional + unconditional streams, 32 rows). tokens/s counts image tokens
   of the 16 requested images. Cache and recomputation draw the same codes (checked).
2. seconds per batch of 16 images end to end (`Generator.generate`: tokenizer, sampling
   at the default settings, dVAE decoding).
3. dVAE reconstruction error through the argmax codes (what the transformer can at best
   reproduce) on the val and held-out splits of the synthetic world.
4. a sample grid PNG, 8 samples (seed 0) per caption, including held-out colour×shape
   pairs (`clipkit.data.synth.HELDOUT_PAIRS`, never rendered in training).
5. optionally (`--clip NAME_OR_PATH`), how often a CLIP model's zero-shot colour×shape
   classifier reads each sample as its caption's pair.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_generator.py   # -> benchmarks/results/generator.md
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from benchmarks._machine import cpu_name, load_average  # noqa: E402

CAPTIONS = [
    ("a green pentagon", False),
    ("a blue circle", False),
    ("a large yellow square", False),
    ("a small pink heart on the left", False),
    ("a red star", True),  # held out
    ("an orange circle", True),  # held out
    ("a cyan square", True),  # held out
]


def _timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def sampling_speed(gen, batch: int, repeats: int) -> list[dict]:
    from clipkit.generator.sample import row_generators, sample_codes

    text = gen.tokenize(["a green pentagon"] * batch)[1]
    N = gen.transformer.config.image_len
    rows = []
    for guidance in sorted({1.0, float(gen.defaults["guidance"])}):
        res = {}
        for use_cache in (True, False):
            def run():
                return sample_codes(gen.transformer, text, guidance=guidance, use_cache=use_cache,
                                    generators=row_generators(0, batch))
            t, codes = _timed(run, repeats if use_cache else max(1, repeats // 2))
            res[use_cache] = (t, codes)
        same = torch.equal(res[True][1], res[False][1])
        rows.append({"guidance": guidance, "cache_s": res[True][0], "full_s": res[False][0],
                     "cache_tps": batch * N / res[True][0], "full_tps": batch * N / res[False][0],
                     "speedup": res[False][0] / res[True][0], "same_codes": same})
    return rows


def dvae_error(gen, count: int) -> list[dict]:
    from clipkit.data.synth import SynthWorld
    from clipkit.transforms import to_tensor
    from clipkit.generator.train import evaluate_dvae

    out = []
    size = gen.dvae.config.image_size
    for split in ("val", "heldout"):
        world = SynthWorld(seed=0, image_size=size, split=split)
        images = torch.stack([to_tensor(world.sample(i).image) for i in range(count)])
        r = evaluate_dvae(gen.dvae, images)
        out.append({"split": split, **r})
    return out


def sample_grid(gen, captions, n: int, path: Path):
    from PIL import Image, ImageDraw

    results = gen.generate([c for c, _ in captions], n=n, seed=0)
    side = results[0][0].size[0] * 2
    label_w, pad = 230, 2
    grid = Image.new("RGB", (label_w + n * (side + pad), len(captions) * (side + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for r, ((caption, held), images) in enumerate(zip(captions, results)):
        y = pad + r * (side + pad)
        draw.text((4, y + side // 2 - 6), caption + ("  [held out]" if held else ""), fill=(0, 0, 0))
        for c, img in enumerate(images):
            grid.paste(img.resize((side, side), Image.NEAREST), (label_w + c * (side + pad), y))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return results


def completion_grid(gen, n: int, path: Path) -> list[str]:
    """Image-prompted completion: three val scenes; per row the original, its dVAE
    reconstruction, the kept top half (the rest grey), then n completions."""
    from PIL import Image

    from clipkit.data.synth import SynthWorld
    from clipkit.transforms import to_tensor

    world = SynthWorld(seed=0, image_size=gen.dvae.config.image_size, split="val")
    g = gen.transformer.config.grid_size
    samples = [world.render("shape", world.rng(i, stream=7)) for i in range(3)]
    side, pad = gen.dvae.config.image_size * 2, 2
    grid = Image.new("RGB", ((n + 3) * (side + pad) + pad, len(samples) * (side + pad) + pad), (255, 255, 255))
    captions = []
    for r, s in enumerate(samples):
        x = to_tensor(s.image)
        codes = gen.dvae.encode(x[None]).flatten(1)
        recon = gen.decode(codes)[0]
        half = gen.decode(codes)[0].copy()
        half.paste((128, 128, 128), (0, half.size[1] // 2, half.size[0], half.size[1]))
        done = gen.generate(s.caption, n=n, seed=0, image_prompt=codes[0], prompt_rows=g // 2)
        row = [s.image, recon, half, *done]
        for c, img in enumerate(row):
            grid.paste(img.resize((side, side), Image.NEAREST), (pad + c * (side + pad), pad + r * (side + pad)))
        captions.append(s.caption)
    grid.save(path)
    return captions


def clip_agreement(results, captions, clip: str) -> list[dict]:
    import clipkit
    from clipkit.data.synth import COLOURS, SHAPES, classnames_colour_shape

    from clipkit.data.synth import SynthWorld

    clf = clipkit.zero_shot(classnames_colour_shape(), model=clip, cache=False)
    size = results[0][0].size[0]
    rows = []
    for (caption, held), images in zip(captions, results):
        colour = next(c for c in COLOURS if c in caption.split())
        shape = next(s for s in SHAPES if s in caption.split())
        # the ceiling: the same classifier on rendered images of the pair (held-out split for held-out pairs)
        world = SynthWorld(seed=0, image_size=size, split="heldout" if held else "val")
        real = [world.render("shape", world.rng(i, stream=5), pair=(colour, shape)).image for i in range(len(images))]
        real_pred = list(clf.predict(real))
        pred = list(clf.predict(list(images)))
        rows.append({"caption": caption, "held": held,
                     "real_pair": sum(p == f"{colour} {shape}" for p in real_pred) / len(real_pred),
                     "pair": sum(p == f"{colour} {shape}" for p in pred) / len(pred),
                     "colour": sum(p.split()[0] == colour for p in pred) / len(pred),
                     "shape": sum(p.split()[-1] == shape for p in pred) / len(pred)})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", help="generator .safetensors [the shipped file]")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dvae-images", type=int, default=256)
    p.add_argument("--samples", type=int, default=8, help="samples per caption in the grid (and the CLIP check)")
    p.add_argument("--clip", help="CLIP model name or path for the zero-shot check of the samples")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(REPO / "benchmarks/results/generator.md"))
    p.add_argument("--grid", default=str(REPO / "benchmarks/results/generator_samples.png"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from clipkit.generator.generator import Generator, default_weights_path

    weights = Path(args.weights) if args.weights else default_weights_path()
    gen = Generator.load(weights)
    tc = gen.transformer.config
    load_start = load_average()
    gen.generate("warm-up", n=2, seed=0)

    speed = sampling_speed(gen, args.batch, args.repeats)
    t_batch, _ = _timed(lambda: gen.generate("a green pentagon", n=16, seed=1), args.repeats)
    dv = dvae_error(gen, args.dvae_images)
    results = sample_grid(gen, CAPTIONS, args.samples, Path(args.grid))
    completion_path = Path(args.grid).with_name(Path(args.grid).stem + "_completion.png")
    completion_captions = completion_grid(gen, 5, completion_path)
    agree = clip_agreement(results, CAPTIONS, args.clip) if args.clip else None

    cmd = f"OMP_NUM_THREADS={args.threads} python benchmarks/bench_generator.py" + "".join(
        f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    n_params = sum(p.numel() for p in gen.transformer.parameters())
    lines = [
        "# Generator: sampling speed, dVAE reconstruction, samples",
        "",
        f"Command: `{cmd}`",
        "",
        f"Weights: `{weights.relative_to(REPO) if weights.is_relative_to(REPO) else weights}` "
        f"(transformer {n_params / 1e6:.2f} M parameters: width {tc.width}, {tc.layers} layers, "
        f"{tc.text_len} text + {tc.image_len} image positions; dVAE {gen.dvae.config.image_size}² -> "
        f"{gen.dvae.config.grid_size}² codes of {gen.dvae.config.vocab_size}). How the shipped file was "
        "trained (commands, steps, wall time): `clipkit/weights/GENERATOR_CARD.md`.",
        f"One process, torch threads {args.threads}, CPU {cpu_name()}, Python {platform.python_version()}, "
        f"torch {torch.__version__}; load average at the start {load_start}, at the end {load_average()} "
        "(above the thread count means the machine was busy and the speeds are lower bounds). Best of "
        f"{args.repeats} runs (recomputation: best of {max(1, args.repeats // 2)}).",
        "",
        f"## Image-token sampling, {args.batch} images × {tc.image_len} tokens (full length)",
        "",
        "| guidance | streams | KV cache s | tokens/s | full recompute s | tokens/s | speed-up | same codes |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in speed:
        lines.append(f"| {r['guidance']:g} | {2 if r['guidance'] != 1 else 1} | {r['cache_s']:.3f} | "
                     f"{r['cache_tps']:,.0f} | {r['full_s']:.3f} | {r['full_tps']:,.0f} | "
                     f"{r['speedup']:.1f}× | {'yes' if r['same_codes'] else 'NO'} |")
    lines += [
        "",
        f"End to end, `Generator.generate(caption, n=16)` at the default settings (guidance "
        f"{gen.defaults['guidance']:g}, temperature 1): **{t_batch:.3f} s per batch of 16 images**.",
        "",
        f"## dVAE reconstruction through the argmax codes ({args.dvae_images} images per split)",
        "",
        "| split | MSE (pixels in [0, 1]) | PSNR dB | distinct codes used |",
        "| --- | ---: | ---: | ---: |",
    ]
    for r in dv:
        lines.append(f"| {r['split']} | {r['mse']:.5f} | {r['psnr']:.2f} | {r['codes_used']} |")
    grid_path = Path(args.grid)
    lines += ["", "## Samples", "",
              f"`{grid_path.name}`: {args.samples} samples per caption, seed 0, default settings; "
              "[held out] marks colour×shape pairs the training split never rendered.", "",
              f"![samples]({grid_path.name})", "",
              f"`{completion_path.name}`: image-prompted completion. Per row: a val image, its dVAE "
              f"reconstruction, the top {tc.grid_size // 2} of {tc.grid_size} code rows kept (rest grey), "
              "5 completions (seed 0) conditioned on its caption: "
              + "; ".join(f"\"{c}\"" for c in completion_captions) + ".", "",
              f"![completion]({completion_path.name})", ""]
    if agree is not None:
        lines += [f"Zero-shot reading of each sample by the CLIP model `{args.clip}` over all 81 colour×shape "
                  "pairs (template \"a photo of a {}.\"), and, as the ceiling, of as many rendered images of "
                  "the caption's pair:", "",
                  "| caption | held out | rendered: pair correct | samples: pair correct | colour correct | "
                  "shape correct |",
                  "| --- | --- | ---: | ---: | ---: | ---: |"]
        for r in agree:
            lines.append(f"| {r['caption']} | {'yes' if r['held'] else ''} | {r['real_pair']:.2f} | {r['pair']:.2f} | "
                         f"{r['colour']:.2f} | {r['shape']:.2f} |")
        lines.append("")
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
