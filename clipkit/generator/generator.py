"""`Generator`: caption -> images, with the dVAE, the transformer and the shared tokenizer.

    gen = Generator.load("generator.safetensors")        # or load_default()
    images = gen.generate("a green pentagon", n=16, seed=0)          # 16 PIL images
    best = gen.generate("a green pentagon", n=64, rerank=Reranker(), top_k=4)
    best.scores                                                      # CLIP scores, best first

Two different "top k"s: `top_k` is the number of images kept after reranking (the
reranking hook, `generate(caption, n=…, rerank=reranker, top_k=…)`); `filter_top_k` /
`top_p` filter the image-code distribution at each sampling step.

The caption is tokenized once, by the shared CLIP tokenizer: the framed ids feed the
transformer (padding replaced by per-position pad tokens) and, when the reranker takes a
`text_ids=` keyword, the reranker as well.
"""
from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from clipkit.generator.dvae import DVAE, DVAEConfig
from clipkit.generator.sample import row_generators, sample_codes
from clipkit.generator.transformer import DALLETransformer, TransformerConfig, text_from_clip_ids

FORMAT = "clipkit-generator/1"
DEFAULT_WEIGHTS = "generator-synth.safetensors"
DEFAULT_GUIDANCE = 3.0  # classifier-free guidance scale when the weights name none


class GeneratedImages(list):
    """The images of one caption (a list of PIL images, best first when reranked).

    caption: the caption. indices: each image's sample number j (image j of a seed is the
    same for any n and batch size). scores: reranker scores, or None. codes: (k, grid²)
    image codes.
    """

    def __init__(self, images, caption: str, indices: list[int], codes: torch.Tensor,
                 scores: list[float] | None = None):
        super().__init__(images)
        self.caption, self.indices, self.codes, self.scores = caption, indices, codes, scores

    def __repr__(self) -> str:
        extra = "" if self.scores is None else f", scores={[round(s, 4) for s in self.scores]}"
        return f"GeneratedImages({self.caption!r}, {len(self)} images{extra})"


