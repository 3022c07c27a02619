"""Named generator architectures (dVAE + transformer), as data; they feed the CLI's choices."""
from __future__ import annotations

from clipkit.generator.dvae import OPENAI_DVAE, DVAEConfig
from clipkit.generator.transformer import TransformerConfig

GENERATOR_CONFIGS: dict[str, tuple[DVAEConfig, TransformerConfig]] = {
    # A larger variant (not shipped): 64×64 synthetic images -> 8×8 codes of 512; a
    # 6.4M-parameter transformer over 32 text + 64 image positions, about 8× the compute
    # of synth-mini per step; ~30 MB in float32, ~15 MB saved as float16.
    "synth-small": (
        DVAEConfig(),
        TransformerConfig(text_len=32, text_vocab=512, image_vocab=512, grid_size=8,
                          width=256, layers=8, heads=8),
    ),
    # The first shipped model (the shipped one is now synth-vq, below; history in
    # clipkit/weights/GENERATOR_CARD.md): trains on one CPU core in under an hour. Its dVAE
    # uses the squared-error reconstruction loss: in short runs (hundreds of steps) the
    # logit-Laplace likelihood spent its updates on the per-pixel scales and reached a
    # hard-code MSE of 0.067 after 400 steps where MSE reached 0.023 after 100.
    "synth-mini": (
        DVAEConfig(hidden=16, recon_loss="mse"),
        TransformerConfig(text_len=32, text_vocab=512, image_vocab=512, grid_size=8,
                          width=128, layers=4, heads=4),
    ),
    # synth-mini's transformer over a dVAE for 32×32 images (4× downsampling to the same
    # 8×8 grid): an 8×8-pixel code rounds small shapes into blobs, a 4×4-pixel one keeps
    # their corners. At 32 pixels the synthetic shapes stay readable: the attribute judge
    # reads shape on 99.1% of renders box-downsampled from 64 to 32 (99.5% at 64, 85.4% at
    # 16). Same transformer cost per step; hidden 32 at 32² costs what 16 costs at 64².
    "synth-32": (
        DVAEConfig(image_size=32, hidden=32, mults=(1, 2, 4), recon_loss="mse"),
        TransformerConfig(text_len=32, text_vocab=512, image_vocab=512, grid_size=8,
                          width=128, layers=4, heads=4),
    ),
    # The vq tokenizer (nearest-code quantizer with an EMA codebook, see dvae.py): 32×32
    # images -> 8×8 codes of 2048, a dVAE twice as wide as synth-32's, under a transformer
    # of width 256 and 6 layers (8 layers sampled 16 images 40% slower). The trials that
    # chose it are in GENERATOR_CARD.md. The shipped model
    # (clipkit/weights/generator-synth.safetensors).
    "synth-vq": (
        DVAEConfig(image_size=32, hidden=64, mults=(1, 2, 4), vocab_size=2048, recon_loss="mse",
                   quantizer="vq", code_dim=32),
        TransformerConfig(text_len=32, text_vocab=512, image_vocab=2048, grid_size=8,
                          width=256, layers=6, heads=8),
    ),
    # Every code path in a few thousand parameters (tests).
    "tiny": (
        DVAEConfig(image_size=16, hidden=8, mults=(1, 2), vocab_size=16, n_init=8, stem_kernel=3),
        TransformerConfig(text_len=12, text_vocab=256, image_vocab=16, grid_size=8,
                          width=32, layers=2, heads=2),
    ),
}

DVAE_CONFIGS: dict[str, DVAEConfig] = {"openai": OPENAI_DVAE, **{k: v[0] for k, v in GENERATOR_CONFIGS.items()}}


def get_generator_config(name: str) -> tuple[DVAEConfig, TransformerConfig]:
    try:
        return GENERATOR_CONFIGS[name]
    except KeyError:
        raise KeyError(f"unknown generator config {name!r}; available: {sorted(GENERATOR_CONFIGS)}") from None
