"""Discrete VAE: image -> grid of codebook ids -> image (Ramesh et al. 2021, section 2.1).

The architecture is the one OpenAI released with DALL·E (`dall_e.Encoder` / `Decoder`),
with its widths, depth and codebook size as config fields, so the same module serves
the project's small models and, with `OPENAI_DVAE`, the released 8192-code weights (see
`openai_dvae.py`). Parameter names follow the release (`blocks.group_1.block_1.res_path.
conv_1`), with torch's `weight`/`bias` instead of its `w`/`b`.

    encoder: k×k stem -> groups of residual blocks, 2×2 max-pool after every group but
             the last -> ReLU -> 1×1 conv to `vocab_size` logits per grid cell
    decoder: 1×1 conv from the (relaxed) one-hot codes -> groups of residual blocks,
             nearest 2× upsampling after every group but the last -> ReLU -> 1×1 conv to
             2 × channels: the logit-Laplace location μ and log-scale ln b per channel

Training (see `train.py`): the decoder sees a Gumbel-softmax relaxation of the encoder's
distribution, with the temperature annealed 1 -> 1/16 by a cosine schedule and a KL term
to the uniform prior whose weight β ramps up; the transformer sees the argmax codes, no
noise (`encode`).

Quantizer (`DVAEConfig.quantizer`): "gumbel" is the paper's relaxation above. "vq" is the
VQ-VAE quantizer (van den Oord et al. 2017) with the codebook learnt as an exponential
moving average of the encoder vectors assigned to each code (their appendix A.1) and dead
codes restarted on random encoder vectors of the batch (Dhariwal et al. 2020, Jukebox):
the encoder emits a `code_dim` vector per cell, its nearest codebook entry is the code,
the decoder sees that entry (straight-through gradients) and a commitment term keeps the
encoder near its codes. On the project's CPU budget it trains much faster than the
relaxation (the trial table is in `clipkit/weights/GENERATOR_CARD.md`): the decoder sees
exactly the codes the transformer will produce from the first step, so there is no
temperature to anneal. Both give the same interface: `encode` -> ids, `decode(ids)`.

Pixels: the model works on x in [0, 1], mapped into [ε, 1 − ε] with ε = 0.1 before the
encoder (`map_pixels`), because the logit-Laplace likelihood is defined on (0, 1) and
needs pixels away from its ends; reconstructions are `unmap_pixels(sigmoid(μ))`.
"""
from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

LOGIT_LAPLACE_EPS = 0.1  # the paper's ε: pixels live in [ε, 1 − ε]
QUANTIZERS = ("gumbel", "vq")
VQ_EMA_DECAY = 0.99  # the codebook's moving-average decay (van den Oord et al. 2017, appendix A.1)
VQ_DEAD_COUNT = 0.03  # a code whose moving assignment count falls below this is restarted
# the commitment term's weight: mean squared distance per component of the encoder vectors
# to their codes, against a reconstruction of ~0.002 per sub-pixel late in training
VQ_COMMITMENT = 0.025


def map_pixels(x: torch.Tensor, eps: float = LOGIT_LAPLACE_EPS) -> torch.Tensor:
    """[0, 1] -> [ε, 1 − ε] (the input mapping of the paper and of the released dVAE)."""
    return (1 - 2 * eps) * x + eps


def unmap_pixels(x: torch.Tensor, eps: float = LOGIT_LAPLACE_EPS) -> torch.Tensor:
    """[ε, 1 − ε] -> [0, 1], clamped."""
    return ((x - eps) / (1 - 2 * eps)).clamp(0, 1)


