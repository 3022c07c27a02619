"""The contrastive objective (CLIP paper §2.3-2.5): the tower pair as one module, features
gathered across ranks with gradients, the symmetric cross-entropy (also over uneven ranks,
for hard negatives), the resolution-consistency term, the temperature clamp and one
optimiser step."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from clipkit.distributed import is_distributed
from clipkit.training.loop import PRECISIONS, autocast_context, optimizer_step  # noqa: F401 (re-exported)


# The CLIP paper's cap on the logit scale: exp(t) <= 100.
MAX_LOGIT_SCALE = math.log(100.0)


# ---------------------------------------------------------------------------
# The contrastive objective
# ---------------------------------------------------------------------------


class ContrastiveModel(nn.Module):
    """Wraps a CLIP model so one `forward` runs both towers (what DDP needs: its gradient
    synchronisation is prepared in `forward`). Returns unnormalised features and exp(t)."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip = clip

    def forward(self, images: torch.Tensor, ids: torch.Tensor):
        image_features = self.clip.encode_image(images)  # (n, D)
        text_features = self.clip.encode_text(ids)  # (n, D)
        return image_features, text_features, self.clip.logit_scale.exp()


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for each slice and hands each
    rank its own: d(sum_r Loss_r)/d(local features). Public collectives only (the
    all_reduce works on gloo and nccl alike; the features are a few hundred KB).
    With `sizes` (rows per rank, unequal), slices travel padded to the largest."""

    @staticmethod
    def forward(ctx, local: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
        local = local.contiguous()
        ctx.rank, ctx.n, ctx.sizes = dist.get_rank(), local.shape[0], sizes
        if sizes is None:
            parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
            dist.all_gather(parts, local)
            return torch.cat(parts, dim=0)  # (W n, D)
        padded = local.new_zeros((max(sizes), *local.shape[1:]))  # (max n_r, D)
        padded[:ctx.n] = local
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        return torch.cat([p[:k] for p, k in zip(parts, sizes)], dim=0)  # (sum n_r, D)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if ctx.sizes is None:
            grad = grad.contiguous().clone()
            dist.all_reduce(grad)  # sum over ranks
            return grad[ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n], None
        padded = grad.new_zeros((len(ctx.sizes), max(ctx.sizes), *grad.shape[1:]))  # (W, max n_r, D)
        start = 0
        for r, k in enumerate(ctx.sizes):
            padded[r, :k] = grad[start:start + k]
            start += k
        dist.all_reduce(padded)  # sum over ranks
        return padded[ctx.rank, :ctx.n], None


def gather_features(local: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """(n, D) on every rank -> (W n, D) in rank order, differentiable (backward sums the
    gradients of every rank's loss into each rank's slice). Identity on one process.
    Every rank holds the same n (the sampler guarantees it), unless `sizes` gives each
    rank's n (see `gather_sizes`)."""
    if not is_distributed():
        return local
    return _GatherWithGrad.apply(local, sizes)


def gather_sizes(n: int, device=None) -> list[int]:
    """Every rank's n, in rank order ([n] on one process)."""
    if not is_distributed():
        return [int(n)]
    t = torch.tensor([int(n)], dtype=torch.long, device=device)
    parts = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t)
    return [int(p) for p in parts]


