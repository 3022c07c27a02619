"""An attribute judge independent of CLIP: a small CNN that names the colour and the shape
of a single-object image from the synthetic world.

It measures the gain of reranking: CLIP picks one image out of N generated ones,
and the judge, which never saw a caption or a CLIP embedding, says whether the pick shows
the colour and the shape the caption asked for.

It is a judge, not the system under test, so it is trained on every colour x shape pair,
the held-out ones included, on renders from its own seed space (`JUDGE_SEED`, streams
`TRAIN_STREAM` / `VAL_STREAM`) that no training or evaluation set of the project uses.
A light random blur makes it robust to the soft images a dVAE decodes.

    judge = load_default()                       # the shipped one (benchmarks/weights/judge.safetensors)
    judge.predict(images)                        # [("red", "star"), ...]
    judge.matches(images, "red", "star")         # bool tensor (N,)

    judge = train_judge(JudgeConfig(), n_train=20_000, epochs=8).judge   # ~8 min on one core
    judge.save("runs/judge/judge.safetensors")
    python -m benchmarks.judge --out runs/judge/judge.safetensors   # checkpoints runs/judge/judge-last.pt

Training runs on clipkit's shared skeleton (`clipkit.training.loop.Trainer`), so it
checkpoints and resumes exactly like the other trainers (`--stop-at`, `--resume`).
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from clipkit.data.synth import COLOURS, SHAPES, all_pairs

FORMAT = "clipkit-judge/1"
DEFAULT_WEIGHTS = "judge.safetensors"
JUDGE_SEED = 8008  # a world seed of its own: the shipped models and eval sets use small seeds
TRAIN_STREAM, VAL_STREAM = 100, 101
RENDER_SIZE = 64  # the synthetic world's and the generator's image side


# ---------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------


@dataclass
class JudgeConfig:
    """The judge's architecture. Defaults: about 100k parameters (400 kB), 64 x 64 input."""

    # Images are box-downsampled to this side first. 64, the render size: at 32 a small
    # shape spans 7-10 pixels and hexagon / pentagon / circle blur together (94% shape
    # accuracy at 32 vs 99% at 64 in the same training budget).
    image_size: int = 64
    channels: tuple[int, ...] = (16, 32, 64, 128)  # one conv stage each, halving the side
    colours: tuple[str, ...] = tuple(COLOURS)
    shapes: tuple[str, ...] = SHAPES

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "JudgeConfig":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


