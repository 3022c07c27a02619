"""Build the dVAE parity fixture from OpenAI's `DALL-E` package (run in the oracle venv).

    PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= /work/oracle-venv/bin/pip install DALL-E attrs
    /work/oracle-venv/bin/python tests/make_dalle_fixture.py

Writes tests/fixtures/dalle/:
  dvae_parity.safetensors  the package's Encoder/Decoder weights at small widths (random,
                           seeded; keys as in the release: `encoder.blocks.input.w`, ...),
                           input images, encoder logits, decoder inputs and outputs
  encoder.pkl, decoder.pkl the same modules pickled whole with `torch.save`, the way the
                           released encoder.pkl / decoder.pkl are, for the restricted loader

The package's attrs validators demand n_hid >= 64 and vocab_size >= 512 (real-model sizes);
they are switched off here so the fixture stays small. The layer code is unchanged.
CI never imports the package: it only reads these files.
"""
from __future__ import annotations

import json
from pathlib import Path

import attr
import torch
from safetensors.torch import save_file

import dall_e
from dall_e import Decoder, Encoder, map_pixels, unmap_pixels

OUT = Path(__file__).parent / "fixtures" / "dalle"
CONFIG = dict(n_hid=8, n_blk_per_group=2, vocab_size=64, n_init=8, image_size=32)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    attr.validators.set_disabled(True)
    torch.manual_seed(0)
    enc = Encoder(n_hid=CONFIG["n_hid"], n_blk_per_group=CONFIG["n_blk_per_group"],
                  vocab_size=CONFIG["vocab_size"], requires_grad=False).eval()
    dec = Decoder(n_init=CONFIG["n_init"], n_hid=CONFIG["n_hid"], n_blk_per_group=CONFIG["n_blk_per_group"],
                  vocab_size=CONFIG["vocab_size"], requires_grad=False).eval()
    attr.validators.set_disabled(False)
    # Random biases too (the package initialises them to zero, which would hide a bias bug).
    with torch.no_grad():
        for p in [*enc.parameters(), *dec.parameters()]:
            if p.dim() == 1:
                p.normal_(std=0.1)

    g = torch.Generator().manual_seed(1)
    S = CONFIG["image_size"]
    x = torch.rand(2, 3, S, S, generator=g)
    with torch.no_grad():
        logits = enc(map_pixels(x))  # (2, K, S/8, S/8)
        ids = logits.argmax(1)
        one_hot = torch.nn.functional.one_hot(ids, CONFIG["vocab_size"]).permute(0, 3, 1, 2).float()
        stats_hard = dec(one_hot)
        soft = torch.softmax(torch.randn(logits.shape, generator=g) * 3, dim=1)
        stats_soft = dec(soft)
        rec = unmap_pixels(torch.sigmoid(stats_hard[:, :3]))

    tensors = {f"encoder.{k}": v.contiguous() for k, v in enc.state_dict().items()}
    tensors |= {f"decoder.{k}": v.contiguous() for k, v in dec.state_dict().items()}
    outputs = {"x": x, "logits": logits, "ids": ids, "stats_hard": stats_hard, "soft": soft,
               "stats_soft": stats_soft, "reconstruction": rec}
    tensors |= {k: v.contiguous() for k, v in outputs.items()}
    meta = {"config": json.dumps(CONFIG), "package": f"DALL-E (dall_e at {Path(dall_e.__file__).parent.name})",
            "torch": torch.__version__}
    save_file(tensors, OUT / "dvae_parity.safetensors", metadata=meta)
    # Whole pickled modules, like the released files (the attrs fields travel in __dict__).
    torch.save(enc, OUT / "encoder.pkl")
    torch.save(dec, OUT / "decoder.pkl")
    for f in sorted(OUT.iterdir()):
        print(f"{f.name}: {f.stat().st_size / 1e3:.1f} kB")


if __name__ == "__main__":
    main()
