"""The synthetic world the shipped models are trained on: coloured shapes and digits.

Every sample is rendered from `(seed, split, index)` alone, so the stream is random-access,
the same on every run and safe to split across DataLoader workers or ranks. A sample
carries its image, a caption drawn from a small grammar, and its attributes as data.

Scenes (the `kind` attribute):

- `shape`: one coloured shape with a size (small/large) and a position (left, right, top,
  bottom, centre) on a neutral background: "a photo of a red circle.", "a small blue
  square on the left".
- `count`: one to four copies of the same coloured shape: "three red circles".
- `relation`: two different objects, one left of / right of / above / below the other:
  "a red circle left of a blue square", or the same scene said the other way round.
- `digit`: 0-9 from several typefaces and from procedural pen strokes, warped by a random
  affine map and an elastic field (Simard et al. 2003), thickened, blurred; half of them
  white on black and centred like MNIST (half of those drawn at MNIST's 28 pixels and
  upsampled bicubically, as a classifier sees an MNIST digit), the rest dark on light or
  coloured. That is the "classic" digit style, the first release's; `digit_style="robust"`
  draws most digits with real digits' variation instead (`clipkit.data.digit_styles`), and
  `"robust-hard"` the same with stretched and low-resolution digits more often. The pen
  strokes are "plain" (the first two releases') or, with `pen="hand"`, handwriting-like: the
  digit's proportions, where its strokes meet, their ends and the pen's pressure vary.

`sample(index, swap=...)` / `sample(index, recount=...)` draw a relation or count scene
with one fact changed and every other draw the same: the hard negatives of
`clipkit.data.negatives`.

The captions are the only supervision CLIP gets (Radford et al. 2021), so they are
written to make zero-shot evaluation in-distribution: the exact evaluation prompts
(`a photo of the number: "7".`, `a photo of a red star.`) are among the templates, and
synonyms ("violet", "disc", "seven") make the text tower generalise over wording.

Held-out combinations: `HELDOUT_PAIRS` are nine (colour, shape) pairs, one per colour and
one per shape, that the `train` and `val` splits never render, in any scene; the
`heldout` split renders only them. Zero-shot accuracy on them measures generalisation to
unseen attribute combinations.

Fonts are found once, in the process that builds the `SynthWorld` (matplotlib's bundled
DejaVu, STIX and Computer Modern, plus anything under /usr/share/fonts), and kept as a
list of paths: workers load them lazily from that list, so every process draws from the
same typefaces. With no usable font file, Pillow's built-in font stands in.

    world = SynthWorld(seed=0, image_size=64)
    s = world.sample(12345)            # Sample(image=<PIL RGB 64x64>, caption=..., attrs={...})
    data = SynthDataset(world, transform=to_tensor)   # map-style, DataLoader-ready

The package, one job per module: `vocab` (words, templates, pairs, the mix), `fonts`,
`geometry` (shapes and warps), `glyphs` (digit masks), `captions`, `world` (`Sample`,
`SynthWorld`), `dataset` (`SynthDataset`), `evalsets`. The names below are its API.
"""
from __future__ import annotations

from clipkit.data.synth.captions import _digit_caption
from clipkit.data.synth.dataset import SynthDataset, to_tensor
from clipkit.data.synth.evalsets import (EvalSet, colour_shape_eval_set, count_eval_set, digit_eval_set,
                                         relation_eval_set)
from clipkit.data.synth.fonts import HAND, PILLOW_DEFAULT_FONT, discover_fonts, font_dirs
from clipkit.data.synth.geometry import _elastic_field, _smoothing_basis, _warp
from clipkit.data.synth.glyphs import _crop_glyph, _font_glyph, _font_weight, _pen_glyph
from clipkit.data.synth.vocab import (COLOUR_WORDS, COLOURS, COUNT_CLASSNAMES, COUNT_TEMPLATES, DEFAULT_MIX,
                                      DIGIT_CLASSNAMES, DIGIT_STYLES, DIGIT_TEMPLATES, HAND_TEMPLATES, HELDOUT_PAIRS,
                                      INVERSE_RELATION, MNIST_SIDE, NUMBER_WORDS, PEN_STYLES, POSITION_WORDS,
                                      PRINT_TEMPLATES, RELATION_WORDS, RELATIONS, SHAPE_PLURALS, SHAPE_TEMPLATES,
                                      SHAPE_WORDS, SHAPES, SIZE_WORDS, SPLITS, all_pairs, check_mix,
                                      classnames_colour_shape, parse_mix, train_pairs)
from clipkit.data.synth.world import Sample, SynthWorld

__all__ = [
    "COLOURS", "SHAPES", "HELDOUT_PAIRS", "COLOUR_WORDS", "SHAPE_WORDS", "SHAPE_PLURALS", "SIZE_WORDS",
    "POSITION_WORDS", "RELATIONS", "INVERSE_RELATION", "RELATION_WORDS", "NUMBER_WORDS", "DIGIT_CLASSNAMES",
    "COUNT_CLASSNAMES", "SHAPE_TEMPLATES", "DIGIT_TEMPLATES", "HAND_TEMPLATES", "PRINT_TEMPLATES",
    "COUNT_TEMPLATES", "SPLITS", "MNIST_SIDE", "DEFAULT_MIX", "DIGIT_STYLES", "PEN_STYLES", "HAND",
    "PILLOW_DEFAULT_FONT", "check_mix", "parse_mix", "classnames_colour_shape", "all_pairs", "train_pairs", "font_dirs",
    "discover_fonts", "Sample", "SynthWorld", "SynthDataset", "to_tensor", "EvalSet",
    "colour_shape_eval_set", "digit_eval_set", "count_eval_set", "relation_eval_set",
]
