"""Template sets and class-name lists: the shipped data and the loaders."""
from __future__ import annotations

from importlib.resources import files

import pytest

from clipkit.templates import (
    available_class_sets, available_template_sets, check_classnames, default_templates_for, fill,
    load_classnames, load_templates,
)


def test_shipped_sets_have_the_published_sizes():
    assert set(available_template_sets()) >= {"imagenet", "imagenet7", "simple", "mnist", "cifar10", "cifar100"}
    assert set(available_class_sets()) >= {"imagenet", "mnist", "cifar10", "cifar100"}
    sizes = {"imagenet": 80, "imagenet7": 7, "simple": 1, "mnist": 1, "cifar10": 18, "cifar100": 18}
    for name, n in sizes.items():
        assert len(load_templates(name)) == n, name
    assert len(load_classnames("imagenet")) == 1000
    assert load_classnames("mnist") == [str(d) for d in range(10)]
    assert load_classnames("cifar10")[:3] == ["airplane", "automobile", "bird"]
    c100 = load_classnames("cifar100")
    assert len(c100) == 100 and c100[1] == "aquarium fish" and c100[-1] == "worm"


def test_shipped_values_match_the_paper_facts():
    assert load_templates("simple") == ["a photo of a {}."]
    assert load_templates("mnist") == ['a photo of the number: "{}".']
    assert load_templates("imagenet7") == [
        "itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
        "a {} in a video game.", "art of the {}.", "a photo of the small {}.",
    ]
    imagenet = load_templates("imagenet")
    assert imagenet[0] == "a bad photo of a {}." and imagenet[-1] == "a tattoo of the {}."
    assert set(load_templates("imagenet7")) <= set(imagenet)  # a subset of the 80
    assert load_templates("cifar10") == load_templates("cifar100")
    names = load_classnames("imagenet")
    assert names[0] == "tench" and names[1] == "goldfish" and names[-1] == "toilet paper"


def test_imagenet_synsets_sorted_and_aligned():
    text = files("clipkit.prompts").joinpath("imagenet_synsets.txt").read_text(encoding="utf-8")
    wnids = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert len(wnids) == 1000 == len(set(wnids)) and wnids == sorted(wnids)
    assert wnids[0] == "n01440764" and wnids[-1] == "n15075141"  # tench ... toilet tissue


def test_imagenet_list_keeps_its_known_duplicates_but_user_lists_may_not():
    names = load_classnames("imagenet")
    assert names[657] == names[744] == "missile" and names[836] == names[837] == "sunglasses"
    check_classnames(names)  # the official list is accepted as is
    with pytest.raises(ValueError, match=r"duplicate class names: 'cat' \(x2\)"):
        load_classnames(["cat", "dog", "cat"])
    with pytest.raises(ValueError, match="duplicate"):
        check_classnames(names[:999] + ["tench"])


def test_templates_from_list_and_file(tmp_path):
    assert load_templates(["a {}.", "the {} here"]) == ["a {}.", "the {} here"]
    f = tmp_path / "mine.txt"
    f.write_text("# my templates\n\na sketch of a {}.\n  a drawing of the {}.  \n# end\n", encoding="utf-8")
    assert load_templates(f) == ["a sketch of a {}.", "a drawing of the {}."]
    assert load_templates(str(f)) == ["a sketch of a {}.", "a drawing of the {}."]
    g = tmp_path / "names.txt"
    g.write_text("red square\nblue circle\n", encoding="utf-8")
    assert load_classnames(g) == ["red square", "blue circle"]
    assert load_templates("IMAGENET7") == load_templates("imagenet7")


def test_bad_template_and_class_specs(tmp_path):
    with pytest.raises(ValueError, match=r"template 1 .* no '\{\}' placeholder .* 'a photo of a cat'"):
        load_templates(["a {}.", "a photo of a cat"])
    bad = tmp_path / "bad.txt"
    bad.write_text("a {}.\nno placeholder\n", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.txt.*'no placeholder'"):
        load_templates(bad)
    with pytest.raises(ValueError, match="neither a built-in template set .*imagenet7"):
        load_templates("imagenet8")
    with pytest.raises(ValueError, match="no templates"):
        load_templates([])
    with pytest.raises(ValueError, match="empty"):
        load_classnames([])
    with pytest.raises(ValueError, match="class name 1 is empty"):
        load_classnames(["cat", "  "])
    with pytest.raises(TypeError, match="class 1 is int"):
        load_classnames(["cat", 3])
    with pytest.raises(ValueError, match="neither a built-in class set"):
        load_classnames("imagenet22k")


def test_defaults_and_fill():
    assert default_templates_for("imagenet") == "imagenet"
    assert default_templates_for("mnist") == "mnist"
    assert default_templates_for(["cat", "dog"]) == "simple"
    assert fill("a photo of a {}.", "cat") == "a photo of a cat."
    assert fill("{} and {}", "x") == "x and x"
    assert fill("a {}.", "set {a}") == "a set {a}."  # braces in a name are not format fields
