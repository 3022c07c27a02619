"""Captions: a small grammar with paraphrases."""
from __future__ import annotations

from clipkit.data.synth.vocab import (COLOUR_WORDS, COUNT_TEMPLATES, DIGIT_TEMPLATES, HAND_TEMPLATES, INVERSE_RELATION,
                                       NUMBER_WORDS, POSITION_WORDS, PRINT_TEMPLATES, RELATION_WORDS, SHAPE_TEMPLATES,
                                       SHAPE_WORDS, SIZE_WORDS, _article, _plural)


# ---------------------------------------------------------------------------
# Captions: a small grammar with paraphrases
# ---------------------------------------------------------------------------


def _pick(rng, options):
    return options[int(rng.integers(len(options)))]


def _word(rng, table: dict[str, tuple[str, ...]], key: str, p_synonym: float = 0.15) -> str:
    forms = table[key]
    if len(forms) > 1 and rng.random() < p_synonym:
        return forms[1 + int(rng.integers(len(forms) - 1))]
    return forms[0]


def _shape_caption(rng, colour, shape, size, position) -> str:
    c, s = _word(rng, COLOUR_WORDS, colour), _word(rng, SHAPE_WORDS, shape)
    r = rng.random()
    if r < 0.12:  # the evaluation prompt, word for word
        return f"a photo of a {colour} {shape}."
    if r < 0.5:  # a template filled with the class name, as a zero-shot head does
        return _pick(rng, SHAPE_TEMPLATES).format(f"{c} {s}")
    if r < 0.85:  # a description with size and/or position
        words = [c, s]
        if rng.random() < 0.6:
            words.insert(0, _word(rng, SIZE_WORDS, size, 0.3))
        phrase = " ".join(words)
        phrase = f"{_article(phrase)} {phrase}"
        if rng.random() < 0.6:
            phrase += " " + _pick(rng, POSITION_WORDS[position])
        return _pick(rng, ("{}", "{}.", "a photo of {}.", "an image of {}.", "there is {}."),).format(phrase)
    # partial captions: the shape alone or the colour alone
    if rng.random() < 0.6:
        return _pick(rng, SHAPE_TEMPLATES).format(s)
    return _pick(rng, ("a {} shape", "a {} object", "something {}", "a photo of a {} shape.")).format(c)


def _count_phrase(rng, colour: str, shape: str, count: int, numeral: bool | None = None) -> str:
    c, s = _word(rng, COLOUR_WORDS, colour), _word(rng, SHAPE_WORDS, shape)
    if numeral is None:
        numeral = rng.random() < 0.25
    number = str(count) if numeral else NUMBER_WORDS[count]
    if count == 1:
        if not numeral and rng.random() < 0.3:
            number = "a single"
        return f"{number} {c} {s}"
    return f"{number} {c} {_plural(s)}"


def _count_caption(rng, colour, shape, count) -> str:
    phrase = _count_phrase(rng, colour, shape, count)
    if count == 1 and rng.random() < 0.5:
        return _pick(rng, ("{}", "a photo of {}.", "there is {}.")).format(phrase)
    return _pick(rng, COUNT_TEMPLATES).format(phrase)


def _relation_caption(rng, a, relation, b) -> str:
    if rng.random() < 0.5:  # say it the other way round
        a, relation, b = b, INVERSE_RELATION[relation], a

    def noun(pair):
        c, s = _word(rng, COLOUR_WORDS, pair[0]), _word(rng, SHAPE_WORDS, pair[1])
        return f"{_article(c) if rng.random() < 0.7 else 'the'} {c} {s}"

    sentence = f"{noun(a)} {_word(rng, RELATION_WORDS, relation, 0.5)} {noun(b)}"
    return _pick(rng, ("{}", "{}.", "a photo of {}.", "an image of {}.", "{}")).format(sentence)


def _digit_caption(rng, digit, hand, colour, background, style) -> str:
    name = str(digit) if rng.random() < 0.65 else NUMBER_WORDS[digit]
    r = rng.random()
    if r < 0.15:
        return f'a photo of the number: "{digit}".'  # the MNIST prompt, word for word
    if r < 0.65:
        return _pick(rng, DIGIT_TEMPLATES).format(name)
    if r < 0.8:
        return _pick(rng, HAND_TEMPLATES if hand else PRINT_TEMPLATES).format(name)
    if style == "colour" or rng.random() < 0.5:
        c = _word(rng, COLOUR_WORDS, colour)
        a = _article(c)
        return _pick(rng, (f"{a} {c} {name} on a {background} background", f"the number {name} in {c}",
                           f"{a} {c} digit {name}", f"{a} {c} {name}"))
    return _pick(rng, (f"the number {name} on a {background} background",
                       f"a digit {name}, {colour} on {background}"))


# ---------------------------------------------------------------------------
