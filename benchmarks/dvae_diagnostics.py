"""Where does the generator's image tokenizer lose the shape? The judge on dVAE round trips, split.

For fresh renders of every colour x shape pair (`benchmarks.judge.render_labelled`,
`--stream`; 102 is the reported check of `rerank_gain.py`, 103 the selection stream of the
card's trials), the attribute judge reads:

- the renders themselves (the judge's own ceiling);
- the round trip decode(encode(x)) through the argmax codes (what the generator can draw);
- the decoder applied to the encoder's vectors before quantization (vq dVAEs only): how
  much the codebook itself costs;

then the round trip's shape accuracy by the size of the shape (quartiles of its area in
pixels) and per shape, with what each shape is mistaken for.

    .venv/bin/python benchmarks/dvae_diagnostics.py --stream 103
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", help="generator .safetensors [the shipped file]")
    p.add_argument("--stream", type=int, default=103, help="render stream of the judge's seed space [103]")
    p.add_argument("-n", type=int, default=810, help="renders (the 81 pairs in turn) [810]")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    import torch

    from benchmarks.judge import load_default as load_judge
    from benchmarks.judge import render_labelled
    from benchmarks.rerank_gain import as_uint8, dvae_round_trip
    from clipkit.generator import Generator, load_default
    from clipkit.generator.dvae import stats_to_image

    torch.set_num_threads(args.threads)
    gen = Generator.load(args.weights) if args.weights else load_default()
    dvae, judge = gen.dvae.eval(), load_judge()
    size = dvae.config.image_size
    images, colour, shape = render_labelled(args.n, stream=args.stream, image_size=size, config=judge.config)
    recon = dvae_round_trip(dvae, images)  # as rerank_gain.py's reported check makes them
    rows = [("renders", images), ("round trip (argmax codes)", recon)]
    if dvae.config.quantizer == "vq":
        with torch.no_grad():
            z = torch.cat([dvae._encoder_out(b.float() / 255).float() for b in images.split(64)])
            rows.append(("decoder on the unquantized encoder vectors", as_uint8(stats_to_image(dvae.decoder(z)))))
    print(f"stream {args.stream}, {args.n} renders of {size}x{size}; judge accuracy (colour / shape / both):")
    for name, imgs in rows:
        r = judge.evaluate(imgs, colour, shape)
        print(f"  {name}: {r['colour']:.1%} / {r['shape']:.1%} / {r['joint']:.1%}")

    _, pred_shape = judge.predict_indices(recon)
    wrong = pred_shape != shape
    ground = images[:, :, :1, :1].int()  # a flat ground: the corner pixel
    area = ((images.int() - ground).abs().sum(1) > 30).sum((1, 2)).float()  # pixels of the shape
    q = torch.quantile(area, torch.tensor([0.25, 0.5, 0.75])).tolist()
    edges = [0.0, *q, float("inf")]
    print("round trip, shape read right, by the shape's area (pixels):")
    for lo, hi in zip(edges, edges[1:]):
        m = (area >= lo) & (area < hi)
        print(f"  [{lo:.0f}, {hi:.0f}): {1 - wrong[m].float().mean():.1%} of {int(m.sum())}")
    names = judge.config.shapes
    print("round trip, per shape (mistaken for):")
    for i, s in enumerate(names):
        m = shape == i
        if not m.any():
            continue
        confused = torch.bincount(pred_shape[m & wrong], minlength=len(names))
        detail = ", ".join(f"{names[j]} {int(c)}" for j, c in enumerate(confused) if c)
        print(f"  {s}: {1 - wrong[m].float().mean():.1%}" + (f" ({detail})" if detail else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
