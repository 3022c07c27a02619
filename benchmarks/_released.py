"""A module laid out like OpenAI's released TorchScript archives, for building test and
benchmark checkpoints of that format from any clipkit model (shared by
tests/test_checkpoints.py and benchmarks/bench_loading.py)."""
from __future__ import annotations

import torch


class Released(torch.nn.Module):
    """The model's modules and parameters under the same names, plus the three integer
    entries the released archives carry (`input_resolution`, `context_length`,
    `vocab_size`) and a text attention mask, as OpenAI's scripted model has them."""

    def __init__(self, model):
        super().__init__()
        for name, child in model.named_children():
            self.add_module(name, child)
        for name, param in model.named_parameters(recurse=False):
            self.register_parameter(name, param)
        self.register_buffer("input_resolution", torch.tensor(model.config.vision.image_size))
        self.register_buffer("context_length", torch.tensor(model.config.text.context_length))
        self.register_buffer("vocab_size", torch.tensor(model.config.text.vocab_size))
        self.transformer.resblocks[0].register_buffer("attn_mask", torch.full((77, 77), float("-inf")).triu(1))

    def forward(self, images):
        return self.visual(images)
