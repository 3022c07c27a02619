"""Prompt sensitivity: how much zero-shot accuracy depends on the wording of the templates.

On labelled image embeddings: the accuracy of the head built from every single template,
of the full ensemble (CLIP's average), the mean and spread over templates, and a greedy
forward selection of a subset (the way the CLIP notebook picked its 7 ImageNet
templates): start empty, add the template that gives the best accuracy, stop when no
addition improves it or at `max_templates`.

Every (class, template) prompt is encoded once (:func:`clipkit.zeroshot.class_embeddings`);
any subset's head is then the renormalised mean of its rows, so the whole study costs
one head build.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from clipkit.templates import load_classnames, load_templates
from clipkit.zeroshot import class_embeddings, head_from_embeddings

__all__ = ["prompt_sensitivity", "sensitivity_from_embeddings", "sensitivity_report", "plot_sensitivity",
           "write_report"]


def _label_indices(labels, classnames: Sequence[str]) -> torch.Tensor:
    """Labels as class indices: integers are taken as indices, strings as class names."""
    if isinstance(labels, torch.Tensor):
        labels = labels.cpu().numpy()
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-d, got shape {labels.shape}")
    if labels.dtype.kind in "iu":
        if len(labels) and (labels.min() < 0 or labels.max() >= len(classnames)):
            raise ValueError(f"integer labels must be class indices in [0, {len(classnames)}), "
                             f"got [{labels.min()}, {labels.max()}]")
        return torch.from_numpy(labels.astype(np.int64))
    index = {n: i for i, n in enumerate(classnames)}
    unknown = sorted({str(y) for y in labels} - set(index))
    if unknown:
        raise ValueError(f"labels not among the class names: {unknown[:10]}")
    return torch.tensor([index[str(y)] for y in labels], dtype=torch.long)


def _accuracy(features: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor) -> float:
    # the temperature does not change the argmax, so it is left out
    return float(((features @ weight.T).argmax(dim=1) == labels).double().mean())


def sensitivity_from_embeddings(features, labels, embeddings: torch.Tensor, classnames: Sequence[str],
                                templates: Sequence[str], *, max_templates: int | None = None) -> dict:
    """The report from image embeddings (N, D), labels (N,) and per-prompt class
    embeddings (C, T, D) as :func:`clipkit.zeroshot.class_embeddings` returns them."""
    features = torch.as_tensor(np.asarray(features) if not isinstance(features, torch.Tensor) else features)
    if features.ndim != 2:
        raise ValueError(f"features must be (N, D) image embeddings, got shape {tuple(features.shape)}")
    if len(features) == 0:
        raise ValueError("no labelled images: the sensitivity study needs at least one")
    C, T, D = embeddings.shape
    if features.shape[1] != D:
        raise ValueError(f"features have width {features.shape[1]}, the class embeddings {D}")
    y = _label_indices(labels, classnames)
    if len(y) != len(features):
        raise ValueError(f"{len(features)} image embeddings but {len(y)} labels")
    feats = F.normalize(features.float(), dim=-1)

    single = [_accuracy(feats, y, head_from_embeddings(embeddings, [t])) for t in range(T)]
    ensemble = _accuracy(feats, y, head_from_embeddings(embeddings))

    limit = T if max_templates is None else max(1, min(int(max_templates), T))
    chosen: list[int] = []
    trace: list[float] = []
    current = -1.0
    while len(chosen) < limit:
        best_t, best_acc = None, current
        for t in range(T):
            if t in chosen:
                continue
            acc = _accuracy(feats, y, head_from_embeddings(embeddings, chosen + [t]))
            if acc > best_acc:  # strict: ties keep the earlier template, and no gain stops
                best_t, best_acc = t, acc
        if best_t is None:
            break
        chosen.append(best_t)
        trace.append(best_acc)
        current = best_acc

    arr = np.asarray(single)
    order = np.argsort(-arr, kind="stable")
    return {
        "n_images": int(len(feats)),
        "n_classes": int(C),
        "templates": list(templates),
        "per_template": [{"template": templates[t], "accuracy": single[t]} for t in range(T)],
        "ensemble_accuracy": ensemble,
        "mean_accuracy": float(arr.mean()),
        "std_accuracy": float(arr.std()),
        "min_accuracy": float(arr.min()),
        "max_accuracy": float(arr.max()),
        "best_template": templates[int(order[0])],
        "worst_template": templates[int(order[-1])],
        "greedy": {
            "templates": [templates[t] for t in chosen],
            "indices": chosen,
            "accuracy": trace[-1] if trace else None,
            "accuracy_after_each_step": trace,
            "max_templates": limit,
        },
    }


def prompt_sensitivity(model, features, labels, classnames, templates="imagenet", *,
                       max_templates: int | None = None, tokenizer=None, batch_size: int = 64,
                       device=None, progress: bool | None = None) -> dict:
    """The prompt-sensitivity report for labelled image embeddings.

    `features`: image embeddings (N, D) from `model` (e.g. ``clf.transform(images)`` or
    :func:`clipkit.encode.extract_features`); `labels`: class indices or class names;
    `classnames` and `templates`: lists, set names or files.
    """
    names = load_classnames(classnames)  # a list, a set name or a file; checked (and warned about) once
    temps = load_templates(templates)
    emb = class_embeddings(model, names, temps, tokenizer=tokenizer, batch_size=batch_size,
                           device=device, progress=progress)  # (C, T, D), each prompt encoded once
    return sensitivity_from_embeddings(features, labels, emb, names, temps, max_templates=max_templates)


def plot_sensitivity(report: dict, path: str | os.PathLike, title: str | None = None) -> Path:
    """A bar per template (accuracy, best at the top) with the ensemble and the greedy
    subset as vertical lines; written as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = sorted(report["per_template"], key=lambda r: r["accuracy"])
    labels = [r["template"] if len(r["template"]) <= 48 else r["template"][:45] + "..." for r in rows]
    accs = [100 * r["accuracy"] for r in rows]
    fig = Figure(figsize=(8, max(2.5, 0.22 * len(rows) + 1.2)), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.barh(range(len(rows)), accs, color="#8fb3d9")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels, fontsize=7)
    ax.axvline(100 * report["ensemble_accuracy"], color="#c0392b", linestyle="-",
               label=f"ensemble of {len(rows)}: {100 * report['ensemble_accuracy']:.1f}%")
    greedy = report["greedy"]
    if greedy["accuracy"] is not None:
        ax.axvline(100 * greedy["accuracy"], color="#27ae60", linestyle="--",
                   label=f"greedy subset of {len(greedy['templates'])}: {100 * greedy['accuracy']:.1f}%")
    ax.axvline(100 * report["mean_accuracy"], color="#7f8c8d", linestyle=":",
               label=f"mean single template: {100 * report['mean_accuracy']:.1f}%")
    ax.set_xlabel("top-1 accuracy (%)")
    ax.set_xlim(0, 100)
    ax.legend(loc="lower right", fontsize=7)
    ax.set_title(title or f"prompt sensitivity: {report['n_images']} images, {report['n_classes']} classes",
                 fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def write_report(report: dict, out_dir: str | os.PathLike, stem: str = "prompt_sensitivity") -> tuple[Path, Path]:
    """``out_dir/<stem>.json`` and ``out_dir/<stem>.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / f"{stem}.json"
    json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    png_path = plot_sensitivity(report, out / f"{stem}.png")
    return json_path, png_path


# ---------------------------------------------------------------------------
# One call from images on disk (what `clipkit prompts` runs)
# ---------------------------------------------------------------------------


def _labelled_files(inputs) -> tuple[list[str], list[str], list[str]]:
    """(paths, label of each, class names in folder order) from one folder of class
    sub-folders (``ROOT/<class>/<image>``) or from image files labelled by their parent
    folder's name. Underscores in folder names read as spaces."""
    from clipkit.data.datasets import image_folder

    inputs = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if len(inputs) == 1 and Path(inputs[0]).is_dir():
        ds = image_folder(inputs[0])
        return [p for p, _ in ds.samples], [ds.classes[y] for _, y in ds.samples], list(ds.classes)
    paths, labels = [], []
    for p in inputs:
        p = Path(p)
        if p.is_dir():
            raise ValueError(f"{p} is a folder: pass one folder of class sub-folders, or image files "
                             "(each labelled by its parent folder's name)")
        paths.append(str(p))
        labels.append(p.resolve().parent.name.replace("_", " "))
    return paths, labels, sorted(set(labels))


def sensitivity_report(inputs, classnames=None, templates=None, model=None, *, out_dir=None,
                       max_templates: int | None = None, batch_size: int = 64, device: str = "cpu",
                       progress: bool | None = None) -> dict:
    """Prompt sensitivity on labelled images on disk: ``inputs`` is a folder of class
    sub-folders or a list of image files (labelled by their parent folder).

    `classnames` (a list, set name or file) defaults to the folder names; every folder
    name must be one of them. `templates` defaults to CLIP's set for a named class set,
    else the 80 ImageNet templates. Unreadable images are skipped and listed under
    ``"skipped"``. With `out_dir`, writes ``prompt_sensitivity.json`` and ``.png`` there.
    """
    from clipkit.encode import encode_images, resolve_model
    from clipkit.templates import default_templates_for

    clip, preprocess = resolve_model(model, device)
    paths, labels, folder_classes = _labelled_files(inputs)
    if not paths:
        raise ValueError(f"no images found in {inputs}")
    if classnames is None:
        names = folder_classes
    else:
        names = load_classnames(classnames) if isinstance(classnames, (str, os.PathLike)) else list(classnames)
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise ValueError(f"folder names that are not class names: {unknown[:10]}; name the folders after "
                         f"the classes (underscores read as spaces) or pass the matching class list")
    if templates is None:
        templates = default_templates_for(classnames)
        if templates == "simple":
            templates = "imagenet"  # one template leaves nothing to compare
    enc = encode_images(clip, paths, preprocess=preprocess, batch_size=batch_size, device=device,
                        skip_unreadable=True, progress=progress)
    if not enc.indices:
        raise ValueError(f"none of the {len(paths)} images could be read")
    y = [index[labels[i]] for i in enc.indices]
    report = prompt_sensitivity(clip, enc.features, y, names, templates, max_templates=max_templates,
                                batch_size=batch_size, device=device, progress=progress)
    report["skipped"] = [{"input": str(w), "reason": r} for w, r in enc.skipped]
    if out_dir is not None:
        json_path, png_path = write_report(report, out_dir)
        report["files"] = {"json": str(json_path), "png": str(png_path)}
        json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    return report
