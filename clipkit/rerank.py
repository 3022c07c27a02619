"""CLIP reranking: score images against a caption and keep the best (the DALL·E recipe:
draw many samples, let CLIP pick).

`Reranker.score` returns cosine similarities of normalized embeddings;
`Reranker.rerank` returns the top k with their scores, best first, ties in input order.
`reranked(generate_fn, reranker, n, top_k)` wraps any image generator callable.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch


@dataclass
class RerankResult:
    """The kept images, best first, with their scores and positions in the input."""

    caption: str
    images: list[Any]
    scores: list[float]
    indices: list[int]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path or position, reason)

    def __iter__(self):
        return iter(zip(self.images, self.scores))

    def __len__(self) -> int:
        return len(self.images)


class Reranker:
    """Scores images against captions with a CLIP model.

    `model` is a CLIP module, a `(model, preprocess)` pair, a name or path for
    `clipkit.load`, or None for the shipped default model. `fast="bf16"` or ``"int8"``
    encodes the images with `clipkit.models.fast.fast_model` (captions stay on `model`).
    """

    def __init__(self, model=None, preprocess: Callable | None = None, *, device: str = "cpu",
                 batch_size: int = 64, tokenizer=None, fast: str | None = None):
        from clipkit.models.fast import fast_model
        from clipkit.encode import resolve_model

        model, loaded = resolve_model(model, device=device)  # also unpacks a (model, preprocess) pair
        self.model, self.preprocess = model.eval(), preprocess or loaded
        self.image_model = fast_model(self.model, fast)
        self.device = device
        self.batch_size = batch_size
        if tokenizer is None:
            from clipkit.tokenizer import get_tokenizer

            tokenizer = get_tokenizer()
        self.tokenizer = tokenizer

    # -- embeddings -------------------------------------------------------

    def encode_images(self, images: Sequence[Any] | torch.Tensor) -> torch.Tensor:
        """Normalized image embeddings (N, D) for PIL images, paths or a preprocessed tensor;
        an unreadable file raises an error naming it."""
        return self._encode(images, skip_unreadable=False).features

    def _encode(self, images, skip_unreadable: bool):
        """:class:`~clipkit.encode.EncodedImages`: the readable items' rows, their positions,
        and (with `skip_unreadable`) the files left out and why."""
        from clipkit.encode import encode_images

        if not isinstance(images, torch.Tensor):
            images = list(images)
        if len(images) == 0:
            raise ValueError("no images to score: the image list is empty")
        return encode_images(self.image_model, images, preprocess=self.preprocess, batch_size=self.batch_size,
                             device=self.device, skip_unreadable=skip_unreadable, progress=False)

    @torch.inference_mode()
    def encode_captions(self, captions: Sequence[str] | None = None,
                        text_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Normalized text embeddings (M, D); pass `text_ids` to reuse a tokenization."""
        if text_ids is None:
            if not captions:
                raise ValueError("no caption given")
            text_ids = self.tokenizer(list(captions), context_length=self.model.config.text.context_length)
        if text_ids.dim() == 1:
            text_ids = text_ids[None]
        # Ids tokenized for another consumer (e.g. the generator) may be longer than the
        # context: encode_text drops trailing padding and names a real overflow.
        return self.model.encode_text(text_ids.to(self.device), normalize=True).float()

    # -- scoring ------------------------------------------------------------

    def score(self, images, caption: str | Sequence[str], *, text_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Cosine similarities: (N,) for one caption, (N, M) for a list of M captions."""
        return self._similarities(self.encode_images(images), caption, text_ids)

    def _similarities(self, image_features: torch.Tensor, caption, text_ids) -> torch.Tensor:
        single = isinstance(caption, str)
        captions = [caption] if single else list(caption)
        txt = self.encode_captions(captions, text_ids)
        sims = image_features @ txt.T  # (N, M)
        return sims[:, 0] if single and sims.shape[1] == 1 else sims

    def rerank(self, images, caption: str | Sequence[str], top_k: int | None = 1, *,
               text_ids: torch.Tensor | None = None,
               skip_unreadable: bool = False) -> RerankResult | list[RerankResult]:
        """The `top_k` best images for `caption`, best first (ties keep input order).

        A `top_k` above the number of images (or None) returns them all, ranked.
        ``skip_unreadable=True`` leaves out files that cannot be read and lists them in
        the result's ``skipped``; otherwise the first one raises an error naming it.
        Several captions at once: `caption` a list of M captions and `images` a list of M
        image lists (one group per caption); returns a list of M results.
        """
        if isinstance(caption, str):
            return self._rerank_one(images, caption, top_k, text_ids, skip_unreadable)
        captions = list(caption)
        groups = list(images)
        if len(groups) != len(captions):
            raise ValueError(f"{len(captions)} captions but {len(groups)} image groups: "
                             "pass one list of images per caption")
        ids = [None] * len(captions) if text_ids is None else list(text_ids)
        return [self._rerank_one(g, c, top_k, i, skip_unreadable) for g, c, i in zip(groups, captions, ids)]

    def _rerank_one(self, images, caption: str, top_k: int | None, text_ids,
                    skip_unreadable: bool) -> RerankResult:
        if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
        items = list(images.unbind(0)) if isinstance(images, torch.Tensor) and images.ndim == 4 else list(images)
        if not items:
            raise ValueError("no images to rerank: the image list is empty")
        enc = self._encode(images, skip_unreadable)
        positions = enc.indices  # rows -> positions in the input (all of them unless skipping)
        skipped = [(str(w), r) for w, r in enc.skipped]
        if not positions:
            return RerankResult(caption, [], [], [], skipped)
        scores = self._similarities(enc.features, caption, text_ids).reshape(len(positions))
        order = torch.sort(scores, descending=True, stable=True).indices[:top_k].tolist()
        keep = [positions[i] for i in order]
        return RerankResult(caption, [items[i] for i in keep], [float(scores[i]) for i in order], keep, skipped)


def reranked(generate_fn: Callable[..., Any], reranker: Reranker, n: int, top_k: int,
             images_attr: str | None = None) -> Callable[..., RerankResult]:
    """Wrap any generator callable: `fn(prompt, **kw)` draws `n` images and keeps the best `top_k`.

    `generate_fn(prompt, n=n, **kw)` may return a list of images or an object holding them
    (e.g. a diffusers pipeline's output with `.images`; name it with `images_attr`).
    If the callable does not take `n`, it is called until `n` images are collected.
    """
    if not callable(generate_fn):
        raise TypeError(f"generate_fn must be callable, got {type(generate_fn).__name__}")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if top_k > n:
        raise ValueError(f"top_k={top_k} is larger than n={n}")

    def unpack(out):
        if images_attr is not None:
            out = getattr(out, images_attr)
        elif hasattr(out, "images") and not isinstance(out, (list, tuple)):
            out = out.images
        return list(out) if not isinstance(out, torch.Tensor) or out.dim() == 4 else [out]

    takes_n = _accepts_keyword(generate_fn, "n")

    def wrapped(prompt: str, **kwargs) -> RerankResult:
        if takes_n:
            images = unpack(generate_fn(prompt, n=n, **kwargs))
        else:
            images = []
            while len(images) < n:
                batch = unpack(generate_fn(prompt, **kwargs))
                if not batch:
                    raise ValueError(f"the generator returned no images for {prompt!r}")
                images.extend(batch)
        if len(images) < n:
            raise ValueError(f"the generator returned {len(images)} images, asked for n={n}")
        return reranker.rerank(images[:n], prompt, top_k)

    return wrapped


def _accepts_keyword(fn: Callable, name: str) -> bool:
    import inspect

    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: assume not
        return False
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in params)