# ---------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DVAEConfig:
    """A dVAE architecture. Defaults: the project's small model for 64×64 synthetic images."""

    image_size: int = 64  # the synthetic world renders 64×64 RGB
    channels: int = 3
    # Base width; group g has hidden × mults[g] channels. 32 keeps the full-resolution
    # group cheap on a CPU (the release uses 256 for 256×256 photos).
    hidden: int = 32
    # One group per entry, a 2× pool between groups: 4 groups -> 8× downsampling, 64×64
    # -> an 8×8 grid, the same factor as the paper's 256 -> 32; 64 image tokens keep the
    # transformer's sequence short enough to train on a CPU.
    mults: tuple[int, ...] = (1, 2, 4, 8)
    blocks_per_group: int = 1  # the release uses 2; 1 halves the cost, flat shapes need little depth
    # Codebook size: 9 bits per 8×8 patch. Flat colours and simple edges need far fewer
    # codes than photos (8192 in the paper); a small K also keeps the transformer's image
    # softmax cheap.
    vocab_size: int = 512
    n_init: int = 64  # decoder width right after the bottleneck's 1×1 conv (release: 128)
    stem_kernel: int = 7  # the release's 7×7 stem
    # "logit_laplace" (the paper's likelihood on pixels mapped into [ε, 1 − ε]) or "mse"
    # (squared error of the reconstruction, a common simpler choice). See `recon_loss`.
    recon_loss: str = "logit_laplace"
    # "gumbel" (the paper's relaxation) or "vq" (nearest codebook vector, EMA codebook,
    # dead-code restarts; see the module docstring). code_dim: the codebook vectors' size (vq).
    quantizer: str = "gumbel"
    code_dim: int = 32

    def __post_init__(self):
        if self.recon_loss not in ("logit_laplace", "mse"):
            raise ValueError(f"recon_loss must be 'logit_laplace' or 'mse', got {self.recon_loss!r}")
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer must be one of {QUANTIZERS}, got {self.quantizer!r}")
        if self.code_dim < 1:
            raise ValueError(f"code_dim must be positive, got {self.code_dim}")
        if self.image_size % self.downsample:
            raise ValueError(f"image_size {self.image_size} is not divisible by the downsampling "
                             f"factor {self.downsample} of {len(self.mults)} groups")
        for m in self.mults:
            if (self.hidden * m) % 4:
                raise ValueError(f"group width hidden × mult = {self.hidden * m} must be divisible by 4 "
                                 "(residual blocks run at a quarter of the width)")

    @property
    def bottleneck(self) -> int:
        """Channels between encoder and decoder: code logits (gumbel) or code vectors (vq)."""
        return self.vocab_size if self.quantizer == "gumbel" else self.code_dim

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.mults) - 1)

    @property
    def grid_size(self) -> int:
        """Codes per image side."""
        return self.image_size // self.downsample

    @property
    def n_layers(self) -> int:
        return len(self.mults) * self.blocks_per_group

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DVAEConfig":
        d = dict(d)
        if "mults" in d:
            d["mults"] = tuple(d["mults"])
        return cls(**d)


# The released DALL·E dVAE (256×256 -> 32×32 codes, 8192 codes).
OPENAI_DVAE = DVAEConfig(image_size=256, channels=3, hidden=256, mults=(1, 2, 4, 8), blocks_per_group=2,
                         vocab_size=8192, n_init=128, stem_kernel=7, recon_loss="logit_laplace")


# ---------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------


