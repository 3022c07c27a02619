"""setup.cfg ships every package and data file of the tree.

`pip install -e .` finds modules in the source tree whatever setup.cfg lists, so a package
missing from `packages` only breaks a normal install (a wheel): these tests read setup.cfg
and resolve its `package_data` patterns the way setuptools' build_py does (glob relative
to the package folder, files only), then compare with the files git tracks.
"""
from __future__ import annotations

import configparser
import glob
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _lines(value: str) -> list[str]:
    return [x.strip() for x in value.splitlines() if x.strip()]


def _setup_cfg():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    packages = _lines(cfg["options"]["packages"])
    package_dir = dict(re.split(r"\s*=\s*", x, maxsplit=1) for x in _lines(cfg["options"].get("package_dir", "")))
    data = {k: [p.strip() for p in v.split(",") if p.strip()] for k, v in cfg["options.package_data"].items()}
    return packages, package_dir, data


def _folder(package: str, package_dir: dict) -> Path:
    if package in package_dir:
        return ROOT / package_dir[package]
    return ROOT.joinpath(*package.split("."))


def _tracked(*paths: str) -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-z", *paths], cwd=ROOT, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    files = [ROOT / p for p in out.stdout.decode().split("\0") if p]
    assert files, "git lists no tracked file under " + " ".join(paths)
    return files


def _installed(packages, package_dir, data) -> set[Path]:
    """The files a wheel gets: each package's own modules and its package_data matches."""
    out = set()
    for package in packages:
        folder = _folder(package, package_dir)
        out.update(folder.glob("*.py"))
        for pattern in data.get(package, []):
            out.update(Path(p) for p in glob.glob(os.path.join(glob.escape(str(folder)), pattern))
                       if os.path.isfile(p))
    return out


def test_every_package_folder_is_listed():
    packages, package_dir, _ = _setup_cfg()
    tracked_inits = [p for p in _tracked("clipkit") if p.name == "__init__.py"]
    in_tree = {".".join(p.parent.relative_to(ROOT).parts) for p in tracked_inits}
    assert in_tree - set(packages) == set(), "add these to setup.cfg [options] packages"
    for package in packages:
        assert _folder(package, package_dir).is_dir(), f"setup.cfg lists {package}, which has no folder"


def test_every_tracked_file_would_be_installed():
    installed = _installed(*_setup_cfg())
    missing = sorted(str(p.relative_to(ROOT)) for p in _tracked("clipkit", "prompts") if p not in installed)
    assert missing == [], "not in any package or package_data pattern of setup.cfg"


def test_the_check_sees_a_package_left_out():
    packages, package_dir, data = _setup_cfg()
    # a module of an unlisted package is not installed
    assert ROOT / "clipkit" / "evaluation" / "bench.py" not in \
        _installed([p for p in packages if p != "clipkit.evaluation"], package_dir, data)
