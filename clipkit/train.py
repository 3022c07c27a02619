"""Contrastive training as in the CLIP paper, on one process or many (`torchrun`).

The recipe (Radford et al. 2021, §2.3-2.5 and appendix F):

- a batch of N (image, caption) pairs gives an N x N similarity matrix of L2-normalised
  embeddings scaled by exp(t), t a learned log-temperature initialised to log(1/0.07);
  the loss is the mean of the cross-entropy over its rows (image -> caption) and over its
  columns (caption -> image), the right pair of each row/column being on the diagonal;
- t is "clipped to prevent scaling the logits by more than 100": after every optimiser
  step, t is clamped to [0, ln 100];
- AdamW (decoupled weight decay 0.2) with no decay on gains, biases, embeddings and t;
  linear warm-up then cosine decay of the learning rate; ViT betas (0.9, 0.98), eps 1e-6;
- the batch is the *global* batch: on several ranks the features are gathered from all
  ranks so every image is contrasted with every caption of the global batch.

Distributed arithmetic (why the gradients equal the single-process ones): rank r holds
n = N / W pairs and computes only its rows of the global matrix, Loss_r = (CE over its n
image rows against all N captions + CE over its n caption rows against all N images) / 2,
each a mean over n rows, so the global loss is L = (1/W) sum_r Loss_r. The features are
gathered with a differentiable all_gather whose backward *sums* the gradient of every
rank's loss with respect to each rank's slice, so rank r's local features receive
sum_r' dLoss_r'/dfeat_r = W dL/dfeat_r. DDP then averages the parameter gradients over
the W ranks, which removes the factor W: every parameter, the temperature included,
gets exactly dL/dtheta, as in one process on the global batch. (Gathering without
gradients and computing the full matrix on every rank, a common shortcut, gives the
towers only 1/W of the gradient while the temperature gets all of it.)

Hard negatives (`--hard-negatives`, NegCLIP, Yuksekgonul et al. 2023): each relation and
count sample brings its counterfactual (the same scene with the objects' places or colours
exchanged, or one object more or fewer; `clipkit.data.negatives`) as one more pair of the
batch, after the rank's own pairs. Its caption is then a hard negative column for the
sample's image and its image one for the sample's caption. Ranks now hold different numbers
of rows n_r (the global batch T = sum n_r), so the features are gathered padded to the
largest n_r and the padding dropped, and rank r's loss is its summed cross-entropies times
W / (2 T): the mean over ranks is again the one-process loss over all T rows, and the
gradient argument above holds unchanged.

Resolution consistency (`--resolution-consistency WEIGHT`, off by default): the first quarter
of each rank's own pairs is also fed reduced to 8, 12 or 16 pixels a side (in turn by step)
and enlarged back, in the same forward pass; WEIGHT x KL(original || copy) of their softmaxes
over the batch's captions joins the loss, with the gradient through the copy only
(`clipkit.training.contrastive.consistency_loss`). A per-rank term: DDP's gradient average
makes it the mean over ranks.

Data: the synthetic world renders any sample from its index, so the data stream needs no
shuffling state: global sample index = samples_seen + j, and rank r renders the
contiguous slice [r n, (r+1) n) of every global batch. The gathered features are then in
global-batch order, and a checkpoint only needs `samples_seen` to resume the stream.

The loop, checkpoints and resume are the shared skeleton's (`clipkit.training.loop.Trainer`);
this module keeps the model, the data stream, the logged window and the evaluation.

Run: `clipkit train --config clipkit-synth --steps 3000 --out runs/synth` or
`torchrun --nproc_per_node=2 -m clipkit train --config ...` (same arguments).
"""
from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from clipkit.distributed import DistInfo, is_distributed
from clipkit.errors import OptionError
from clipkit.models.config import CLIPConfig, get_config
# The shared pieces, also re-exported here: `clipkit.train` keeps its public names.
from clipkit.training.contrastive import (CONSISTENCY_SIDES, MAX_LOGIT_SCALE, PRECISIONS,  # noqa: F401
                                          Consistency, ContrastiveModel, LossOutput, autocast_context,
                                          clamp_logit_scale, clip_loss, forward_loss, gather_features,
                                          gather_sizes, train_step)
from clipkit.training.loop import Trainer
from clipkit.training.params import param_groups  # noqa: F401
from clipkit.training.schedule import WarmupCosine, warmup_cosine  # noqa: F401
from clipkit.training.state import (_log_line, _rng_state, _set_rng_state, _trim_log, atomic_save,  # noqa: F401
                                    load_checkpoint)




# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """Everything that defines a run. Saved in every checkpoint; `--resume` reuses it."""

    config: str = "clipkit-synth"  # a registered model name or a JSON file of a CLIPConfig
    out: str = "runs/clip"
    steps: int = 1000
    batch_size: int = 128  # the global batch, over all ranks
    lr: float = 5e-4  # peak learning rate (the paper's ViT-B/32 value)
    warmup: int = 100  # linear warm-up steps (the paper used 2,000 of ~390k; scaled down)
    min_lr_ratio: float = 0.0  # the cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.2  # the paper's value
    beta1: float = 0.9
    beta2: float = 0.98  # the paper's ViT value (0.999 for its ResNets)
    eps: float = 1e-6  # the paper's ViT value (1e-8 for its ResNets)
    precision: str = "fp32"  # fp32 | bf16 (autocast; master weights stay fp32)
    workers: int = 0  # DataLoader processes rendering the synthetic world (0 = in the loop)
    seed: int = 0  # model initialisation
    data_seed: int = 0  # the synthetic world
    log_every: int = 10
    eval_every: int = 0  # zero-shot on the validation world every N steps (0: only at the end)
    eval_size: int = 200  # images per validation task
    save_every: int = 0  # checkpoint every N steps (0: only at the end)
    stop_at: int | None = None  # stop after this step (and checkpoint); resume later with --resume
    progress: bool = True
    # The world and the objective. The defaults are the first release's run.
    digit_style: str = "classic"  # "robust": digits at any scale, place, polarity, stroke, resolution;
    # "robust-hard": the same with stretched and low-resolution digits drawn more often
    mix: dict | None = None  # scene kind -> weight (None: the world's DEFAULT_MIX)
    pen: str = "plain"  # pen-stroke digits: "plain" or "hand" (handwriting-like variation)
    hand_share: float = 0.45  # share of digits drawn with pen strokes instead of a font
    hard_negatives: bool = False  # NegCLIP: swapped relation/attribute/count scenes join the batch
    # weight of the resolution-consistency term (0: off): a quarter of each batch's images is
    # also fed reduced to 8, 12 or 16 pixels a side, and should rank the captions as its original
    resolution_consistency: float = 0.0
    init: str | None = None  # start from these weights (fine-tuning; their config replaces `config`)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def resolve_model_config(name_or_path: str | CLIPConfig) -> CLIPConfig:
    """A registered name, a JSON file holding `CLIPConfig.to_dict()`, or a config."""
    if isinstance(name_or_path, CLIPConfig):
        return name_or_path
    if str(name_or_path).endswith(".json"):
        path = Path(name_or_path)
        if not path.is_file():
            raise FileNotFoundError(f"model config file {path} does not exist")
        return CLIPConfig.from_dict(json.loads(path.read_text()))
    return get_config(name_or_path)


# ---------------------------------------------------------------------------
# Learning-rate schedule, optimiser
# ---------------------------------------------------------------------------
def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over `param_groups`. The fused kernel (CPU and GPU) matters here: the token
    table (49,408 x width) is most of a small model's parameters and Adam updates all of
    it every step; fused is ~1.8x faster than the default on this CPU."""
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr,
                             betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=True)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(cfg.warmup, cfg.steps, cfg.min_lr_ratio))


# ---------------------------------------------------------------------------
# Data: the synthetic world, rendered by index
# ---------------------------------------------------------------------------


class SynthPairs(torch.utils.data.Dataset):
    """(image tensor, token ids) for synthetic-world sample i. Any non-negative index.

    With `hard_negatives`, items are (image, ids, negative image, negative ids), the last
    two None for scenes without a hard negative (`clipkit.data.negatives`)."""

    def __init__(self, world, preprocess, tokenizer, context_length: int, hard_negatives: bool = False):
        self.world, self.preprocess, self.tokenizer = world, preprocess, tokenizer
        self.context_length, self.hard_negatives = context_length, hard_negatives

    def __len__(self) -> int:  # the stream is unbounded; the sampler decides what is read
        return sys.maxsize

    def _pair(self, sample):
        ids = self.tokenizer([sample.caption], context_length=self.context_length, truncate=True)[0]
        return self.preprocess(sample.image), ids

    def __getitem__(self, i: int):
        sample = self.world.sample(int(i))
        if not self.hard_negatives:
            return self._pair(sample)
        from clipkit.data.negatives import hard_negative

        negative = hard_negative(self.world, int(i), sample)
        return (*self._pair(sample), *(self._pair(negative) if negative is not None else (None, None)))


class GlobalBatchSampler(torch.utils.data.Sampler):
    """This rank's indices of each global batch: a contiguous slice, so the gathered
    features come back in global order. Deterministic: depends only on the arguments."""

    def __init__(self, first_sample: int, num_batches: int, global_batch: int, rank: int = 0,
                 world_size: int = 1):
        if global_batch % world_size:
            raise ValueError(f"batch size {global_batch} is not divisible by {world_size} ranks")
        self.first_sample, self.num_batches = first_sample, num_batches
        self.global_batch, self.local = global_batch, global_batch // world_size
        self.rank = rank

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self):
        for b in range(self.num_batches):
            start = self.first_sample + b * self.global_batch + self.rank * self.local
            yield list(range(start, start + self.local))


def collate_pairs(batch):
    """Stack, and cut the ids to the longest caption of the batch: the text tower is causal
    and pools at end-of-text, so the embeddings are the same and the tower runs faster.
    Hard negatives (items of four) follow the batch's own pairs, in the same order."""
    images, ids = [b[0] for b in batch], [b[1] for b in batch]
    if batch and len(batch[0]) == 4:
        images += [b[2] for b in batch if b[2] is not None]
        ids += [b[3] for b in batch if b[3] is not None]
    images, ids = torch.stack(images), torch.stack(ids)
    length = int((ids != 0).sum(1).max())
    return images, ids[:, :max(length, 1)]


