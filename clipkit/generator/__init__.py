"""DALL·E-style generator: discrete VAE + sparse-attention transformer (sibling of the CLIP core).

    from clipkit.generator import Generator, load_default
    gen = Generator.load("generator.safetensors")
    images = gen.generate("a green pentagon", n=16, seed=0)

Parts: `dvae.py` (discrete VAE, the released DALL·E architecture), `openai_dvae.py` (the
released weights, read through clipkit's one restricted unpickler,
`clipkit.checkpoints.safe_pickle`), `transformer.py` (text + image stream with row / column /
convolutional masks), `sample.py` (KV-cached sampling, guidance), `generator.py` (the
`Generator` pipeline, and `make_grid` to tile its images), `configs.py` (the named
architectures), `train.py` (training both stages on the shared skeleton,
`clipkit.training`; imported only when asked for). Outside this package the model code
uses only the tokenizer and the shared layers. Names resolve lazily: importing this
package loads nothing heavy.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "Generator": "clipkit.generator.generator",
    "GeneratedImages": "clipkit.generator.generator",
    "load_default": "clipkit.generator.generator",
    "make_grid": "clipkit.generator.generator",
    "DVAE": "clipkit.generator.dvae",
    "DVAEConfig": "clipkit.generator.dvae",
    "OPENAI_DVAE": "clipkit.generator.dvae",
    "DALLETransformer": "clipkit.generator.transformer",
    "TransformerConfig": "clipkit.generator.transformer",
    "build_mask": "clipkit.generator.transformer",
    "text_from_clip_ids": "clipkit.generator.transformer",
    "sample_codes": "clipkit.generator.sample",
    "filter_logits": "clipkit.generator.sample",
    "load_openai_dvae": "clipkit.generator.openai_dvae",
    "convert_openai_dvae": "clipkit.generator.openai_dvae",
    "read_pickled_state_dict": "clipkit.generator.openai_dvae",
    "GENERATOR_CONFIGS": "clipkit.generator.configs",
    "get_generator_config": "clipkit.generator.configs",
    "train_dvae": "clipkit.generator.train",
    "train_transformer": "clipkit.generator.train",
}

__all__ = sorted(k for k, v in _LAZY.items() if not v.endswith(".train"))  # star-import skips training


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'clipkit.generator' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