class Generator(nn.Module):
    """The DALL·E pipeline: tokenizer -> transformer -> image codes -> dVAE decoder."""

    def __init__(self, dvae: DVAE, transformer: DALLETransformer, tokenizer=None,
                 defaults: dict[str, Any] | None = None):
        super().__init__()
        dc, tc = dvae.config, transformer.config
        if dc.vocab_size != tc.image_vocab:
            raise ValueError(f"the dVAE has {dc.vocab_size} codes, the transformer {tc.image_vocab}")
        if dc.grid_size != tc.grid_size:
            raise ValueError(f"the dVAE makes {dc.grid_size}² grids, the transformer expects {tc.grid_size}²")
        self.dvae, self.transformer = dvae, transformer
        self._tokenizer = tokenizer
        self.defaults = {"guidance": DEFAULT_GUIDANCE, **(defaults or {})}

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from clipkit.tokenizer import get_tokenizer

            self._tokenizer = get_tokenizer()  # the one shared with the CLIP text tower
        return self._tokenizer

    @property
    def text_len(self) -> int:
        return self.transformer.config.text_len

    def tokenize(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(framed CLIP ids (M, text_len) zero-padded, generator text ids (M, text_len))."""
        clip_ids = self.tokenizer(list(captions), context_length=self.text_len)
        return clip_ids, text_from_clip_ids(clip_ids, self.text_len)

    # -- sampling ---------------------------------------------------------------

    @torch.no_grad()
    def sample_codes(self, captions: str | Sequence[str], n: int = 16, *, seed: int = 0,
                     temperature: float = 1.0, filter_top_k: int | None = None, top_p: float | None = None,
                     guidance: float | None = None, image_prompt=None, prompt_rows: int | None = None,
                     batch_size: int = 64, use_cache: bool = True,
                     text: torch.Tensor | None = None, progress: bool | None = None) -> torch.Tensor:
        """Image codes (M, n, grid²) for M captions; see `generate` for the arguments.

        Sample j of every caption draws from the generator of (seed, j), so the result for
        one caption does not depend on n, batch_size or the other captions.
        """
        captions = [captions] if isinstance(captions, str) else list(captions)
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not temperature >= 0:  # also refuses NaN
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
        if top_p is not None and not 0 < top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {top_p}")
        if filter_top_k is not None and filter_top_k < 1:
            raise ValueError(f"filter_top_k must be >= 1, got {filter_top_k}")
        if text is None:
            text = self.tokenize(captions)[1]
        guidance = self.defaults["guidance"] if guidance is None else float(guidance)
        prefix = self._prompt_codes(image_prompt, prompt_rows)
        device = self.transformer.image_head.weight.device
        M, N = len(captions), self.transformer.config.image_len
        out = torch.empty(M, n, N, dtype=torch.long)
        jobs = [(m, j) for m in range(M) for j in range(n)]
        from clipkit.utils import progress_bar

        # one step = one image token for a batch of rows; a bar for anything but tiny jobs
        steps = -(-len(jobs) // batch_size) * (N - (0 if prefix is None else prefix.shape[1]))
        with progress_bar(steps, desc=f"sampling {len(jobs)} images", unit="step", progress=progress,
                          min_items=4 * N) as bar:
            for s in range(0, len(jobs), batch_size):
                chunk = jobs[s:s + batch_size]
                rows = text[[m for m, _ in chunk]].to(device)
                pre = None if prefix is None else prefix.to(device).expand(len(chunk), -1)
                chunk_gens = [row_generators(seed, 1, first=j)[0] for _, j in chunk]  # sample j's own stream
                codes = sample_codes(self.transformer, rows, temperature=temperature, top_k=filter_top_k,
                                     top_p=top_p, guidance=guidance, image_prefix=pre, generators=chunk_gens,
                                     use_cache=use_cache, on_step=lambda i, logits: bar.update(1))
                for (m, j), c in zip(chunk, codes.cpu()):
                    out[m, j] = c
        return out

    def _prompt_codes(self, image_prompt, prompt_rows) -> torch.Tensor | None:
        """The first prompt_rows rows of the image prompt's codes (1, rows · grid), or None."""
        if image_prompt is None:
            if prompt_rows is not None:
                raise ValueError("prompt_rows needs an image_prompt")
            return None
        g = self.transformer.config.grid_size
        rows = g // 2 if prompt_rows is None else int(prompt_rows)
        if not 0 <= rows <= g:
            raise ValueError(f"prompt_rows must lie in [0, {g}], got {rows}")
        if isinstance(image_prompt, torch.Tensor) and image_prompt.dtype == torch.long:
            codes = image_prompt.reshape(1, -1)  # codes already
        else:
            from clipkit.transforms import to_tensor

            img = image_prompt if isinstance(image_prompt, torch.Tensor) else to_tensor(
                image_prompt, self.dvae.config.image_size)
            if img.dim() == 3:
                img = img[None]
            device = self.dvae.encoder.blocks.input.weight.device
            codes = self.dvae.encode(img.to(device)).reshape(1, -1).cpu()  # (1, N)
        return codes[:, :rows * g]

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> list:
        """Codes (B, grid²) -> PIL images."""
        device = self.dvae.encoder.blocks.input.weight.device
        return tensor_to_pil(self.dvae.decode(codes.to(device)).cpu())

    def generate(self, caption_or_captions: str | Sequence[str], n: int = 16, *, seed: int = 0,
                 temperature: float = 1.0, filter_top_k: int | None = None, top_p: float | None = None,
                 guidance: float | None = None, rerank=None, top_k: int | None = None,
                 image_prompt=None, prompt_rows: int | None = None, batch_size: int = 64,
                 use_cache: bool = True, progress: bool | None = None) -> GeneratedImages | list[GeneratedImages]:
        """Draw n images per caption; with `rerank`, keep the `top_k` best by its scores.

        caption_or_captions: a caption (returns one GeneratedImages) or a list of captions
            (returns a list, one per caption).
        seed: sample j of a caption is a function of (caption, seed, j) and the settings.
        temperature, filter_top_k, top_p: per-step sampling over the image codes.
        guidance: classifier-free guidance scale (1 = none; default: the model's).
        rerank: an object with `.rerank(images, caption, top_k)` returning (image, score)
            pairs best first (e.g. `clipkit.rerank.Reranker`); given a `text_ids=` keyword,
            it receives the caption's token ids so the caption is tokenized only once.
        top_k: images kept after reranking (default: all n, sorted). Needs `rerank`.
        image_prompt: a PIL image, an image tensor (3, H, W) in [0, 1] or its codes; the
            first `prompt_rows` rows of its codes (default half the grid) are kept and the
            rest completed.
        """
        single = isinstance(caption_or_captions, str)
        captions = [caption_or_captions] if single else list(caption_or_captions)
        if not captions:
            raise ValueError("no caption given")
        if top_k is not None and rerank is None:
            raise ValueError("top_k keeps the best images after reranking: pass rerank= (e.g. "
                             "clipkit.rerank.Reranker()); to filter sampling use filter_top_k=")
        if top_k is not None and not 1 <= top_k <= n:
            raise ValueError(f"top_k must lie in [1, n={n}], got {top_k}")
        clip_ids, text = self.tokenize(captions)
        codes = self.sample_codes(captions, n, seed=seed, temperature=temperature, filter_top_k=filter_top_k,
                                  top_p=top_p, guidance=guidance, image_prompt=image_prompt,
                                  prompt_rows=prompt_rows, batch_size=batch_size, use_cache=use_cache, text=text,
                                  progress=progress)
        results = []
        for m, caption in enumerate(captions):
            images = self.decode(codes[m])
            result = GeneratedImages(images, caption, list(range(n)), codes[m])
            if rerank is not None:
                result = _rerank(rerank, result, top_k or n, clip_ids[m:m + 1])
            results.append(result)
        return results[0] if single else results

    # -- weights ----------------------------------------------------------------------

    def save(self, path: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
        """One safetensors file: `dvae.*` and `transformer.*` tensors, configs in the metadata.
        `dtype=torch.float16` halves the file; `load` converts back to float32."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {}
        for prefix, module in (("dvae", self.dvae), ("transformer", self.transformer)):
            for k, v in module.state_dict().items():
                if dtype is not None and v.is_floating_point():
                    v = v.to(dtype)
                tensors[f"{prefix}.{k}"] = v.detach().cpu().contiguous()
        meta = {"format": FORMAT, "dvae_config": json.dumps(self.dvae.config.to_dict()),
                "transformer_config": json.dumps(self.transformer.config.to_dict()),
                "defaults": json.dumps(self.defaults)}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu", tokenizer=None) -> "Generator":
        """A Generator from a file written by `save` (safetensors: no code runs while loading)."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no generator weights at {path}")
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise ValueError(f"{path} is not a clipkit generator file (format {meta.get('format')!r}, "
                                 f"expected {FORMAT!r}); a training checkpoint? `clipkit train-generator "
                                 "--stage transformer` writes the loadable <out>/generator.safetensors "
                                 "at every checkpoint")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        dvae = DVAE(DVAEConfig.from_dict(json.loads(meta["dvae_config"])))
        transformer = DALLETransformer(TransformerConfig.from_dict(json.loads(meta["transformer_config"])))
        for prefix, module in (("dvae", dvae), ("transformer", transformer)):
            state = {k[len(prefix) + 1:]: v.float() if v.is_floating_point() else v
                     for k, v in tensors.items() if k.startswith(prefix + ".")}
            module.load_state_dict(state, strict=True)
        gen = cls(dvae, transformer, tokenizer, json.loads(meta.get("defaults", "{}")))
        return gen.to(device).eval()


def default_weights_path() -> Path:
    return Path(__file__).resolve().parent.parent / "weights" / DEFAULT_WEIGHTS


def load_default(device: str | torch.device = "cpu") -> Generator:
    """The generator shipped with clipkit (trained on the synthetic world)."""
    path = default_weights_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"the shipped generator weights are not installed ({path} is missing). Train them with "
            "`clipkit train-generator --stage dvae --out runs/gen` then "
            "`--stage transformer`, or load your own file with Generator.load(path).")
    return Generator.load(path, device=device)


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _rerank(reranker, result: GeneratedImages, top_k: int, clip_ids: torch.Tensor) -> GeneratedImages:
    """Score with the reranker and keep the best top_k (its order), passing the ids if it takes them."""
    fn = reranker.rerank
    try:
        takes_ids = "text_ids" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        takes_ids = False
    images = list(result)
    kept = fn(images, result.caption, top_k, text_ids=clip_ids) if takes_ids else fn(images, result.caption, top_k)
    pairs = list(kept)
    order = getattr(kept, "indices", None)
    if order is None:
        pos = {id(img): i for i, img in enumerate(images)}
        order = [pos[id(img)] for img, _ in pairs]
    order = [int(i) for i in order]
    return GeneratedImages([img for img, _ in pairs], result.caption, [result.indices[i] for i in order],
                           result.codes[order], [float(s) for _, s in pairs])


