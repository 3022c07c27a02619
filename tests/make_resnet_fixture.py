"""Write the open_clip parity fixtures in tests/fixtures/resnet/ (run by hand, not in CI).

open_clip imports torchvision, which has no working build for the CPU torch of the
project's venv, so the reference outputs are produced once in a second venv and
committed; `tests/test_parity_hf.py` only reads them:

    /work/oracle-venv/bin/python tests/make_resnet_fixture.py     # open_clip_torch 3.3.0

Two small models with OpenAI's architecture (QuickGELU, argmax pooling): a modified
ResNet (stages (2, 1, 1, 1): identity and downsampling bottlenecks, attention pooling)
and a ViT. Every parameter is random (LayerNorm/BatchNorm affine parameters, biases,
BatchNorm running statistics and the logit scale included) so that no term of the
arithmetic can hide behind an init of 0 or 1. The vocabulary is cut to 1,000 ids to keep
the files small; the largest id (999) plays end-of-text.

Per model, `openclip_<name>_weights.safetensors` is open_clip's state dict (OpenAI keys)
and `openclip_<name>_io.safetensors` holds the inputs and open_clip's outputs; the model
config is in the metadata of both, as clipkit `CLIPConfig.to_dict()` JSON.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from safetensors.torch import save_file

OUT = Path(__file__).parent / "fixtures" / "resnet"
VOCAB, SOT, EOT = 1000, 998, 999

# name -> (clipkit config dict, open_clip vision cfg, open_clip text cfg, embed dim)
MODELS = {
    "rn": dict(
        embed_dim=64,
        vision=dict(image_size=64, width=4, layers=[2, 1, 1, 1], heads=4, patch_size=None, mlp_ratio=4.0),
        text=dict(context_length=77, vocab_size=VOCAB, width=32, heads=1, layers=2),
    ),
    "vit": dict(
        embed_dim=40,
        vision=dict(image_size=32, width=48, layers=2, heads=2, patch_size=8, mlp_ratio=4.0),
        text=dict(context_length=77, vocab_size=VOCAB, width=32, heads=2, layers=2),
    ),
}


def build_open_clip(cfg: dict) -> CLIP:
    v, t = cfg["vision"], cfg["text"]
    if v["patch_size"] is None:
        # open_clip: ResNet attention-pool heads = width * 32 // head_width
        vision = CLIPVisionCfg(layers=tuple(v["layers"]), width=v["width"], head_width=v["width"] * 32 // v["heads"],
                               image_size=v["image_size"])
    else:
        vision = CLIPVisionCfg(layers=v["layers"], width=v["width"], head_width=v["width"] // v["heads"],
                               patch_size=v["patch_size"], image_size=v["image_size"], mlp_ratio=v["mlp_ratio"])
    text = CLIPTextCfg(context_length=t["context_length"], vocab_size=t["vocab_size"], width=t["width"],
                       heads=t["heads"], layers=t["layers"])
    return CLIP(cfg["embed_dim"], vision_cfg=vision, text_cfg=text, quick_gelu=True)


@torch.no_grad()
def randomize(model: CLIP, g: torch.Generator) -> None:
    """Perturb every parameter and BatchNorm statistic away from its structured init."""
    for name, p in model.named_parameters():
        if name == "logit_scale":
            p.fill_(math.log(20.0) + float(torch.rand((), generator=g)) * (math.log(90.0) - math.log(20.0)))
        elif p.ndim == 1 and name.endswith("weight"):  # LayerNorm / BatchNorm gains
            p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
        elif name.endswith("bias") or name.endswith("class_embedding"):
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
        else:  # matrices keep their init's scale, but get fresh random values
            std = float(p.std()) if p.numel() > 1 and float(p.std()) > 0 else 0.02
            p.copy_(std * torch.randn(p.shape, generator=g))
    # BatchNorm statistics: measured on random images (so activations keep a sane scale
    # and the features depend on the input), then perturbed so they are not exact.
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    if bns:
        for bn in bns:
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the calibration batches
        model.train()
        size = model.visual.image_size[0] if isinstance(model.visual.image_size, tuple) else model.visual.image_size
        for _ in range(4):
            model.visual(torch.randn(8, 3, size, size, generator=g))
        for bn in bns:
            bn.running_var.mul_(0.8 + 0.4 * torch.rand(bn.running_var.shape, generator=g))
            bn.running_mean.add_(0.1 * bn.running_var.sqrt() * torch.randn(bn.running_mean.shape, generator=g))
            bn.num_batches_tracked.fill_(1234)
            bn.momentum = 0.1
    model.eval()


def make_ids(context: int, lengths: list[int], g: torch.Generator) -> torch.Tensor:
    """Rows [SOT, random tokens..., EOT, 0, 0, ...]; `lengths` counts SOT and EOT."""
    ids = torch.zeros(len(lengths), context, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, 0] = SOT
        ids[i, 1:n - 1] = torch.randint(1, SOT, (n - 2,), generator=g)
        ids[i, n - 1] = EOT
    return ids


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for seed, (name, cfg) in enumerate(MODELS.items()):
        g = torch.Generator().manual_seed(1000 + seed)
        torch.manual_seed(1000 + seed)
        model = build_open_clip(cfg)
        randomize(model, g)
        model.eval()
        size = cfg["vision"]["image_size"]
        images = torch.randn(2, 3, size, size, generator=g)
        ids = make_ids(cfg["text"]["context_length"], [7, 23, 77], g)
        with torch.no_grad():
            image_features = model.encode_image(images)
            text_features = model.encode_text(ids)
            img_n = image_features / image_features.norm(dim=-1, keepdim=True)
            txt_n = text_features / text_features.norm(dim=-1, keepdim=True)
            logits_per_image = model.logit_scale.exp() * img_n @ txt_n.t()
        full = dict(cfg, quick_gelu=True, image_mean=[0.48145466, 0.4578275, 0.40821073],
                    image_std=[0.26862954, 0.26130258, 0.27577711])
        meta = {"config": json.dumps(full), "producer": "open_clip_torch 3.3.0, tests/make_resnet_fixture.py"}
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, OUT / f"openclip_{name}_weights.safetensors", metadata=meta)
        save_file({"images": images, "ids": ids, "image_features": image_features,
                   "text_features": text_features, "logits_per_image": logits_per_image},
                  OUT / f"openclip_{name}_io.safetensors", metadata=meta)
        n = sum(p.numel() for p in model.parameters())
        print(f"{name}: {n:,} parameters, {len(state)} keys, image {tuple(image_features.shape)}, "
              f"text {tuple(text_features.shape)}, logit scale {float(model.logit_scale.detach().exp()):.2f}")


if __name__ == "__main__":
    main()