@dataclass
class LossOutput:
    loss: torch.Tensor  # this rank's loss (its rows); the global loss is the mean over ranks
    correct_i2t: torch.Tensor  # local images whose best caption is their own (count)
    correct_t2i: torch.Tensor  # local captions whose best image is their own (count)
    n: int  # local pairs
    consistency: torch.Tensor | None = None  # the resolution-consistency KL, unweighted (in `loss`, weighted)


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor,
              logit_scale: torch.Tensor, *, uneven: bool = False) -> LossOutput:
    """Symmetric cross-entropy over this rank's rows of the global similarity matrix.

    `image_features`, `text_features`: (n, D) local features (normalised here, in their
    dtype); `logit_scale`: exp(t). On W ranks the features of all ranks are gathered.
    `uneven`: ranks may hold different n (hard negatives join the batch); the loss is
    then weighted so that the mean over ranks is the loss of one process on all rows.
    """
    img = F.normalize(image_features, dim=-1)
    txt = F.normalize(text_features, dim=-1)
    if uneven and is_distributed():
        return _clip_loss_uneven(img, txt, logit_scale)
    all_img, all_txt = gather_features(img), gather_features(txt)  # (N, D) each
    n = img.shape[0]
    rank = dist.get_rank() if is_distributed() else 0
    labels = torch.arange(n, device=img.device) + rank * n  # the diagonal of the global matrix
    logits_per_image = logit_scale * img @ all_txt.T  # (n, N): local images vs every caption
    logits_per_text = logit_scale * txt @ all_img.T  # (n, N): local captions vs every image
    loss = (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2
    with torch.no_grad():
        correct_i2t = (logits_per_image.argmax(-1) == labels).sum()
        correct_t2i = (logits_per_text.argmax(-1) == labels).sum()
    return LossOutput(loss, correct_i2t, correct_t2i, n)


def _clip_loss_uneven(img: torch.Tensor, txt: torch.Tensor, logit_scale: torch.Tensor) -> LossOutput:
    """`clip_loss` when rank r holds n_r rows: rank r's loss is its summed cross-entropies
    times W / (2 T), T = sum n_r, so that mean_r Loss_r = the one-process loss on T rows."""
    n = img.shape[0]
    sizes = gather_sizes(n, img.device)
    rank, world, total = dist.get_rank(), len(sizes), sum(sizes)
    all_img, all_txt = gather_features(img, sizes), gather_features(txt, sizes)  # (T, D) each
    labels = torch.arange(n, device=img.device) + sum(sizes[:rank])  # this rank's rows of the diagonal
    logits_per_image = logit_scale * img @ all_txt.T  # (n, T)
    logits_per_text = logit_scale * txt @ all_img.T  # (n, T)
    summed = (F.cross_entropy(logits_per_image, labels, reduction="sum")
              + F.cross_entropy(logits_per_text, labels, reduction="sum"))
    loss = summed * (world / (2 * total))
    with torch.no_grad():
        correct_i2t = (logits_per_image.argmax(-1) == labels).sum()
        correct_t2i = (logits_per_text.argmax(-1) == labels).sum()
    return LossOutput(loss, correct_i2t, correct_t2i, n)


# ---------------------------------------------------------------------------
# Resolution consistency: a reduced copy should read the captions as its original does
# ---------------------------------------------------------------------------

CONSISTENCY_SIDES = (8, 12, 16)  # step s reduces its copies to CONSISTENCY_SIDES[s % 3] pixels a side


@dataclass(frozen=True)
class Consistency:
    """`forward_loss`'s resolution-consistency term: the first `count` images of the batch
    are also fed reduced to side x side pixels and enlarged back (`degrade_resolution`),
    and `weight` x `consistency_loss` joins the loss."""

    weight: float
    count: int
    side: int


def degrade_resolution(images: torch.Tensor, side: int) -> torch.Tensor:
    """Images (n, C, H, W) reduced to side x side by area averaging and enlarged back to
    H x W bicubically: what a low-resolution picture looks like once resized for the model.
    Linear in the pixels, so it commutes with the preprocessing's normalisation."""
    h, w = images.shape[-2:]
    small = F.interpolate(images, size=(side, side), mode="area")
    return F.interpolate(small, size=(h, w), mode="bicubic", align_corners=False)


def consistency_loss(reduced: torch.Tensor, clean: torch.Tensor, text_features: torch.Tensor,
                     logit_scale: torch.Tensor) -> torch.Tensor:
    """KL(p_clean || p_reduced), mean over images, where p is an image's softmax over the
    batch's captions of logit_scale x cosine similarity: the reduced copy should rank the
    captions as its original does. Only `reduced` gets a gradient (the clean image, the
    captions and the scale are targets)."""
    t = F.normalize(text_features.detach(), dim=-1)
    scale = logit_scale.detach()
    target = (scale * F.normalize(clean.detach(), dim=-1) @ t.T).log_softmax(-1)
    pred = (scale * F.normalize(reduced, dim=-1) @ t.T).log_softmax(-1)
    return F.kl_div(pred, target, log_target=True, reduction="batchmean")


def forward_loss(model: nn.Module, images: torch.Tensor, ids: torch.Tensor,
                 precision: str = "fp32", uneven: bool = False,
                 consistency: Consistency | None = None) -> LossOutput:
    """Both towers (under autocast for bf16) then the loss in float32 (or the model's
    dtype when it is float64). `uneven`: see `clip_loss`. `consistency`: the reduced
    copies go through the image tower in the same forward (one DDP forward per step);
    their term is this rank's own (DDP averages it over ranks with the gradients)."""
    device = images.device
    n = images.shape[0]
    if consistency is not None and consistency.weight > 0:
        k = min(consistency.count, n)
        images = torch.cat([images, degrade_resolution(images[:k], consistency.side)])
    with autocast_context(precision, device):
        image_features, text_features, scale = model(images, ids)
    dtype = torch.promote_types(image_features.dtype, torch.float32)
    image_features, text_features, scale = image_features.to(dtype), text_features.to(dtype), scale.to(dtype)
    out = clip_loss(image_features[:n], text_features, scale, uneven=uneven)
    if image_features.shape[0] > n:
        reduced = image_features[n:]
        extra = consistency_loss(reduced, image_features[:reduced.shape[0]], text_features, scale)
        out = LossOutput(out.loss + consistency.weight * extra, out.correct_i2t, out.correct_t2i, out.n, extra)
    return out


def clamp_logit_scale(clip: nn.Module) -> None:
    """The paper's cap: exp(t) <= 100 (and t >= 0, as open_clip does)."""
    with torch.no_grad():
        clip.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)


def train_step(model: nn.Module, clip: nn.Module, images: torch.Tensor, ids: torch.Tensor,
               optimizer: torch.optim.Optimizer, scheduler=None, precision: str = "fp32",
               uneven: bool = False, consistency: Consistency | None = None) -> LossOutput:
    """One optimiser step on this rank's share of the global batch. `model` is the
    (possibly DDP-wrapped) `ContrastiveModel`, `clip` the bare CLIP model inside it.
    `uneven`: ranks hold different numbers of rows (hard negatives); see `clip_loss`.
    `consistency`: see `forward_loss`."""
    out = forward_loss(model, images, ids, precision, uneven, consistency)
    optimizer_step(out.loss, optimizer, scheduler)
    clamp_logit_scale(clip)
    return out