# ---------------------------------------------------------------------------
# Zero-shot evaluation on the validation world
# ---------------------------------------------------------------------------


def evaluate(clip: nn.Module, preprocess, tokenizer, cfg: TrainConfig) -> dict[str, float]:
    """Zero-shot top-1 on the synthetic validation world (never the held-out pairs):
    colour x shape of single-object scenes among all 81 colour x shape names, and
    rendered digits 0-9, each with its template ensemble; spatial relations, each image
    against its four candidate captions (`relation`, so runs with and without hard
    negatives compare); a robust-digit run also reads robust-style digits (`digits_robust`),
    and a robust-hard one its own style too (`digits_robust_hard`)."""
    from clipkit.data import synth
    from clipkit.encode import encode_images
    from clipkit.zeroshot import build_head, encode_prompts

    size = clip.config.vision.image_size
    device = next(clip.parameters()).device
    sets = {
        "colour_shape": synth.colour_shape_eval_set(n=cfg.eval_size, seed=cfg.data_seed, image_size=size,
                                                    split="val"),
        "digits": synth.digit_eval_set(n=cfg.eval_size, seed=cfg.data_seed, image_size=size, split="val"),
    }
    if cfg.digit_style != "classic":
        sets["digits_robust"] = synth.digit_eval_set(n=cfg.eval_size, seed=cfg.data_seed, image_size=size,
                                                     split="val", style="robust")
    if cfg.digit_style == "robust-hard":
        sets["digits_robust_hard"] = synth.digit_eval_set(n=cfg.eval_size, seed=cfg.data_seed, image_size=size,
                                                          split="val", style="robust-hard")
    relations = synth.relation_eval_set(n=cfg.eval_size, seed=cfg.data_seed, image_size=size, split="val")
    results = {}
    was_training = clip.training
    clip.eval()
    try:
        with torch.inference_mode():
            for name, eval_set in sets.items():
                # cache=False: the weights change between evaluations
                head = build_head(clip, eval_set.classnames, eval_set.templates, tokenizer=tokenizer,
                                  cache=False, progress=False)
                image = encode_images(clip, eval_set.images, preprocess=preprocess, batch_size=100,
                                      progress=False).features  # (N, D), normalised, on the CPU
                pred = head(image.to(device)).argmax(-1).cpu()
                results[name] = int((pred == torch.tensor(eval_set.labels)).sum()) / len(eval_set)
            if len(relations):
                image = encode_images(clip, relations.images, preprocess=preprocess, batch_size=len(relations),
                                      progress=False).features  # (N, D)
                flat = [c for row in relations.candidates for c in row]  # N x 4 captions, row-major
                text = encode_prompts(clip, flat, tokenizer=tokenizer, progress=False).view(len(relations), 4, -1)
                pred = torch.einsum("nd,nkd->nk", image, text).argmax(-1)
                results["relation"] = float((pred == torch.tensor(relations.labels)).double().mean())
    finally:
        clip.train(was_training)
    return results


# ---------------------------------------------------------------------------
# The training loop
# ---------------------------------------------------------------------------