def _conv(n_in: int, n_out: int, k: int) -> nn.Conv2d:
    conv = nn.Conv2d(n_in, n_out, k, padding=(k - 1) // 2)
    # The release's initialisation: N(0, 1/fan_in), zero bias.
    nn.init.normal_(conv.weight, std=1 / math.sqrt(n_in * k * k))
    nn.init.zeros_(conv.bias)
    return conv


class _ResBlock(nn.Module):
    """id_path(x) + post_gain · res_path(x); post_gain = 1 / n_layers² keeps the residual
    branches small at initialisation (the paper: "small output gains on residual blocks")."""

    def __init__(self, n_in: int, n_out: int, n_layers: int, kernels: tuple[int, int, int, int]):
        super().__init__()
        n_hid = n_out // 4
        self.post_gain = 1 / n_layers ** 2
        self.id_path = _conv(n_in, n_out, 1) if n_in != n_out else nn.Identity()
        widths = (n_in, n_hid, n_hid, n_hid, n_out)
        layers = OrderedDict()
        for i, k in enumerate(kernels):
            layers[f"relu_{i + 1}"] = nn.ReLU()
            layers[f"conv_{i + 1}"] = _conv(widths[i], widths[i + 1], k)
        self.res_path = nn.Sequential(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.id_path(x) + self.post_gain * self.res_path(x)


class _Upsample(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=2, mode="nearest")


def _tower(cfg: DVAEConfig, stem: nn.Module, n_in: int, widths: list[int], kernels: tuple[int, int, int, int],
           resample: tuple[str, Callable[[], nn.Module]], n_out: int) -> nn.Sequential:
    """The release's layout, shared by encoder and decoder: `input` (the stem), one
    `group_g` per width (residual blocks, then `resample` between groups), `output`
    (ReLU + 1×1 conv to n_out). Modules are built in this order, so is their random init."""
    blocks = OrderedDict(input=stem)
    for g, width in enumerate(widths):
        group = OrderedDict()
        for b in range(cfg.blocks_per_group):
            group[f"block_{b + 1}"] = _ResBlock(n_in, width, cfg.n_layers, kernels)
            n_in = width
        if g < len(widths) - 1:
            group[resample[0]] = resample[1]()
        blocks[f"group_{g + 1}"] = nn.Sequential(group)
    blocks["output"] = nn.Sequential(OrderedDict(relu=nn.ReLU(), conv=_conv(n_in, n_out, 1)))
    return nn.Sequential(blocks)


class Encoder(nn.Module):
    """Image (B, C, H, W), pixels already mapped into [ε, 1 − ε] -> logits (B, K, h, w)."""

    def __init__(self, cfg: DVAEConfig):
        super().__init__()
        widths = [cfg.hidden * m for m in cfg.mults]
        self.blocks = _tower(cfg, _conv(cfg.channels, widths[0], cfg.stem_kernel), widths[0], widths,
                             (3, 3, 3, 1), ("pool", lambda: nn.MaxPool2d(kernel_size=2)), cfg.bottleneck)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class Decoder(nn.Module):
    """(Relaxed) one-hot codes (B, K, h, w), or code vectors (B, code_dim, h, w) for the vq
    quantizer -> (B, 2C, H, W): μ then ln b per channel."""

    def __init__(self, cfg: DVAEConfig):
        super().__init__()
        widths = [cfg.hidden * m for m in reversed(cfg.mults)]
        self.blocks = _tower(cfg, _conv(cfg.bottleneck, cfg.n_init, 1), cfg.n_init, widths,
                             (1, 3, 3, 3), ("upsample", _Upsample), 2 * cfg.channels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.blocks(z)

    def forward_ids(self, ids: torch.Tensor, codebook: torch.Tensor | None = None) -> torch.Tensor:
        """Same as forward(one_hot(ids)) (or forward(codebook[ids]) with a vq codebook (K, D)),
        without building the (B, K, h, w) one-hot: the first 1×1 conv of a one-hot vector
        is a column lookup, of a codebook vector a lookup of the codebook times the conv."""
        conv = self.blocks.input
        w = conv.weight[:, :, 0, 0]  # (n_init, K or D)
        table = w.T if codebook is None else codebook @ w.T  # (K, n_init)
        x = F.embedding(ids, table) + conv.bias  # (B, h, w, n_init)
        x = x.permute(0, 3, 1, 2)  # (B, n_init, h, w)
        for name, module in self.blocks.named_children():
            if name != "input":
                x = module(x)
        return x


# ---------------------------------------------------------------------------
# The dVAE
# ---------------------------------------------------------------------------


class DVAE(nn.Module):
    """Encoder + decoder with the paper's relaxation and losses.

    `encode(images) -> ids (B, h, w)`, `decode(ids) -> images (B, C, H, W)` in [0, 1];
    `forward(images, temperature, generator)` is the training pass (see `loss`).
    """

    def __init__(self, config: DVAEConfig | None = None):
        super().__init__()
        self.config = config or DVAEConfig()
        self.encoder = Encoder(self.config)
        self.decoder = Decoder(self.config)
        if self.config.quantizer == "vq":
            K, D = self.config.vocab_size, self.config.code_dim
            # The codebook and its moving averages (counts and vector sums per code) are
            # buffers: learnt by `_update_codebook`, not by the optimiser; saved and resumed.
            self.register_buffer("codebook", torch.zeros(K, D))
            self.register_buffer("ema_count", torch.zeros(K))
            self.register_buffer("ema_sum", torch.zeros(K, D))
            self.register_buffer("codebook_ready", torch.zeros((), dtype=torch.bool))

    @property
    def grid_size(self) -> int:
        return self.config.grid_size

    # -- inference ------------------------------------------------------------

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) in [0, 1] -> code logits (B, K, h, w); for the vq quantizer
        the negative squared distance of each cell's encoder vector to every code."""
        z = self._encoder_out(images)
        return z if self.config.quantizer == "gumbel" else self._neg_distances(z)

    def _encoder_out(self, images: torch.Tensor) -> torch.Tensor:
        """Checked images in [0, 1] -> the encoder's output: logits (gumbel) or vectors (vq)."""
        _check_images(images, self.config)
        return self.encoder(map_pixels(images.float()))

    def _neg_distances(self, z: torch.Tensor) -> torch.Tensor:
        """Encoder vectors (B, D, h, w) -> −‖z − c_k‖² (B, K, h, w) (gradient flows to z),
        in float32 whatever autocast is on (the nearest code must not depend on rounding)."""
        with torch.autocast(z.device.type, enabled=False):
            # a copy: a training pass updates the codebook in place after this, and the
            # backward pass of these distances needs the codebook as it was
            z, cb = z.float(), self.codebook.detach().float().clone()
            zz = z.pow(2).sum(1, keepdim=True)  # (B, 1, h, w)
            cross = torch.einsum("bdhw,kd->bkhw", z, cb)
            return -(zz - 2 * cross + cb.pow(2).sum(1)[None, :, None, None])

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> the argmax codes (B, h, w), no noise (what the transformer sees)."""
        return self.logits(images).argmax(dim=1)

    def decode_stats(self, ids: torch.Tensor) -> torch.Tensor:
        """Codes (B, h, w) -> decoder output (B, 2C, H, W)."""
        if ids.dim() == 2:  # (B, h*w) flat raster order, as the transformer produces
            g = self.grid_size
            ids = ids.reshape(ids.shape[0], g, g)  # (B, h, w)
        if ids.dtype != torch.long:
            ids = ids.long()
        if int(ids.min()) < 0 or int(ids.max()) >= self.config.vocab_size:
            raise ValueError(f"code ids must lie in [0, {self.config.vocab_size}), got "
                             f"[{int(ids.min())}, {int(ids.max())}]")
        return self.decoder.forward_ids(ids, self.codebook if self.config.quantizer == "vq" else None)

    @torch.no_grad()
    def decode(self, ids: torch.Tensor) -> torch.Tensor:
        """Codes (B, h, w) or (B, h·w) -> images (B, C, H, W) in [0, 1]."""
        return stats_to_image(self.decode_stats(ids), self.config.channels)

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """decode(encode(images)): what the generator can at best reproduce."""
        return self.decode(self.encode(images))

    # -- training -------------------------------------------------------------

    def forward(self, images: torch.Tensor, temperature: float = 1.0,
                generator: torch.Generator | None = None, hard: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Training pass: (decoder output (B, 2C, H, W), encoder logits (B, K, h, w)).

        The decoder sees softmax((logits + Gumbel noise) / temperature) over the codebook.
        `generator` seeds the noise (so a resumed run draws the same noise); `hard=True`
        feeds the argmax one-hot instead (evaluation).

        vq quantizer: the decoder sees the nearest code vector with straight-through
        gradients (temperature and hard do not apply); in training mode with gradients on,
        the pass also updates the codebook (`_update_codebook`, like BatchNorm's running
        statistics), drawing dead-code restarts from `generator`.
        """
        if self.config.quantizer == "vq":
            return self._forward_vq(images, generator)
        logits = self.logits(images)
        if hard:
            z = F.one_hot(logits.argmax(1), self.config.vocab_size).permute(0, 3, 1, 2).to(logits.dtype)
        else:
            z = gumbel_softmax(logits, temperature, dim=1, generator=generator)
        return self.decoder(z), logits

    def _forward_vq(self, images: torch.Tensor, generator: torch.Generator | None):
        z = self._encoder_out(images).float()  # (B, D, h, w)
        if self.training and torch.is_grad_enabled() and not bool(self.codebook_ready):
            self._init_codebook(z.detach(), generator)
        logits = self._neg_distances(z)
        ids = logits.detach().argmax(1)  # (B, h, w)
        q = F.embedding(ids, self.codebook.float()).permute(0, 3, 1, 2)  # (B, D, h, w)
        stats = self.decoder(z + (q - z).detach())  # straight-through
        if self.training and torch.is_grad_enabled():
            self._update_codebook(z.detach(), ids, generator)
        return stats, logits

    def _flat(self, z: torch.Tensor) -> torch.Tensor:
        return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])  # (B·h·w, D)

    @torch.no_grad()
    def _init_codebook(self, z: torch.Tensor, generator: torch.Generator | None) -> None:
        """The first batch's encoder vectors, drawn at random, start the codebook."""
        flat = self._flat(z)
        pick = flat[torch.randint(len(flat), (self.config.vocab_size,), generator=generator)]
        self.codebook.copy_(pick)
        self.ema_sum.copy_(pick)
        self.ema_count.fill_(1.0)
        self.codebook_ready.fill_(True)

    @torch.no_grad()
    def _update_codebook(self, z: torch.Tensor, ids: torch.Tensor, generator: torch.Generator | None,
                         decay: float = VQ_EMA_DECAY, dead_below: float = VQ_DEAD_COUNT) -> None:
        """EMA of assignment counts and vector sums; code = sum / count (Laplace-smoothed).
        Codes whose moving count fell below `dead_below` restart on random vectors of this batch."""
        K = self.config.vocab_size
        flat = self._flat(z)
        onehot = F.one_hot(ids.flatten(), K).to(flat.dtype)  # (N, K)
        self.ema_count.mul_(decay).add_(onehot.sum(0), alpha=1 - decay)
        self.ema_sum.mul_(decay).add_(onehot.T @ flat, alpha=1 - decay)
        n = self.ema_count.sum()
        count = (self.ema_count + 1e-5) / (n + K * 1e-5) * n
        self.codebook.copy_(self.ema_sum / count[:, None])
        dead = self.ema_count < dead_below
        n_dead = int(dead.sum())
        if n_dead:
            pick = flat[torch.randint(len(flat), (n_dead,), generator=generator)]
            self.codebook[dead] = pick
            self.ema_sum[dead] = pick
            self.ema_count[dead] = 1.0

    def loss(self, images: torch.Tensor, stats: torch.Tensor, logits: torch.Tensor,
             kl_weight: float, commitment: float = VQ_COMMITMENT) -> tuple[torch.Tensor, dict[str, float]]:
        """Negative ELB per sub-pixel: reconstruction + β · KL(q ‖ uniform) · (h·w)/(H·W·C).

        vq quantizer: reconstruction + commitment · ‖z − sg(c)‖² per component instead
        (the returned parts: recon, commit, mse, psnr).

        Both terms are normalised by the number of sub-pixels, as in the paper (there β is
        6.6 and the effective KL weight β/192 for 256×256×3 images and 32×32 codes; a
        64×64×3 image with 8×8 codes has the same ratio). Returns the loss and floats for
        logging: recon, kl (nats per code), mse and psnr of sigmoid(μ) against the image.
        """
        x = images.float()
        recon = recon_loss(x, stats, self.config.recon_loss, self.config.channels)
        if self.config.quantizer == "vq":
            # commitment: mean squared distance of the encoder vectors to their codes, per
            # vector component (−max logit is ‖z − c‖² of the nearest code); kl_weight unused
            commit = -logits.max(1).values.mean() / self.config.code_dim
            total = recon + commitment * commit
            with torch.no_grad():
                mse = F.mse_loss(stats_to_image(stats.detach(), self.config.channels), x).item()
            return total, {"recon": recon.item(), "commit": commit.item(), "mse": mse, "psnr": psnr(mse)}
        log_q = F.log_softmax(logits, dim=1)  # (B, K, h, w)
        kl = (log_q.exp() * log_q).sum(1).mean() + math.log(self.config.vocab_size)  # nats per code
        B, C, H, W = x.shape
        h, w = logits.shape[-2:]
        total = recon + kl_weight * kl * (h * w) / (C * H * W)
        with torch.no_grad():
            rec = stats_to_image(stats.detach(), self.config.channels)
            mse = F.mse_loss(rec, x).item()
        return total, {"recon": recon.item(), "kl": kl.item(), "mse": mse, "psnr": psnr(mse)}