def pil_to_tensor(image, size: int | None = None) -> torch.Tensor:
    """Deprecated: `clipkit.transforms.to_tensor`, the one PIL -> tensor converter."""
    import warnings

    from clipkit.transforms import to_tensor

    warnings.warn("clipkit.generator.generator.pil_to_tensor is deprecated: use clipkit.transforms.to_tensor",
                  DeprecationWarning, stacklevel=2)
    return to_tensor(image, size)


def make_grid(images: list, cols: int | None = None, scale: int = 1, labels: list[str] | None = None,
              pad: int = 2):
    """Tile PIL images into one image, with an optional label under each."""
    import math

    from PIL import Image, ImageDraw

    if not images:
        raise ValueError("no images to tile")
    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    w, h = images[0].size
    w, h = w * scale, h * scale
    label_h = 12 if labels else 0
    grid = Image.new("RGB", (cols * (w + pad) + pad, rows * (h + label_h + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        x, y = pad + c * (w + pad), pad + r * (h + label_h + pad)
        grid.paste(img.resize((w, h), Image.NEAREST), (x, y))
        if labels:
            draw.text((x + 1, y + h), labels[i], fill=(0, 0, 0))
    return grid


def tensor_to_pil(images: torch.Tensor) -> list:
    """(B, 3, H, W) in [0, 1] -> PIL images."""
    from PIL import Image

    arr = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a, "RGB") for a in arr]
