"""benchmarks/readability_probes.py: the CNN fitting loop learns what is there and nothing
that is not (the probes' figures bound zero-shot readings from above only if it does)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

pytestmark = pytest.mark.usefixtures("one_thread")  # see tests/conftest.py


def _spots(n, seed):
    """(n, 1, 8, 8) noise images whose class (0-3) is the quadrant holding a bright spot."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.rand(n, 1, 8, 8, generator=g) * 0.5
    r, c = (y // 2) * 4 + torch.randint(0, 4, (n,), generator=g), (y % 2) * 4 + torch.randint(0, 4, (n,), generator=g)
    x[torch.arange(n), 0, r, c] = 2.0
    return x, y


def _net():
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(16 * 64, 4))


def test_fit_cnn_reads_what_is_there_and_not_what_is_not():
    from benchmarks.readability_probes import fit_cnn

    torch.manual_seed(0)
    x, y = _spots(2000, 0)
    tx, ty = _spots(400, 1)
    logged = []
    scores = fit_cnn(x, y, {"held out": (tx, ty), "shuffled": (tx, ty[torch.randperm(400)])}, steps=300,
                     stem=_net(), every=100, log=logged.append)
    assert scores["held out"] > 0.9
    assert len(logged) == 3 and "held out" in logged[-1]
    # labels that say nothing about the images teach nothing that holds out: near chance (0.25)
    torch.manual_seed(0)
    noise = fit_cnn(x, y[torch.randperm(2000)], {"held out": (tx, ty)}, steps=300, stem=_net(), every=300,
                    log=lambda _: None)
    assert noise["held out"] < 0.45
