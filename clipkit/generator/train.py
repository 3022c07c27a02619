"""Training the generator in two stages, with checkpoints and exact resume.

Stage 1 trains the dVAE on images: with the Gumbel quantizer, the paper's relaxation
(temperature 1 -> 1/16 on a cosine schedule, KL weight ramped 0 -> β); with the vq
quantizer, nearest codes with a commitment term while the pass itself updates the EMA
codebook (see `dvae.py`). Stage 2 encodes a corpus of (caption, image)
pairs to (text ids, argmax codes) once and trains the transformer on it (loss 1/8 text +
7/8 image; the caption is replaced by all-padding with probability p_uncond so the same
model also learns the unconditional distribution classifier-free guidance needs).

Every random choice at step s (the batch, the Gumbel noise or vq restarts, the dropped captions) comes
from generators seeded by (seed, s), and the learning-rate and annealing schedules are
functions of s, so `k` steps in one go and `k/2` + resume + `k/2` give the same weights.

    clipkit train-generator --stage dvae --config synth-vq --steps 6500 --lr 2e-3 --threads 2 --out runs/gen
    clipkit train-generator --stage transformer --config synth-vq --steps 6000 --lr 1e-3 --precision bf16 --out runs/gen
    clipkit train-generator ... --resume          # continue from runs/gen/<stage>-last.pt

Both stages run on the shared training skeleton (`clipkit.training.loop.Trainer`): the one
parameter-grouping rule, the one warm-up + cosine schedule, checkpoints in the one format.

Outputs in --out: `dvae-last.pt` / `transformer-last.pt` (training checkpoints with the
optimizer state; the older `<stage>-last.safetensors` still resume), `dvae.safetensors`
(the trained dVAE), `corpus.safetensors` (the encoded training pairs) and
`generator.safetensors` (the `Generator`, loadable with `Generator.load`).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Sequence

import torch

from clipkit.generator.dvae import VQ_COMMITMENT, DVAE, DVAEConfig, psnr
from clipkit.generator.transformer import DALLETransformer, TransformerConfig, null_text, text_from_clip_ids
from clipkit.training.loop import autocast_context

# ---------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DVAETrainConfig:
    batch_size: int = 32
    lr: float = 1e-3  # Adam; small conv nets on flat synthetic images tolerate a high rate
    warmup: int = 50
    min_lr_ratio: float = 0.1  # cosine decay to lr × this
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    temp_start: float = 1.0  # Gumbel-softmax temperature, annealed by a cosine schedule (the
    temp_end: float = 1 / 16  # paper: a linear schedule "typically led to divergence")
    anneal_fraction: float = 0.8  # reach temp_end after this fraction of the steps
    kl_weight: float = 6.6  # the paper's β, reached after kl_warmup_fraction of the steps
    kl_warmup_fraction: float = 0.1
    # vq quantizer only (the temperature and KL settings above do not apply to it): the
    # weight of the commitment term (see `dvae.VQ_COMMITMENT`)
    commitment: float = VQ_COMMITMENT
    precision: str = "fp32"  # fp32 | bf16 (autocast on the forward pass; weights stay fp32)
    seed: int = 0


@dataclass(frozen=True)
class TransformerTrainConfig:
    batch_size: int = 32
    lr: float = 1e-3  # AdamW; a 6M-parameter model with warmup takes it
    warmup: int = 100
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    p_uncond: float = 0.15  # caption dropped -> all padding (classifier-free guidance)
    text_weight: float = 1 / 8  # the paper's weights: 1/8 text, 7/8 image
    precision: str = "fp32"  # fp32 | bf16 (autocast on the forward pass; weights stay fp32)
    seed: int = 0


def lr_at(step: int, steps: int, base: float, warmup: int, min_ratio: float) -> float:
    """Linear warmup, then cosine decay to base × min_ratio at the last step (the schedule
    every clipkit trainer uses: `clipkit.training.schedule.warmup_cosine`)."""
    from clipkit.training.schedule import warmup_cosine

    return base * warmup_cosine(step, warmup, steps, min_ratio)


def temperature_at(step: int, steps: int, tc: DVAETrainConfig) -> float:
    """Cosine anneal from temp_start to temp_end over anneal_fraction × steps."""
    t = min(1.0, step / max(1, tc.anneal_fraction * steps))
    return tc.temp_end + (tc.temp_start - tc.temp_end) * 0.5 * (1 + math.cos(math.pi * t))


def kl_weight_at(step: int, steps: int, tc: DVAETrainConfig) -> float:
    """Linear ramp 0 -> kl_weight over kl_warmup_fraction × steps."""
    ramp = tc.kl_warmup_fraction * steps
    return tc.kl_weight if ramp <= 0 else tc.kl_weight * min(1.0, step / ramp)


def codebook_usage(logits: torch.Tensor) -> dict[str, float]:
    """How much of the codebook a batch's hard codes use: `codes_used` (distinct argmax
    codes), `dead_codes` (codebook size minus that) and `code_perplexity` (exp of the
    entropy of the codes' histogram: the number of equally used codes it is worth).
    A collapsing dVAE shows it here first (DALL-E's dVAE keeps its 8,192 codes alive).
    logits: (B, V, h, w)."""
    vocab = logits.shape[1]
    counts = torch.bincount(logits.detach().argmax(dim=1).flatten(), minlength=vocab).double()
    p = counts[counts > 0] / counts.sum()
    used = int((counts > 0).sum())
    return {"codes_used": used, "dead_codes": vocab - used,
            "code_perplexity": float(torch.exp(-(p * p.log()).sum()))}


def step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    """The generator of one random choice of one step: a function of (seed, step, stream)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 16 + stream)


# ---------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------


def to_image_tensor(item: Any, size: int | None = None) -> torch.Tensor:
    """A dataset item -> (3, H, W) float in [0, 1]: a PIL image, a tensor, a Sample (.image)
    or an (image, caption) pair."""
    from clipkit.transforms import to_tensor

    if isinstance(item, (tuple, list)):
        item = item[0]
    if hasattr(item, "image"):
        item = item.image
    if isinstance(item, torch.Tensor):
        t = item.float()
        return t / 255 if item.dtype == torch.uint8 else t
    return to_tensor(item, size)


def image_batch(data, indices: Sequence[int], size: int | None = None) -> torch.Tensor:
    if isinstance(data, torch.Tensor):
        batch = data[torch.as_tensor(indices)]
        return batch.float() / 255 if batch.dtype == torch.uint8 else batch.float()
    return torch.stack([to_image_tensor(data[int(i)], size) for i in indices])


def _caption_of(item: Any) -> str:
    if isinstance(item, (tuple, list)):
        return item[1]
    return item.caption


@torch.no_grad()
def encode_corpus(dvae: DVAE, data, count: int, tokenizer, text_len: int, batch_size: int = 256,
                  log: Callable[[str], None] = print) -> dict[str, torch.Tensor]:
    """The first `count` items of `data` ((image, caption) pairs or Samples) -> {"text":
    generator ids (count, text_len), "codes": argmax dVAE codes (count, grid²)} and the
    captions' CLIP ids in "clip_ids"."""
    dvae.eval()
    texts, codes, t0 = [], [], time.time()
    for s in range(0, count, batch_size):
        items = [data[i] for i in range(s, min(count, s + batch_size))]
        images = torch.stack([to_image_tensor(it, dvae.config.image_size) for it in items])
        codes.append(dvae.encode(images).flatten(1).to(torch.int16))
        texts.append(tokenizer([_caption_of(it) for it in items], context_length=text_len))
        if log and (s // batch_size) % 20 == 0:
            log(f"encoded {min(count, s + batch_size)}/{count} images ({time.time() - t0:.0f} s)")
    clip_ids = torch.cat(texts)
    return {"text": text_from_clip_ids(clip_ids, text_len), "codes": torch.cat(codes).long(), "clip_ids": clip_ids}


# ---------------------------------------------------------------------------
# Both stages on the shared skeleton (clipkit.training.loop): optimiser, schedule,
# checkpoints `<out>/<stage>-last.pt` in the one format, resume
# ---------------------------------------------------------------------------


def checkpoint_path(out_dir: str | os.PathLike, kind: str) -> Path:
    """Where a stage's latest checkpoint goes: `<out>/<kind>-last.pt`."""
    return Path(out_dir) / f"{kind}-last.pt"


def _trainer(kind: str, model, tc, steps: int, out: Path | None, resume: bool, stop_at: int | None,
             checkpoint_every: int, log_every: int, log: Callable[[str], None]):
    """The stage's `Trainer`: AdamW (betas 0.9, 0.98) over the one parameter-grouping
    rule, warm-up + cosine to lr × min_lr_ratio, gradient clipping; resumed from
    `<out>/<kind>-last.pt` (or the older `<kind>-last.safetensors`) when asked."""
    from clipkit.training.loop import Trainer, format_record
    from clipkit.training.params import param_groups
    from clipkit.training.schedule import WarmupCosine
    from clipkit.training.state import load_checkpoint

    opt = torch.optim.AdamW(param_groups(model, tc.weight_decay), lr=tc.lr, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(tc.warmup, steps, tc.min_lr_ratio))
    trainer = Trainer(model, opt, sched, kind=kind, steps=steps, stop_at=stop_at, grad_clip=tc.grad_clip,
                      checkpoint=checkpoint_path(out, kind) if out is not None else None,
                      save_every=checkpoint_every, log_every=log_every, log=lambda rec: log(format_record(rec)),
                      state=lambda: {"steps": steps, "model_config": model.config.to_dict(),
                                     "train_config": dataclasses.asdict(tc)})
    if not resume:
        return trainer
    if out is None:
        raise ValueError("resume=True needs out_dir")
    path = checkpoint_path(out, kind)
    if not path.is_file() and path.with_suffix(".safetensors").is_file():
        path = path.with_suffix(".safetensors")  # a checkpoint of the format before the shared one
    if not path.is_file():
        log(f"no checkpoint at {path}; starting from step 0")
        return trainer
    ckpt = load_checkpoint(path, kind=kind)
    # compare as configs: JSON (and the checkpoint's plain data) turn the config's tuples
    # (e.g. DVAEConfig.mults) into lists
    if type(model.config).from_dict(ckpt["model_config"]) != model.config:
        raise ValueError(f"{path} was trained with another architecture: {ckpt['model_config']}")
    trainer.restore(ckpt)
    log(f"resumed {kind} from {path} at step {trainer.step}")
    return trainer


def train_dvae(model: DVAE | DVAEConfig, data, steps: int, *, train: DVAETrainConfig | None = None,
               out_dir: str | os.PathLike | None = None, resume: bool = False, stop_at: int | None = None,
               checkpoint_every: int = 500, log_every: int = 50, eval_images: torch.Tensor | None = None,
               log: Callable[[str], None] = print) -> tuple[DVAE, list[dict]]:
    """Train a dVAE for `steps` steps (the schedules' length) on `data`.

    data: a tensor (N, 3, H, W) in [0, 1] (or uint8), or a sequence of PIL images /
        Samples / (image, caption) pairs; batches are drawn uniformly at random.
    out_dir: where `dvae-last.pt` (every checkpoint_every steps and at the end)
        and `dvae.safetensors` (the weights, at the end) go. resume: continue from the
        checkpoint there. stop_at: stop early at this step (the schedules still span `steps`).
    eval_images: a fixed batch whose hard (argmax) reconstruction MSE / PSNR is logged.
    Each record also holds the logged step's codebook usage (`codebook_usage`: codes
    used, dead codes, perplexity), to catch a collapsing codebook early.
    Returns the model and the logged history.
    """
    model = model if isinstance(model, DVAE) else DVAE(model)
    tc = train or DVAETrainConfig()
    out = Path(out_dir) if out_dir is not None else None
    trainer = _trainer("dvae", model, tc, steps, out, resume, stop_at, checkpoint_every, log_every, log)
    size = model.config.image_size
    vq = model.config.quantizer == "vq"

    def step(s: int, _) -> dict:
        idx = torch.randint(len(data), (tc.batch_size,), generator=step_generator(tc.seed, s, 0))
        images = image_batch(data, idx.tolist(), size)
        temp, beta = temperature_at(s, steps, tc), kl_weight_at(s, steps, tc)
        with autocast_context(tc.precision, images.device):
            stats, logits = model(images, temp, generator=step_generator(tc.seed, s, 1))
        loss, parts = model.loss(images, stats.float(), logits.float(), beta, commitment=tc.commitment)
        trainer.update(loss)
        schedule = {"temperature": temp, "kl_weight": beta} if not vq else {}
        return {"loss": loss.detach(), **parts, **schedule, **codebook_usage(logits)}

    def record(s: int, metrics: dict, lr: float, seconds: float) -> dict:
        rec = {"step": s, **metrics, "loss": metrics["loss"].item(), "lr": lr, "s_per_step": seconds}
        if eval_images is not None:
            rec.update({f"eval_{k}": v for k, v in evaluate_dvae(model, eval_images).items()})
            model.train()
        return rec

    model.train()
    history = trainer.fit(step, on_log=record)
    model.eval()
    if out is not None and trainer.step >= steps:
        save_dvae(model, out / "dvae.safetensors")
    return model, history


@torch.no_grad()
def evaluate_dvae(model: DVAE, images: torch.Tensor) -> dict[str, float]:
    """Reconstruction through the argmax codes (what the generator can reproduce)."""
    model.eval()
    rec = model.reconstruct(images)
    mse = torch.mean((rec - images) ** 2).item()
    return {"mse": mse, "psnr": psnr(mse), "codes_used": int(model.encode(images).unique().numel())}


def save_dvae(model: DVAE, path: str | os.PathLike) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path,
              metadata={"format": "clipkit-dvae/1", "config": json.dumps(model.config.to_dict())})
    return path


def load_dvae(path: str | os.PathLike) -> DVAE:
    """A dVAE from `save_dvae`'s file or from a `dvae-last` training checkpoint (`.pt`, or
    the older `.safetensors`)."""
    from clipkit.training.state import load_checkpoint

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if meta.get("format") == "clipkit-dvae/1":
            model = DVAE(DVAEConfig.from_dict(json.loads(meta["config"])))
            model.load_state_dict(tensors)
            return model.eval()
        if meta.get("kind") != "dvae":
            raise ValueError(f"{path} is neither a dVAE file nor a dVAE checkpoint")
    ckpt = load_checkpoint(path, kind="dvae")
    model = DVAE(DVAEConfig.from_dict(ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    return model.eval()


def train_transformer(model: DALLETransformer | TransformerConfig, corpus: dict[str, torch.Tensor], steps: int, *,
                      train: TransformerTrainConfig | None = None, out_dir: str | os.PathLike | None = None,
                      resume: bool = False, stop_at: int | None = None, checkpoint_every: int = 500,
                      log_every: int = 50, eval_corpus: dict[str, torch.Tensor] | None = None,
                      on_checkpoint: Callable[[DALLETransformer, int], None] | None = None,
                      log: Callable[[str], None] = print) -> tuple[DALLETransformer, list[dict]]:
    """Train the transformer for `steps` steps on an encoded corpus {"text", "codes"}
    (see `encode_corpus`). Same checkpoint / resume / stop_at contract as `train_dvae`;
    `on_checkpoint(model, step)` runs after each checkpoint (e.g. export a Generator)."""
    model = model if isinstance(model, DALLETransformer) else DALLETransformer(model)
    tc = train or TransformerTrainConfig()
    out = Path(out_dir) if out_dir is not None else None
    text_all, codes_all = corpus["text"], corpus["codes"]
    trainer = _trainer("transformer", model, tc, steps, out, resume, stop_at, checkpoint_every, log_every, log)
    L = model.config.text_len

    def step(s: int, _) -> dict:
        idx = torch.randint(len(text_all), (tc.batch_size,), generator=step_generator(tc.seed, s, 0))
        text, codes = text_all[idx], codes_all[idx]
        drop = torch.rand(tc.batch_size, generator=step_generator(tc.seed, s, 2)) < tc.p_uncond
        text = torch.where(drop[:, None], null_text(tc.batch_size, L), text)
        with autocast_context(tc.precision, codes.device):
            loss, parts = model.loss(text, codes, tc.text_weight)
        trainer.update(loss)
        return {"loss": loss.detach(), **parts}

    def record(s: int, metrics: dict, lr: float, seconds: float) -> dict:
        rec = {"step": s, **metrics, "loss": metrics["loss"].item(), "lr": lr, "s_per_step": seconds}
        if eval_corpus is not None:
            rec["eval_image_ce"] = evaluate_transformer(model, eval_corpus)
            model.train()
        return rec

    def exported(s: int) -> None:
        if on_checkpoint is not None:
            on_checkpoint(model, s)

    model.train()
    history = trainer.fit(step, on_log=record, on_save=exported)
    model.eval()
    return model, history


@torch.no_grad()
def evaluate_transformer(model: DALLETransformer, corpus: dict[str, torch.Tensor], batch_size: int = 64) -> float:
    """Mean image cross-entropy (nats per code) on an encoded corpus."""
    model.eval()
    total, n = 0.0, 0
    for s in range(0, len(corpus["text"]), batch_size):
        text, codes = corpus["text"][s:s + batch_size], corpus["codes"][s:s + batch_size]
        _, parts = model.loss(text, codes)
        total += parts["image_ce"] * len(text)
        n += len(text)
    return total / max(1, n)


# ---------------------------------------------------------------------------
# Command line: the synthetic world end to end
# ---------------------------------------------------------------------------


def _synth(image_size: int, split: str = "train", mix: dict[str, float] | None = None):
    from clipkit.data.synth import SynthDataset, SynthWorld

    return SynthDataset(SynthWorld(seed=0, image_size=image_size, split=split, mix=mix))


def _corpus(out: Path, dvae: DVAE, count: int, text_len: int, log,
            mix: dict[str, float] | None = None) -> dict[str, torch.Tensor]:
    """The encoded training corpus, cached in out/corpus.safetensors (rebuilt if it does not match)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from clipkit.tokenizer import get_tokenizer
    from clipkit.utils import weights_fingerprint

    path = out / "corpus.safetensors"
    key = {"dvae": weights_fingerprint(dvae), "count": str(count), "text_len": str(text_len)}
    if mix is not None:
        key["mix"] = json.dumps(mix, sort_keys=True)
    if path.is_file():
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}) == key:
                log(f"using the encoded corpus {path}")
                return {k: f.get_tensor(k) for k in f.keys()}
    log(f"encoding {count} synthetic images with the dVAE (once; cached in {path})")
    corpus = encode_corpus(dvae, _synth(dvae.config.image_size, mix=mix), count, get_tokenizer(), text_len,
                           log=log)
    save_file({k: v.contiguous() for k, v in corpus.items()}, path, metadata=key)
    return corpus


def run_stage(stage: str, *, config: str = "synth-mini", steps: int, out: str | os.PathLike,
              resume: bool = False, stop_at: int | None = None, batch_size: int | None = None,
              lr: float | None = None, seed: int = 0, checkpoint_every: int = 250, log_every: int = 25,
              corpus: int = 60000, dvae: str | None = None, recon_loss: str | None = None,
              kl_weight: float | None = None, threads: int | None = None,
              mix: dict[str, float] | None = None, precision: str = "fp32") -> None:
    """One stage of the generator's training on the synthetic world (what
    `clipkit train-generator` runs): stage "dvae", then stage "transformer", which writes
    `<out>/generator.safetensors` at every checkpoint."""
    from clipkit.generator.configs import GENERATOR_CONFIGS

    if stage not in ("dvae", "transformer"):
        raise ValueError(f"stage must be 'dvae' or 'transformer', got {stage!r}")
    args = SimpleNamespace(stage=stage, config=config, steps=steps, out=out, resume=resume, stop_at=stop_at,
                           batch_size=batch_size, lr=lr, seed=seed, checkpoint_every=checkpoint_every,
                           log_every=log_every, corpus=corpus, dvae=dvae, recon_loss=recon_loss,
                           kl_weight=kl_weight, threads=threads, mix=mix, precision=precision)
    dvae_cfg, tr_cfg = GENERATOR_CONFIGS[args.config]
    if args.stage == "dvae" and args.kl_weight is not None and dvae_cfg.quantizer != "gumbel":
        from clipkit.errors import OptionError  # refused before anything is written

        raise OptionError(f"--kl-weight applies to the gumbel quantizer; config {args.config!r} uses "
                          f"{dvae_cfg.quantizer!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)  # the initial weights
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = {k: v for k, v in (("batch_size", args.batch_size), ("lr", args.lr)) if v is not None}
    overrides["precision"] = args.precision
    if args.stage == "dvae" and args.kl_weight is not None:
        overrides["kl_weight"] = args.kl_weight

    def log(msg: str) -> None:
        print(msg, flush=True)
        with open(out / f"{args.stage}.log", "a") as f:
            f.write(msg + "\n")

    if args.stage == "dvae":
        if args.recon_loss:
            dvae_cfg = dataclasses.replace(dvae_cfg, recon_loss=args.recon_loss)
        tc = DVAETrainConfig(seed=args.seed, **overrides)
        val = _synth(dvae_cfg.image_size, "val")
        eval_images = image_batch(val, range(64), dvae_cfg.image_size)
        train_dvae(DVAE(dvae_cfg), _synth(dvae_cfg.image_size, mix=args.mix), args.steps, train=tc, out_dir=out,
                   resume=args.resume, stop_at=args.stop_at, checkpoint_every=args.checkpoint_every,
                   log_every=args.log_every, eval_images=eval_images, log=log)
        return

    from clipkit.generator.generator import Generator
    from clipkit.generator.transformer import build_text_vocab

    dvae = load_dvae(args.dvae or out / "dvae.safetensors")
    corpus = _corpus(out, dvae, args.corpus, tr_cfg.text_len, log, mix=args.mix)
    n_eval = min(1000, len(corpus["text"]) // 10)
    train_set = {k: v[n_eval:] for k, v in corpus.items()}
    eval_set = {k: v[:n_eval] for k, v in corpus.items()}
    model = DALLETransformer(tr_cfg)
    if tr_cfg.compact_vocab:
        from clipkit.tokenizer import get_tokenizer

        ids = torch.unique(corpus["clip_ids"]).tolist()
        ids = sorted(set(ids) - {0} | set(build_text_vocab([], get_tokenizer())))
        # 0 is padding in clip_ids; "!" (id 0) is not in the synthetic grammar
        model.set_text_vocab(ids)
        log(f"text vocabulary: {len(ids)} BPE ids (+ unknown) of {tr_cfg.text_vocab} slots")
    tc = TransformerTrainConfig(seed=args.seed, **overrides)

    def export(m: DALLETransformer, step: int) -> None:
        Generator(dvae, m).save(out / "generator.safetensors")
        m.train()

    train_transformer(model, train_set, args.steps, train=tc, out_dir=out, resume=args.resume,
                      stop_at=args.stop_at, checkpoint_every=args.checkpoint_every, log_every=args.log_every,
                      eval_corpus=eval_set, on_checkpoint=export, log=log)
    log(f"generator written to {out / 'generator.safetensors'}")


if __name__ == "__main__":  # `python -m clipkit.generator.train`: the old spelling of `clipkit train-generator`
    import warnings

    from clipkit.cli import main

    warnings.warn("`python -m clipkit.generator.train` is deprecated: use `clipkit train-generator`",
                  DeprecationWarning, stacklevel=1)
    sys.exit(main(["train-generator", *sys.argv[1:]]))