def _all_reduce_sum(values: list[float], device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if is_distributed():
        dist.all_reduce(t)
    return t.tolist()


def train(cfg: TrainConfig, resume: str | Path | bool | None = None) -> dict:
    """Runs (or resumes) a training run. Returns the last logged record (rank 0's view).

    Writes to `cfg.out`: `checkpoint.pt` (latest; model, optimiser, scheduler, step,
    samples seen, RNG states, configs), `log.jsonl`, `model_config.json`, and at the end
    `model.safetensors` (the weights for `clipkit.load`).
    `resume`: True to continue from `cfg.out/checkpoint.pt`, or a checkpoint path.
    """
    if cfg.precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {cfg.precision!r}")
    from clipkit.distributed import process_group

    with process_group() as info:
        return _train(cfg, resume, info)


def _train(cfg: TrainConfig, resume, info: DistInfo) -> dict:
    from clipkit.models import create_model
    from clipkit.tokenizer import get_tokenizer
    from clipkit.transforms import image_transform
    from clipkit.data.synth import SynthWorld

    if cfg.resolution_consistency > 0 and cfg.batch_size // (4 * info.world_size) < 1:
        raise OptionError(f"--resolution-consistency reduces a quarter of each rank's pairs: --batch-size "
                          f"{cfg.batch_size} over {info.world_size} rank(s) leaves none (needs >= "
                          f"{4 * info.world_size})")
    out = Path(cfg.out)
    ckpt_path = out / "checkpoint.pt"

    state = None
    if resume:
        path = ckpt_path if resume is True else Path(resume)
        if not path.is_file():
            raise FileNotFoundError(f"cannot resume: no checkpoint at {path}")
        state = load_checkpoint(path, kind="clip")
        missing = [k for k in ("model", "model_config", "optimizer", "scheduler", "step", "samples_seen", "rng")
                   if k not in state]
        if missing:
            from clipkit.checkpoints import CheckpointError

            raise CheckpointError(f"{path} is not a clipkit training checkpoint (missing {', '.join(missing)})")
        model_config = CLIPConfig.from_dict(state["model_config"])
    elif cfg.init is not None:
        from clipkit.checkpoints import load

        initial, _ = load(cfg.init)  # any file or name clipkit.load reads
        model_config = initial.config
    else:
        try:
            model_config = resolve_model_config(cfg.config)
        except (ValueError, KeyError, FileNotFoundError) as e:
            raise OptionError(f"--config: {e}") from None

    if cfg.resolution_consistency > 0 and model_config.vision.patch_size is None:
        # the copies share the clean images' forward pass: BatchNorm would mix their statistics
        raise OptionError("--resolution-consistency needs a ViT image tower; this model's is a "
                          "ResNet, whose BatchNorm would mix the reduced copies into the batch statistics")
    # The world checks its own settings (style, pen, mix): a bad one fails before OUT is made.
    world = SynthWorld(seed=cfg.data_seed, image_size=model_config.vision.image_size, split="train",
                       mix=cfg.mix, digit_style=cfg.digit_style, pen=cfg.pen, hand_share=cfg.hand_share)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)  # same initial weights on every rank (DDP also broadcasts)
    clip = create_model(model_config).to(info.device)
    if state is None and cfg.init is not None:
        clip.load_state_dict({k: v.float() for k, v in initial.state_dict().items()})
        del initial
    clip.train()
    model = ContrastiveModel(clip)
    if is_distributed():
        ddp_kwargs = {"device_ids": [info.device.index]} if info.device.type == "cuda" else {}
        model = nn.parallel.DistributedDataParallel(model, **ddp_kwargs)
    optimizer = make_optimizer(clip, cfg)
    scheduler = make_scheduler(optimizer, cfg)
    samples_seen = 0
    log_path = out / "log.jsonl"
    trainer = Trainer(clip, optimizer, scheduler, kind="clip", steps=cfg.steps, stop_at=cfg.stop_at,
                      checkpoint=ckpt_path, save_every=cfg.save_every, log_every=cfg.log_every,
                      log=lambda record: _log_line(log_path, record), main=info.rank == 0,
                      state=lambda: {"samples_seen": samples_seen, "model_config": model_config.to_dict(),
                                     "train_config": cfg.to_dict()})
    if state is not None:
        trainer.restore(state)  # the schedule follows this run's settings (they may extend --steps)
        samples_seen = int(state["samples_seen"])
        del state
        if trainer.step > 0 and info.rank == 0:
            _trim_log(log_path, trainer.step)
    elif info.rank == 0:
        (out / "model_config.json").write_text(json.dumps(model_config.to_dict(), indent=2) + "\n")
        (out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")

    tokenizer = get_tokenizer()
    preprocess = image_transform(model_config.vision.image_size, model_config.image_mean, model_config.image_std)
    dataset = SynthPairs(world, preprocess, tokenizer, model_config.text.context_length, cfg.hard_negatives)
    sampler = GlobalBatchSampler(samples_seen, max(0, trainer.end - trainer.step), cfg.batch_size, info.rank,
                                 info.world_size)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=cfg.workers, collate_fn=collate_pairs,
        # A private generator: creating the iterator must not consume the global RNG.
        generator=torch.Generator().manual_seed(cfg.seed),
        persistent_workers=False,
    )

    window = _Window()
    bar = None
    if info.rank == 0 and cfg.progress:
        from clipkit.utils import progress_bar

        bar = progress_bar(trainer.end, initial=trainer.step, desc="train", unit="step", progress=True)

    def step(s, batch) -> None:
        nonlocal samples_seen
        images, ids = (t.to(info.device, non_blocking=True) for t in batch)
        consistency = None
        if cfg.resolution_consistency > 0:
            # a quarter of this rank's own pairs (its first rows; hard negatives follow them)
            consistency = Consistency(cfg.resolution_consistency, count=cfg.batch_size // (4 * info.world_size),
                                      side=CONSISTENCY_SIDES[s % len(CONSISTENCY_SIDES)])
        result = train_step(model, clip, images, ids, optimizer, scheduler, cfg.precision,
                            uneven=cfg.hard_negatives, consistency=consistency)
        samples_seen += cfg.batch_size
        window.add(result)

    def record(step: int, _, lr: float, __) -> dict:
        nonlocal window
        loss_sum, i2t, t2i, n, kl_sum = _all_reduce_sum(
            [window.loss, window.i2t, window.t2i, window.n, window.consistency], info.device)
        elapsed = time.perf_counter() - window.t0
        per_step = window.steps * info.world_size
        rec = {
            "step": step,
            # the contrastive loss alone, comparable between runs with and without the term
            "loss": (loss_sum - cfg.resolution_consistency * kl_sum) / per_step,
            "acc_i2t": i2t / n,
            "acc_t2i": t2i / n,
            "lr": lr,  # the rate of the window's last step
            "logit_scale": float(clip.logit_scale.detach().exp()),
            "samples_per_s": window.steps * cfg.batch_size / max(elapsed, 1e-9),
        }
        if cfg.resolution_consistency > 0:
            rec["consistency_kl"] = kl_sum / per_step  # unweighted; the step minimised loss + WEIGHT x this
        if bar is not None:
            bar.set_postfix(loss=f"{rec['loss']:.3f}", acc=f"{rec['acc_i2t']:.2f}", scale=f"{rec['logit_scale']:.1f}")
        window = _Window()
        return rec

    def after_step(step: int) -> None:
        if bar is not None:
            bar.update(1)
        evaluate_now = (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps
        if evaluate_now and info.rank == 0 and cfg.eval_size > 0:
            scores = evaluate(clip, preprocess, tokenizer, cfg)
            _log_line(log_path, {"step": step, "eval": scores})
            if bar is not None:
                bar.write(f"step {step}: zero-shot " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))

    try:
        history = trainer.fit(step, loader, on_log=record, after_step=after_step)
        if trainer.step >= cfg.steps and info.rank == 0:
            from clipkit.checkpoints import save as save_weights

            save_weights(clip, out / "model.safetensors")
    finally:
        if bar is not None:
            bar.close()  # the ranks meet when they leave the process group (clipkit.distributed)
    return history[-1] if history else {}


class _Window:
    """The sums behind one log record: this rank's loss, in-batch hits and pairs since the
    last record."""

    def __init__(self):
        self.loss = self.i2t = self.t2i = self.n = self.consistency = 0.0
        self.steps, self.t0 = 0, time.perf_counter()

    def add(self, result: LossOutput) -> None:
        self.loss += float(result.loss.detach())
        self.i2t += float(result.correct_i2t)
        self.t2i += float(result.correct_t2i)
        self.n += result.n
        if result.consistency is not None:
            self.consistency += float(result.consistency.detach())
        self.steps += 1


# ---------------------------------------------------------------------------
# Entry point: `clipkit train` / `torchrun -m clipkit train`
# ---------------------------------------------------------------------------


if __name__ == "__main__":  # the old spelling of `torchrun -m clipkit train`, kept as an alias
    import warnings

    from clipkit.cli import main

    warnings.warn("`python -m clipkit.train` is deprecated: use `clipkit train` or `torchrun -m clipkit train`",
                  DeprecationWarning, stacklevel=1)
    sys.exit(main(["train", *sys.argv[1:]]))