class JudgeNet(nn.Module):
    """conv3x3 -> BN -> ReLU -> max-pool per stage, global average, two linear heads."""

    def __init__(self, config: JudgeConfig):
        super().__init__()
        self.config = config
        layers, c_in = [], 3
        for c in config.channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.colour_head = nn.Linear(c_in, len(config.colours))
        self.shape_head = nn.Linear(c_in, len(config.shapes))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, 3, S, S) in [0, 1] -> (colour logits (B, C), shape logits (B, K))."""
        h = self.features(x - 0.5).mean(dim=(2, 3))  # (B, channels[-1])
        return self.colour_head(h), self.shape_head(h)


# ---------------------------------------------------------------------------
# Images in
# ---------------------------------------------------------------------------


def images_to_tensor(images: Sequence[Any] | torch.Tensor, size: int) -> torch.Tensor:
    """PIL images, uint8 (B, 3, H, W) or float [0, 1] (B, 3, H, W) -> float (B, 3, size, size).

    Downsampling averages boxes of pixels (`area`), the same for training and judging."""
    from clipkit.transforms import to_tensor

    if isinstance(images, torch.Tensor):
        x = images[None] if images.dim() == 3 else images
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
    else:
        images = list(images)
        if not images:
            raise ValueError("no images to judge: the list is empty")
        arrays = []
        for i, img in enumerate(images):
            if isinstance(img, torch.Tensor):
                arrays.append(images_to_tensor(img, size)[0])
                continue
            if not hasattr(img, "convert"):
                raise TypeError(f"image {i} is a {type(img).__name__}; pass PIL images or a (B, 3, H, W) tensor")
            arrays.append(to_tensor(img))  # (3, H, W) in [0, 1]
        shapes = {tuple(a.shape) for a in arrays}
        if len(shapes) > 1:
            arrays = [F.interpolate(a[None], size=(size, size), mode="area")[0] for a in arrays]
        x = torch.stack(arrays)
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected images (B, 3, H, W), got shape {tuple(x.shape)}")
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="area")
    return x.contiguous()


# ---------------------------------------------------------------------------
# The judge
# ---------------------------------------------------------------------------


class Judge:
    """Names the colour and the shape of single-object images; `matches` checks a caption's pair.

    A prediction is the argmax of each head, so every image gets a (colour, shape): an
    image with no recognisable object still gets some pair, which is right for a caption
    only by chance (one in 81 if uniform).
    """

    def __init__(self, net: JudgeNet, metrics: dict | None = None, device: str | torch.device = "cpu"):
        self.net = net.to(device).eval()
        self.config = net.config
        self.device = torch.device(device)
        self.colours_ = list(self.config.colours)
        self.shapes_ = list(self.config.shapes)
        self.metrics_ = dict(metrics or {})  # accuracy on its validation set, saved with the weights

    @torch.inference_mode()
    def logits(self, images, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """(colour logits (N, C), shape logits (N, K)) for N images."""
        x = images_to_tensor(images, self.config.image_size)
        outs = [self.net(chunk.to(self.device)) for chunk in x.split(batch_size)]
        return torch.cat([o[0] for o in outs]).float().cpu(), torch.cat([o[1] for o in outs]).float().cpu()

    def predict_indices(self, images) -> tuple[torch.Tensor, torch.Tensor]:
        """(colour index (N,), shape index (N,)) into `colours_` / `shapes_`."""
        c, s = self.logits(images)
        return c.argmax(1), s.argmax(1)

    def predict(self, images) -> list[tuple[str, str]]:
        """[(colour, shape), ...], one per image."""
        c, s = self.predict_indices(images)
        return [(self.colours_[i], self.shapes_[j]) for i, j in zip(c.tolist(), s.tolist())]

    def matches(self, images, colour: str, shape: str) -> torch.Tensor:
        """Bool (N,): the judge sees `colour` and `shape` in each image."""
        return self.matches_indices(*self.predict_indices(images), colour, shape)

    def matches_indices(self, colour_idx: torch.Tensor, shape_idx: torch.Tensor, colour: str,
                        shape: str) -> torch.Tensor:
        """`matches` on predictions already made (both tensors (N,) of indices)."""
        if colour not in self.colours_:
            raise ValueError(f"unknown colour {colour!r}; the judge knows {self.colours_}")
        if shape not in self.shapes_:
            raise ValueError(f"unknown shape {shape!r}; the judge knows {self.shapes_}")
        return (colour_idx == self.colours_.index(colour)) & (shape_idx == self.shapes_.index(shape))

    def evaluate(self, images, colour_labels: torch.Tensor, shape_labels: torch.Tensor) -> dict[str, float]:
        """Accuracy of each head and of both at once ("joint") against index labels."""
        c, s = self.predict_indices(images)
        ok_c, ok_s = c == colour_labels, s == shape_labels
        return {"colour": ok_c.float().mean().item(), "shape": ok_s.float().mean().item(),
                "joint": (ok_c & ok_s).float().mean().item(), "n": int(len(c))}

    # -- weights ------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> Path:
        """One safetensors file; the config and the validation metrics go in its metadata."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.net.state_dict().items()}
        meta = {"format": FORMAT, "config": json.dumps(self.config.to_dict()), "metrics": json.dumps(self.metrics_)}
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> "Judge":
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no judge weights at {path}; train them with "
                                    f"`python -m benchmarks.judge --out {path}`")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise ValueError(f"{path} is not a clipkit judge file (format {meta.get('format')!r}, "
                                 f"expected {FORMAT!r})")
            state = {k: f.get_tensor(k) for k in f.keys()}
        net = JudgeNet(JudgeConfig.from_dict(json.loads(meta["config"])))
        net.load_state_dict(state, strict=True)
        return cls(net, json.loads(meta.get("metrics", "{}")), device)


def default_weights_path() -> Path:
    return Path(__file__).resolve().parent / "weights" / DEFAULT_WEIGHTS  # benchmarks/weights/


def load_default(device: str | torch.device = "cpu") -> Judge:
    """The judge kept with the benchmarks (benchmarks/weights/judge.safetensors)."""
    return Judge.load(default_weights_path(), device)


# ---------------------------------------------------------------------------
# Data and training
# ---------------------------------------------------------------------------


