"""The world as a map-style torch Dataset of (image tensor, caption)."""
from __future__ import annotations

from typing import Callable

from clipkit.data.synth.world import Sample, SynthWorld
from clipkit.transforms import to_tensor  # noqa: F401 - the one converter; re-exported by clipkit.data.synth

# ---------------------------------------------------------------------------
# torch Dataset
# ---------------------------------------------------------------------------

try:
    from torch.utils.data import Dataset as _TorchDataset
except ImportError:  # pragma: no cover - torch is a dependency
    _TorchDataset = object


class SynthDataset(_TorchDataset):
    """Map-style dataset over a world: item i is `(transform(image), caption)` of sample i.

    The length is virtual (default 2**24, more than an hour of CPU training sees).
    Shuffling adds nothing, every index already being an independent random scene, and
    sequential indices avoid a shuffler's permutation of the whole length. Picklable: a
    worker gets the world's settings and loads fonts itself on first use.
    """

    def __init__(self, world: SynthWorld, length: int | None = None, transform: Callable | None = None,
                 offset: int = 0):
        self.world, self.transform, self.offset = world, transform, int(offset)
        self.length = int(2 ** 24 if length is None else length)

    def __len__(self) -> int:
        return self.length

    def sample(self, i: int) -> Sample:
        if not 0 <= i < self.length:
            raise IndexError(f"index {i} out of range for SynthDataset of length {self.length}")
        return self.world.sample(self.offset + i)

    def __getitem__(self, i: int):
        s = self.sample(int(i))
        return (s.image if self.transform is None else self.transform(s.image)), s.caption

    def attrs(self, i: int) -> dict:
        return self.sample(int(i)).attrs


