"""setup.cfg ships every package and data file of the tree.

`pip install -e .` finds modules in the source tree whatever setup.cfg lists, so a package
missing from `packages` only breaks a normal install (a wheel): these tests read setup.cfg
the way setuptools does and compare it with the files git tracks.
"""
from __future__ import annotations

import configparser
import fnmatch
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _setup_cfg():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = lambda s: [x.strip() for x in s.splitlines() if x.strip()]  # noqa: E731
    packages = lines(cfg["options"]["packages"])
    package_dir = dict(x.split(" = ") for x in lines(cfg["options"].get("package_dir", "")))
    data = {k: [p.strip() for p in v.split(",")] for k, v in cfg["options.package_data"].items()}
    return packages, package_dir, data


def _folder(package: str, package_dir: dict) -> Path:
    if package in package_dir:
        return ROOT / package_dir[package]
    return ROOT.joinpath(*package.split("."))


def _tracked(*paths: str) -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", *paths], cwd=ROOT, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / p for p in out.stdout.split()]


def test_every_package_folder_is_listed():
    packages, package_dir, _ = _setup_cfg()
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "clipkit").rglob("__init__.py")}
    assert on_disk - set(packages) == set(), "add these to setup.cfg [options] packages"
    for package in packages:
        assert _folder(package, package_dir).is_dir(), f"setup.cfg lists {package}, which has no folder"


def test_every_tracked_file_would_be_installed():
    packages, package_dir, data = _setup_cfg()
    folders = sorted(((_folder(p, package_dir), p) for p in packages), key=lambda fp: -len(fp[0].parts))
    missing = []
    for path in _tracked("clipkit", "prompts"):
        # the innermost listed package holding the file
        owner = next(((f, p) for f, p in folders if f in path.parents), None)
        if owner is None:
            missing.append(str(path.relative_to(ROOT)))
            continue
        folder, package = owner
        rel = path.relative_to(folder).as_posix()
        if path.suffix == ".py" and "/" not in rel:
            continue
        if not any(fnmatch.fnmatch(rel, pattern) for pattern in data.get(package, [])):
            missing.append(str(path.relative_to(ROOT)))
    assert missing == [], "not in any package or package_data pattern of setup.cfg"