def render_labelled(n: int, *, stream: int, seed: int = JUDGE_SEED, pairs: Sequence[tuple[str, str]] | None = None,
                    image_size: int = RENDER_SIZE, config: JudgeConfig | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n single-object scenes, pairs in turn: (uint8 images (n, 3, S, S), colour idx, shape idx).

    Every pair (held-out ones included) is drawn with `SynthWorld.render("shape", ...,
    pair=...)`, which renders any pair whatever the split; sample i uses the generator of
    (seed, "val", stream, i), a seed space of the judge's own."""
    from clipkit.data.synth import PILLOW_DEFAULT_FONT, SynthWorld

    config = config or JudgeConfig()
    pairs = list(all_pairs() if pairs is None else pairs)
    world = SynthWorld(seed=seed, image_size=image_size, split="val", fonts=[PILLOW_DEFAULT_FONT])
    images = np.empty((n, image_size, image_size, 3), np.uint8)
    colour_idx, shape_idx = torch.empty(n, dtype=torch.long), torch.empty(n, dtype=torch.long)
    for i in range(n):
        colour, shape = pairs[i % len(pairs)]
        images[i] = np.asarray(world.render("shape", world.rng(i, stream), pair=(colour, shape)).image)
        colour_idx[i], shape_idx[i] = config.colours.index(colour), config.shapes.index(shape)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), colour_idx, shape_idx  # (n, 3, S, S)


def _random_blur(x: torch.Tensor, gen: torch.Generator, p: float = 0.5, max_sigma: float = 1.0) -> torch.Tensor:
    """Blur a random share p of the batch with a Gaussian of random sigma in (0, max_sigma]
    (separable, radius max(2, ceil(2 max_sigma)) taps): dVAE decodes are softer than renders."""
    b = x.shape[0]
    sigma = torch.rand(b, generator=gen) * max_sigma + 1e-3
    sigma = torch.where(torch.rand(b, generator=gen) < p, sigma, torch.full_like(sigma, 1e-3))
    r = max(2, math.ceil(2 * max_sigma))
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t[None] / sigma[:, None]) ** 2)
    k = k / k.sum(1, keepdim=True)  # (B, 2r + 1)
    c = x.shape[1]
    h, w = x.shape[-2:]
    y = x.reshape(1, b * c, h, w)
    kb = k.repeat_interleave(c, 0)  # (B·C, 2r + 1): one kernel per image, shared by its channels
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="replicate"), kb[:, None, None, :], groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), kb[:, None, :, None], groups=b * c)
    return y.reshape(b, c, h, w)


@dataclass
class TrainResult:
    judge: Judge
    log: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def train_judge(config: JudgeConfig | None = None, *, n_train: int = 20_000, n_val: int = 4_050,
                epochs: int = 8, batch_size: int = 128, lr: float = 3e-3, weight_decay: float = 1e-4,
                seed: int = 0, blur: float = 0.5, blur_sigma: float = 1.0, log_every: int = 0,
                data=None, out_dir: str | os.PathLike | None = None, resume: bool = False,
                stop_at: int | None = None, save_every: int = 0) -> TrainResult:
    """Train a judge on `n_train` fresh renders of every pair; report accuracy on `n_val` others.

    data: optionally ((images, colour, shape) train, (images, colour, shape) val) already
    rendered, e.g. to reuse them across runs. Deterministic for a given seed and thread count.

    It runs on clipkit's training skeleton (`clipkit.training.loop.Trainer`): AdamW with
    the one parameter-grouping rule (convolution and linear weights decay; BatchNorm and
    biases do not), its own one-cycle learning rate. out_dir: where `judge-last.pt` goes
    (every `save_every` steps and at the end); resume: continue from it, exactly (the
    epoch's order and the private generator's state are in it); stop_at: stop early.
    """
    from clipkit.training.loop import Trainer
    from clipkit.training.params import param_groups
    from clipkit.training.state import load_checkpoint

    config = config or JudgeConfig()
    t0 = time.perf_counter()
    if data is None:
        train = render_labelled(n_train, stream=TRAIN_STREAM, config=config)
        val = render_labelled(n_val, stream=VAL_STREAM, config=config) if n_val else None
    else:
        train, val = data
    x_train = images_to_tensor(train[0], config.image_size)  # downsample once
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)  # the epochs' order and the blur
    net = JudgeNet(config)
    opt = torch.optim.AdamW(param_groups(net, weight_decay), lr=lr)
    n = len(x_train)
    steps_per_epoch = max(1, math.ceil(n / batch_size))
    total = epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.15)
    order = None  # this epoch's permutation of the training images
    path = Path(out_dir) / "judge-last.pt" if out_dir is not None else None
    trainer = Trainer(net, opt, sched, kind="judge", steps=total, stop_at=stop_at, checkpoint=path,
                      save_every=save_every, log_every=log_every, log=lambda rec: print(json.dumps(rec), flush=True),
                      state=lambda: {"generator": gen.get_state(), "order": order, "config": config.to_dict()})
    if resume:
        if path is None:
            raise ValueError("resume=True needs out_dir")
        ckpt = load_checkpoint(path, kind="judge")
        trainer.restore(ckpt)
        gen.set_state(ckpt["generator"])
        order = ckpt["order"]

    def step(s: int, _) -> dict:
        nonlocal order
        if s % steps_per_epoch == 0:
            order = torch.randperm(n, generator=gen)
        start = (s % steps_per_epoch) * batch_size
        idx = order[start:start + batch_size]
        x = x_train[idx]
        if blur > 0:
            x = _random_blur(x, gen, p=blur, max_sigma=blur_sigma)
        c_logits, s_logits = net(x)
        loss = F.cross_entropy(c_logits, train[1][idx]) + F.cross_entropy(s_logits, train[2][idx])
        trainer.update(loss)
        return {"loss": loss.detach()}

    def record(s: int, metrics: dict, *_) -> dict:
        return {"step": s, "loss": round(metrics["loss"].item(), 4), "seconds": round(time.perf_counter() - t0, 1)}

    net.train()
    log = trainer.fit(step, on_log=record)
    judge = Judge(net)
    metrics: dict[str, Any] = {"n_train": n, "epochs": epochs, "steps": total, "seed": seed,
                               "blur": {"p": blur, "max_sigma": blur_sigma},
                               "data": f"SynthWorld(seed={JUDGE_SEED}) shape scenes, all {len(all_pairs())} "
                                       f"pairs, streams {TRAIN_STREAM} (train) / {VAL_STREAM} (val)"}
    if val is not None:
        metrics["val"] = judge.evaluate(val[0], val[1], val[2])
        metrics["val_per_pair_min_joint"] = _worst_pair(judge, val)
    judge.metrics_ = metrics
    return TrainResult(judge, log, time.perf_counter() - t0)


