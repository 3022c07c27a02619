"""Prompt sensitivity: single-template accuracies, the ensemble, greedy forward selection."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from clipkit.models import create_model
from clipkit.evaluation.sensitivity import prompt_sensitivity, sensitivity_from_embeddings, write_report
from clipkit.zeroshot import build_head, class_embeddings, head_from_embeddings

CLASSES = ["red square", "blue circle", "green triangle", "yellow star"]
TEMPLATES = ["a photo of a {}.", "a drawing of a {}.", "itap of a {}.", "{}", "a blurry photo of the {}.",
             "art of the {}."]


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = create_model("tiny-vit").eval()
    emb = class_embeddings(model, CLASSES, TEMPLATES)  # (C, T, D)
    # labelled "image features": a class's prompt embedding from a random template, plus noise
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, len(CLASSES), (60,), generator=g)
    which = torch.randint(0, len(TEMPLATES), (60,), generator=g)
    feats = emb[labels, which] + 0.9 * torch.randn(60, emb.shape[2], generator=g) / emb.shape[2] ** 0.5
    return model, emb, feats, labels


def accuracy(head, feats, labels):
    with torch.no_grad():
        return float((head(feats).argmax(1) == labels).double().mean())


def test_single_and_ensemble_accuracies_equal_heads_built_from_those_templates(setup):
    model, emb, feats, labels = setup
    report = prompt_sensitivity(model, feats, labels, CLASSES, TEMPLATES)
    assert [r["template"] for r in report["per_template"]] == TEMPLATES
    for row in report["per_template"]:
        head = build_head(model, CLASSES, [row["template"]], cache=False)
        assert row["accuracy"] == accuracy(head, feats, labels)
    assert report["ensemble_accuracy"] == accuracy(build_head(model, CLASSES, TEMPLATES, cache=False), feats, labels)
    accs = np.array([r["accuracy"] for r in report["per_template"]])
    assert report["mean_accuracy"] == pytest.approx(accs.mean())
    assert report["std_accuracy"] == pytest.approx(accs.std())
    assert report["max_accuracy"] == accs.max() and report["min_accuracy"] == accs.min()
    assert report["best_template"] == TEMPLATES[int(accs.argmax())]
    assert report["n_images"] == 60 and report["n_classes"] == 4
    assert 0.3 < report["ensemble_accuracy"] < 1.0  # the study is not degenerate


def test_greedy_forward_selection_follows_its_definition(setup):
    model, emb, feats, labels = setup
    report = sensitivity_from_embeddings(feats, labels, emb, CLASSES, TEMPLATES)
    greedy = report["greedy"]
    chosen = greedy["indices"]
    trace = greedy["accuracy_after_each_step"]
    assert greedy["templates"] == [TEMPLATES[i] for i in chosen] and len(set(chosen)) == len(chosen)
    assert trace[0] == report["max_accuracy"] and chosen[0] == TEMPLATES.index(report["best_template"])
    assert all(b > a for a, b in zip(trace, trace[1:]))  # each step strictly improves
    # each step picked the best addition, and the search stopped when nothing improved
    def acc(subset):
        return float(((feats @ head_from_embeddings(emb, subset).T).argmax(1) == labels).double().mean())

    for step in range(len(chosen)):
        candidates = [acc(chosen[:step] + [t]) for t in range(len(TEMPLATES)) if t not in chosen[:step]]
        assert trace[step] == max(candidates)
    if len(chosen) < len(TEMPLATES):
        assert all(acc(chosen + [t]) <= trace[-1] for t in range(len(TEMPLATES)) if t not in chosen)
    # the subset's accuracy is that of a head built from those templates by the head builder
    assert greedy["accuracy"] == accuracy(build_head(model, CLASSES, greedy["templates"], cache=False), feats, labels)

    capped = sensitivity_from_embeddings(feats, labels, emb, CLASSES, TEMPLATES, max_templates=1)
    assert capped["greedy"]["indices"] == chosen[:1]


def test_labels_as_names_and_bad_inputs(setup):
    model, emb, feats, labels = setup
    by_index = sensitivity_from_embeddings(feats, labels, emb, CLASSES, TEMPLATES)
    names = [CLASSES[i] for i in labels.tolist()]
    assert sensitivity_from_embeddings(feats.numpy(), names, emb, CLASSES, TEMPLATES) == by_index
    with pytest.raises(ValueError, match="not among the class names"):
        sensitivity_from_embeddings(feats, ["purple hexagon"] * 60, emb, CLASSES, TEMPLATES)
    with pytest.raises(ValueError, match=r"class indices in \[0, 4\)"):
        sensitivity_from_embeddings(feats, labels + 4, emb, CLASSES, TEMPLATES)
    with pytest.raises(ValueError, match="60 image embeddings but 59 labels"):
        sensitivity_from_embeddings(feats, labels[:59], emb, CLASSES, TEMPLATES)
    with pytest.raises(ValueError, match="width 8"):
        sensitivity_from_embeddings(feats[:, :8], labels, emb, CLASSES, TEMPLATES)


def test_report_files(setup, tmp_path):
    _, emb, feats, labels = setup
    report = sensitivity_from_embeddings(feats, labels, emb, CLASSES, TEMPLATES)
    json_path, png_path = write_report(report, tmp_path / "out")
    assert json.loads(json_path.read_text()) == report
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png_path.stat().st_size > 5000


def test_old_module_paths_are_deprecated_aliases_of_the_evaluation_package():
    import importlib
    import sys

    from clipkit.evaluation import bench, probe, sensitivity

    for name, moved in (("bench", bench), ("probe", probe), ("sensitivity", sensitivity)):
        sys.modules.pop(f"clipkit.{name}", None)
        with pytest.warns(DeprecationWarning, match=f"clipkit.evaluation.{name}"):
            old = importlib.import_module(f"clipkit.{name}")
        assert old is moved and sys.modules[f"clipkit.{name}"] is moved
