"""Is the information there? Supervised probes that bound what a zero-shot reading could reach.

Two questions the model cards ask (figures there):

- `dvae`: does the shipped generator's dVAE keep the shape in its codes? A small CNN learns
  the shape from the quantized code vectors (8 x 8 x 32) of renders of stream 300, and
  another from the round-trip images; both are scored on stream 103 (the stream of
  `dvae_diagnostics.py`), beside the judge on the same round trips.
- `digits`: how readable are MNIST-style renders reduced to 8 x 8 (`eval_shipped`'s
  variation)? A small CNN trained on train-world renders, clean and reduced, then logistic
  regressions on a CLIP's image features (trained on reduced, clean, or both), all scored on
  the proxy set of `digit_proxy.py` (val world), beside the CLIP's zero-shot reading.

Never real digits: train-world renders for training, val-world renders for scoring.

    .venv/bin/python benchmarks/readability_probes.py dvae --threads 1     # 10 min on one thread
    .venv/bin/python benchmarks/readability_probes.py digits --threads 1   # 13 min on one thread
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
PROBE_TRAIN = 6000  # renders the logistic regressions on CLIP features learn from


def fit_cnn(x, y, tests: dict, *, steps: int, stem, batch: int = 128, lr: float = 2e-3, augment=None,
            log=print, every: int = 1000) -> dict[str, float]:
    """Train `stem` + a small CNN head on (x, y) with AdamW and a one-cycle schedule; every
    `every` steps log the accuracy on each (x, y) of `tests`; returns the last accuracies."""
    import torch
    import torch.nn.functional as F

    net = stem
    opt = torch.optim.AdamW(net.parameters(), lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
    scores = {}
    t = time.time()
    for s in range(steps):
        i = torch.randint(0, len(x), (batch,))
        xb = x[i] if augment is None else augment(x[i])
        loss = F.cross_entropy(net(xb), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if (s + 1) % every == 0 or s + 1 == steps:
            net.eval()
            with torch.no_grad():
                scores = {k: (net(tx).argmax(1) == ty).float().mean().item() for k, (tx, ty) in tests.items()}
            net.train()
            log(f"  step {s + 1}: loss {loss.item():.3f}, " + ", ".join(f"{k} {v:.1%}" for k, v in scores.items())
                + f" ({time.time() - t:.0f} s)")
    return scores


def dvae_probe(n: int, steps: int, threads: int) -> dict[str, float]:
    import torch
    from torch import nn

    from benchmarks.judge import load_default as load_judge
    from benchmarks.judge import render_labelled
    from benchmarks.rerank_gain import as_uint8
    from clipkit.generator import load_default

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dvae, judge = load_default().dvae.eval(), load_judge()
    size = dvae.config.image_size
    train_x, _, train_y = render_labelled(n, stream=300, image_size=size, config=judge.config)
    test_x, test_c, test_y = render_labelled(810, stream=103, image_size=size, config=judge.config)

    def features(x, kind):
        with torch.no_grad():
            out = []
            for b in x.split(256):
                b = b.float() / 255
                out.append(dvae.codebook[dvae.encode(b)].permute(0, 3, 1, 2) if kind == "codes"
                           else dvae.reconstruct(b))
            return torch.cat(out)

    result, test_features = {}, {}
    for kind in ("codes", "round trips"):
        ftr, fte = features(train_x, kind), features(test_x, kind)
        test_features[kind] = fte
        mu, sd = ftr.mean((0, 2, 3), keepdim=True), ftr.std((0, 2, 3), keepdim=True) + 1e-6
        ftr, fte = (ftr - mu) / sd, (fte - mu) / sd
        c, cells = ftr.shape[1], 4 if kind != "codes" else 1  # images: 4x4-pixel cells, as the codes
        net = nn.Sequential(nn.Conv2d(c, 96, 4 if cells > 1 else 3, stride=cells, padding=0 if cells > 1 else 1),
                            nn.ReLU(), nn.Conv2d(96, 96, 3, padding=1), nn.ReLU(), nn.Conv2d(96, 96, 3, padding=1),
                            nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(96, len(judge.config.shapes)))
        print(f"a CNN reading the shape from the {kind} ({n} renders of stream 300):")
        result[kind] = fit_cnn(ftr, train_y, {"stream 103": (fte, test_y)}, steps=steps, stem=net)["stream 103"]
    recon = as_uint8(test_features["round trips"])  # the round trips the second CNN was scored on
    result["judge on round trips"] = judge.evaluate(recon, test_c, test_y)["shape"]
    print(f"judge on the same round trips: {result['judge on round trips']:.1%}")
    return result


def digit_probe(model: str, n: int, steps: int, threads: int) -> dict[str, float]:
    import numpy as np
    import torch
    from PIL import Image
    from sklearn.linear_model import LogisticRegression
    from torch import nn

    import clipkit
    from benchmarks.digit_proxy import proxy_images
    from benchmarks.eval_shipped import MNIST_TEMPLATE, MNIST_VARIATIONS, embed, zero_shot_logits
    from clipkit.data import synth

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    reduce = MNIST_VARIATIONS["downsampled to 8x8 and back"]
    raw, labels = proxy_images(n, seed=5, split="train")  # the same renders and cut, from the train world
    labels = np.array(labels)
    proxy, proxy_labels = proxy_images(1000)
    proxy_labels = np.array(proxy_labels)
    result = {}

    def as_tensor(a):
        return torch.from_numpy(a).float()[:, None] / 255

    xtr = torch.cat([as_tensor(raw), as_tensor(reduce(raw, 1))])
    ytr = torch.from_numpy(np.concatenate([labels, labels]))
    yte = torch.from_numpy(proxy_labels)
    tests = {"clean": (as_tensor(proxy), yte), "8x8": (as_tensor(reduce(proxy, 0)), yte)}
    net = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1),
                        nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64 * 49, 128), nn.ReLU(),
                        nn.Dropout(0.3), nn.Linear(128, 10))

    def shift(x):  # up to 2 pixels either way, the same for the batch
        s = torch.randint(-2, 3, (2,))
        return torch.roll(x, (int(s[0]), int(s[1])), (2, 3))

    print(f"a CNN trained on {n} train-world renders, clean and at 8x8, read on the proxy (1,000):")
    scores = fit_cnn(xtr, ytr, tests, steps=steps, stem=net, augment=shift)
    result.update({f"CNN {k}": v for k, v in scores.items()})

    clip, preprocess = clipkit.load(model)
    clip.eval()
    few = raw[:PROBE_TRAIN]
    labels = labels[:PROBE_TRAIN]
    feats = {name: embed(clip, preprocess, [Image.fromarray(im) for im in images]).numpy()
             for name, images in (("train 8x8", reduce(few, 1)), ("train clean", few),
                                  ("proxy 8x8", reduce(proxy, 0)), ("proxy clean", proxy))}
    print(f"logistic regression on {model}'s image features, read on the proxy:")
    for name, xs, ys in (("8x8", feats["train 8x8"], labels), ("clean", feats["train clean"], labels),
                         ("both", np.concatenate([feats["train 8x8"], feats["train clean"]]),
                          np.concatenate([labels, labels]))):
        clf = LogisticRegression(max_iter=2000, C=1.0).fit(xs, ys)
        a, b = clf.score(feats["proxy 8x8"], proxy_labels), clf.score(feats["proxy clean"], proxy_labels)
        result[f"probe trained on {name}: 8x8"], result[f"probe trained on {name}: clean"] = a, b
        print(f"  trained on {name}: 8x8 {a:.1%}, clean {b:.1%}")
    for name in ("8x8", "clean"):
        logits = zero_shot_logits(clip, torch.from_numpy(feats[f"proxy {name}"]), list(synth.DIGIT_CLASSNAMES),
                                  [MNIST_TEMPLATE])
        result[f"zero-shot {name}"] = (logits.argmax(1).numpy() == proxy_labels).mean().item()
        print(f"  zero-shot: {name} {result[f'zero-shot {name}']:.1%}")
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    d = sub.add_parser("dvae", help="the generator's dVAE: shape from codes and round trips")
    d.add_argument("-n", type=int, default=20000, help="training renders [20000]")
    d.add_argument("--steps", type=int, default=3000)
    g = sub.add_parser("digits", help="MNIST-style renders at 8x8: a CNN, probes on a CLIP, zero-shot")
    g.add_argument("--model", default="clipkit-synth", help="the CLIP whose features are probed [clipkit-synth]")
    g.add_argument("-n", type=int, default=30000, help="training renders (the probes on CLIP features use the first 6,000) [30000]")
    g.add_argument("--steps", type=int, default=3000)
    for q in (d, g):
        q.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    if args.what == "dvae":
        dvae_probe(args.n, args.steps, args.threads)
    else:
        digit_probe(args.model, args.n, args.steps, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