def _worst_pair(judge: Judge, val) -> dict:
    """The pair the judge gets wrong most often on the validation set."""
    c, s = judge.predict_indices(val[0])
    ok = (c == val[1]) & (s == val[2])
    worst, worst_acc = None, 2.0
    for ci, si in sorted({(int(a), int(b)) for a, b in zip(val[1], val[2])}):
        m = (val[1] == ci) & (val[2] == si)
        acc = ok[m].float().mean().item()
        if acc < worst_acc:
            worst, worst_acc = f"{judge.colours_[ci]} {judge.shapes_[si]}", acc
    return {"pair": worst, "joint": worst_acc}


# ---------------------------------------------------------------------------
# Command line: python -m benchmarks.judge --out runs/judge/judge.safetensors
# ---------------------------------------------------------------------------


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description="Train the attribute judge (colour and shape of one object).")
    p.add_argument("--out", default="runs/judge/judge.safetensors")
    p.add_argument("--n-train", type=int, default=20_000)
    p.add_argument("--n-val", type=int, default=4_050, help="validation renders (50 per pair)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--image-size", type=int, default=JudgeConfig.image_size)
    p.add_argument("--channels", default=",".join(map(str, JudgeConfig.channels)), help="per conv stage")
    p.add_argument("--blur", type=float, default=0.5, help="share of training images blurred [0.5]")
    p.add_argument("--blur-sigma", type=float, default=1.0,
                   help="largest Gaussian blur sigma, in pixels of the judge's input [1.0]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--checkpoint-every", type=int, default=0,
                   help="checkpoint (judge-last.pt beside --out) every N steps and at the end "
                        "[0: none, unless --stop-at/--resume]")
    p.add_argument("--stop-at", type=int, help="stop after this step (checkpointed); continue with --resume")
    p.add_argument("--resume", action="store_true", help="continue from judge-last.pt beside --out")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = JudgeConfig(image_size=args.image_size, channels=tuple(int(c) for c in args.channels.split(",")))
    result = train_judge(config, n_train=args.n_train, n_val=args.n_val,
                         epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                         blur=args.blur, blur_sigma=args.blur_sigma, log_every=args.log_every,
                         # a checkpoint beside --out only when asked for (not next to the shipped weights)
                         out_dir=Path(args.out).parent if (args.checkpoint_every or args.stop_at or args.resume)
                         else None, resume=args.resume, stop_at=args.stop_at,
                         save_every=args.checkpoint_every)
    if result.judge.metrics_["steps"] > (args.stop_at or result.judge.metrics_["steps"]):
        print(json.dumps({"stopped_at": args.stop_at, "checkpoint": str(Path(args.out).parent / "judge-last.pt")}))
        return 0
    result.judge.metrics_["train_seconds"] = round(result.seconds, 1)
    result.judge.metrics_["threads"] = args.threads
    path = result.judge.save(args.out)
    print(json.dumps({"saved": str(path), "bytes": path.stat().st_size, **result.judge.metrics_}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