# ---------------------------------------------------------------------------
# Functions
# ---------------------------------------------------------------------------


def gumbel_softmax(logits: torch.Tensor, temperature: float, dim: int = -1,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """softmax((logits + g) / τ), g ~ Gumbel(0, 1), drawn from `generator` (torch's own
    `F.gumbel_softmax` draws from the global RNG, which a resumed run cannot replay)."""
    u = torch.rand(logits.shape, generator=generator, dtype=logits.dtype, device=logits.device)
    e = -torch.log(u.clamp_min(1e-20))  # Exp(1) noise
    g = -torch.log(e.clamp_min(1e-20))  # Gumbel(0, 1)
    return F.softmax((logits + g) / temperature, dim=dim)


def stats_to_image(stats: torch.Tensor, channels: int = 3) -> torch.Tensor:
    """Decoder output -> image in [0, 1]: unmap(sigmoid(μ)), as in the release's notebook."""
    return unmap_pixels(torch.sigmoid(stats[:, :channels].float()))


def recon_loss(x: torch.Tensor, stats: torch.Tensor, kind: str = "logit_laplace", channels: int = 3) -> torch.Tensor:
    """Reconstruction loss per sub-pixel for images x in [0, 1].

    logit_laplace (the paper): pixels y = map(x) in [ε, 1 − ε] are modelled by the
    logit-Laplace density f(y | μ, b) = exp(−|logit(y) − μ| / b) / (2b · y(1 − y)); the
    loss is its negative log, including the data term log(y(1 − y)) so it is a proper
    NLL in nats. Its scale b is learned per pixel, so flat regions can be very sure.
    mse: squared error between sigmoid(μ) and y in the mapped space (b unused); simpler
    and steadier on short CPU runs, but it blurs edges more.
    """
    mu, ln_b = stats[:, :channels].float(), stats[:, channels:2 * channels].float()
    y = map_pixels(x)
    if kind == "mse":
        return F.mse_loss(torch.sigmoid(mu), y)
    logit_y = torch.log(y) - torch.log1p(-y)
    nll = (logit_y - mu).abs() * torch.exp(-ln_b) + ln_b + math.log(2) + torch.log(y * (1 - y))
    return nll.mean()


def psnr(mse: float, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB for images in [0, peak]."""
    return float("inf") if mse <= 0 else 10 * math.log10(peak ** 2 / mse)


def _check_images(images: torch.Tensor, cfg: DVAEConfig) -> None:
    if images.dim() != 4 or images.shape[1] != cfg.channels:
        raise ValueError(f"expected images (B, {cfg.channels}, H, W), got shape {tuple(images.shape)}")
    H, W = images.shape[-2:]
    if H % cfg.downsample or W % cfg.downsample:
        raise ValueError(f"image size {H}×{W} is not divisible by the dVAE's downsampling factor "
                         f"{cfg.downsample}")
