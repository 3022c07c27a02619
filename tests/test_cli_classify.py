"""`clipkit classify` and `clipkit prompts`, through their own argparse registration."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from PIL import Image

from clipkit.commands import classify, prompts


def main(argv):
    parser = argparse.ArgumentParser(prog="clipkit")
    sub = parser.add_subparsers()
    classify.register(sub)
    prompts.register(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def write_images(folder, n, seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        p = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (36, 36, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


def test_classify_table_json_and_skipped(tmp_path, checkpoint, capsys):
    from clipkit import load
    from clipkit.zeroshot import zero_shot

    good = write_images(tmp_path / "imgs", 2)
    bad = tmp_path / "imgs" / "broken.png"
    bad.write_bytes(b"garbage")
    labels = ["red square", "blue circle", "green triangle"]
    rc = main(["classify", *good, str(bad), "--labels", *labels, "--checkpoint", checkpoint, "--top", "2"])
    out, err = capsys.readouterr()
    assert rc == 0
    assert "skipped" in err and "broken.png" in err
    assert out.count("%") == 4 and good[0] in out and "broken.png" not in out

    rc = main(["classify", str(tmp_path / "imgs"), "--labels", *labels, "--checkpoint", checkpoint, "--json"])
    out, err = capsys.readouterr()
    data = json.loads(out)
    assert rc == 0 and [r["input"] for r in data["results"]] == good  # the folder expands to its images
    assert [s["input"] for s in data["skipped"]] == [str(bad)]
    assert len(data["results"][0]["top"]) == 3 and data["templates"] == ["a photo of a {}."]
    # the same numbers as the library call
    clf = zero_shot(labels, model=load(checkpoint), cache=False)
    probs = clf.predict_proba(good)
    top = data["results"][1]["top"][0]
    assert top["label"] == clf.classes_[probs[1].argmax()]
    assert top["probability"] == pytest.approx(probs[1].max(), abs=1e-6)


def test_classify_exit_codes_and_errors(tmp_path, checkpoint, capsys):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"nope")
    assert main(["classify", str(bad), "--classes", "mnist", "--checkpoint", checkpoint]) == 1
    err = capsys.readouterr().err
    assert "broken.jpg" in err and "none of the 1 images" in err
    good = write_images(tmp_path / "ok", 1)
    assert main(["classify", *good, "--labels", "cat", "cat", "--checkpoint", checkpoint]) == 2
    assert "duplicate class names" in capsys.readouterr().err
    assert main(["classify", *good, "--labels", "cat", "--templates", "nonexistent_set",
                 "--checkpoint", checkpoint]) == 2
    assert "neither a built-in template set" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # --labels or --classes is required
        main(["classify", *good])
    capsys.readouterr()
    assert main(["classify", *good, "--classes", "mnist", "--checkpoint", checkpoint, "--top", "3"]) == 0
    assert capsys.readouterr().out.count("%") == 3


def test_prompts_report_from_class_folders(tmp_path, checkpoint, capsys):
    root = tmp_path / "val"
    write_images(root / "red_square", 3, seed=1)
    write_images(root / "blue_circle", 3, seed=2)
    (root / "blue_circle" / "notes.txt").write_text("not an image")
    out_dir = tmp_path / "report"
    rc = main(["prompts", str(root), "--templates", "imagenet7", "--checkpoint", checkpoint,
               "--out-dir", str(out_dir), "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "notes.txt" not in err  # not an image file: not read, not counted, not "skipped"
    report = json.loads((out_dir / "prompt_sensitivity.json").read_text())
    assert report["n_images"] == 6 and report["n_classes"] == 2 and len(report["per_template"]) == 7
    assert (out_dir / "prompt_sensitivity.png").read_bytes()[:4] == b"\x89PNG"
    assert "greedy subset" in out and "ensemble" in out

    # class names must cover the folders
    rc = main(["prompts", str(root), "--classes", "cifar10", "--checkpoint", checkpoint,
               "--out-dir", str(out_dir), "--quiet"])
    assert rc == 2 and "blue circle" in capsys.readouterr().err
