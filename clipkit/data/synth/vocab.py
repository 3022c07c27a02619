"""The world's vocabulary: colours, shapes and their words, relations, numbers, the prompt
templates (also caption templates), the held-out pairs, splits and the scene mix."""
from __future__ import annotations

from typing import Sequence


# ---------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------

# Canonical colour names and their base RGB. Chosen to stay distinct after jitter at
# 64x64; neutral tones are left to the backgrounds (and "black" to digits).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (215, 30, 35),
    "orange": (250, 135, 10),
    "yellow": (245, 225, 35),
    "green": (35, 165, 55),
    "cyan": (20, 205, 225),
    "blue": (35, 75, 230),
    "purple": (135, 45, 190),
    "pink": (250, 120, 190),
    "white": (245, 245, 245),
}

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "pentagon", "hexagon",
                           "star", "heart", "cross")

# Unseen during training: a Latin square, each colour once and each shape once.
HELDOUT_PAIRS: tuple[tuple[str, str], ...] = (
    ("red", "star"),
    ("orange", "circle"),
    ("yellow", "cross"),
    ("green", "triangle"),
    ("cyan", "square"),
    ("blue", "hexagon"),
    ("purple", "diamond"),
    ("pink", "pentagon"),
    ("white", "heart"),
)

# Surface forms. The first entry is the canonical one; the others are paraphrases the
# captions use now and then. Tests read these tables to check captions against attrs.
COLOUR_WORDS: dict[str, tuple[str, ...]] = {
    "red": ("red", "scarlet"),
    "orange": ("orange",),
    "yellow": ("yellow",),
    "green": ("green",),
    "cyan": ("cyan", "turquoise"),
    "blue": ("blue",),
    "purple": ("purple", "violet"),
    "pink": ("pink",),
    "white": ("white",),
    "black": ("black",),  # digits only
}
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc"),
    "square": ("square",),
    "triangle": ("triangle",),
    "diamond": ("diamond", "rhombus"),
    "pentagon": ("pentagon",),
    "hexagon": ("hexagon",),
    "star": ("star",),
    "heart": ("heart",),
    "cross": ("cross", "plus sign"),
}
SHAPE_PLURALS: dict[str, str] = {
    "circle": "circles", "disc": "discs", "square": "squares", "triangle": "triangles",
    "diamond": "diamonds", "rhombus": "rhombuses", "pentagon": "pentagons",
    "hexagon": "hexagons", "star": "stars", "heart": "hearts", "cross": "crosses",
    "plus sign": "plus signs",
}
SIZE_WORDS: dict[str, tuple[str, ...]] = {"small": ("small", "little"), "large": ("large", "big")}
POSITION_WORDS: dict[str, tuple[str, ...]] = {
    "left": ("on the left", "at the left"),
    "right": ("on the right", "at the right"),
    "top": ("at the top", "near the top"),
    "bottom": ("at the bottom", "near the bottom"),
    "centre": ("in the centre", "in the middle"),
}
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
INVERSE_RELATION = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
RELATION_WORDS: dict[str, tuple[str, ...]] = {
    "left of": ("left of", "to the left of", "on the left of"),
    "right of": ("right of", "to the right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath"),
}
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven",
                                 "eight", "nine")
DIGIT_CLASSNAMES: tuple[str, ...] = tuple(str(d) for d in range(10))
COUNT_CLASSNAMES: tuple[str, ...] = ("one", "two", "three", "four")

# Prompt templates, "{}" taking a class name. They are caption templates too, so a
# zero-shot head built from them asks in the words the model was trained on.
SHAPE_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a {}.",
    "a {}",
    "{}",
    "an image of a {}.",
    "a picture of a {}.",
    "a drawing of a {}.",
    "a rendering of a {}.",
    "a {} on a plain background.",
    "a simple {}.",
    "there is a {}.",
    "a photo of the {}.",
)
DIGIT_TEMPLATES: tuple[str, ...] = (
    'a photo of the number: "{}".',  # the MNIST prompt of the CLIP paper
    "a photo of the number {}.",
    "a photo of the digit {}.",
    "the number {}",
    "the number {}.",
    "the digit {}",
    "number {}",
    "digit {}",
    "{}",
    "an image of the number {}.",
    "a picture of the digit {}.",
    "a drawing of the number {}.",
)
HAND_TEMPLATES: tuple[str, ...] = (
    "a handwritten {}",
    "a handwritten {}.",
    "a handwritten digit {}.",
    "a handwritten number {}",
    "a photo of a handwritten {}.",
)
PRINT_TEMPLATES: tuple[str, ...] = ("a printed {}", "a printed digit {}.", "the typed number {}")
COUNT_TEMPLATES: tuple[str, ...] = (
    "{}",
    "a photo of {}.",
    "there are {}.",
    "an image of {}.",
    "a picture with {}.",
)

SPLITS = {"train": 0, "val": 1, "heldout": 2}
MNIST_SIDE = 28  # MNIST's image side in pixels
DEFAULT_MIX: dict[str, float] = {"shape": 0.25, "count": 0.15, "relation": 0.15, "digit": 0.45}
# How digits are drawn: "classic" is the first release's world (renders are byte-identical
# to it); "robust" draws most digits with real digits' variation (`digit_styles`);
# "robust-hard" is "robust" with its stretched and low-resolution digits drawn more often.
DIGIT_STYLES: tuple[str, ...] = ("classic", "robust", "robust-hard")
# How pen-stroke digits are drawn: "plain" (the default; the first two releases' world) or "hand"
# (handwriting-like variation of the same skeletons, `glyphs._hand_glyph`).
PEN_STYLES: tuple[str, ...] = ("plain", "hand")


def check_mix(mix: dict[str, float]) -> dict[str, float]:
    """A copy of `mix` (scene kind -> relative weight); ValueError names any unknown kind."""
    unknown = set(mix) - set(DEFAULT_MIX)
    if unknown:
        raise ValueError(f"unknown scene kinds {sorted(unknown)} in mix; expected {sorted(DEFAULT_MIX)}")
    return dict(mix)


def parse_mix(text: str) -> dict[str, float]:
    """"shape=0.4, digit=0.3" -> {"shape": 0.4, "digit": 0.3} (unnamed kinds get weight 0),
    checked by `check_mix`; ValueError for anything else."""
    mix = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        try:
            if not sep:
                raise ValueError
            mix[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"expected KIND=WEIGHT[,KIND=WEIGHT...] (e.g. relation=0.25), got {text!r}") from None
    return check_mix(mix)


def classnames_colour_shape(pairs: Sequence[tuple[str, str]] | None = None) -> list[str]:
    """'red circle', 'red square', ... over every colour x shape (or the given pairs)."""
    pairs = all_pairs() if pairs is None else pairs
    return [f"{c} {s}" for c, s in pairs]


def all_pairs() -> list[tuple[str, str]]:
    return [(c, s) for c in COLOURS for s in SHAPES]


def train_pairs() -> list[tuple[str, str]]:
    """Every (colour, shape) pair the train and val splits may render."""
    held = set(HELDOUT_PAIRS)
    return [p for p in all_pairs() if p not in held]


def _plural(shape_word: str) -> str:
    return SHAPE_PLURALS[shape_word]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


