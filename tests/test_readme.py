"""Every code block in the README runs as written (the API example once failed on its
second line). Python blocks run in one fresh interpreter each; in shell blocks every
`clipkit ...` command runs, in a folder holding the small files they name."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow  # subprocesses and several processes

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def blocks(language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(README.read_text(encoding="utf-8")) if lang == language]


def commands() -> list[str]:
    """`clipkit ...` commands of the shell blocks; a set-up line keeps its last `clipkit` step
    (the install steps before it are what this test environment already did)."""
    out = []
    for body in blocks("bash"):
        for line in body.splitlines():
            line = line.split("  #")[0].strip()
            if "&&" in line:
                line = line.rsplit("&&", 1)[1].strip()
            if line.startswith("clipkit "):
                out.append(line)
    return out


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """The files the examples name: two small images, a photo, a folder of photos."""
    rng = np.random.default_rng(0)
    for name in ("img1.png", "img2.png", "my_photo.png", "query.png"):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / name)
    (tmp_path / "photos").mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "photos" / f"{i}.png")
    monkeypatch.setenv("CLIPKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "CLIPKIT_PROGRESS_INTERVAL": "600"}


def test_the_readme_has_code_blocks():
    assert blocks("python") and len(commands()) >= 4


@pytest.mark.parametrize("index", range(len(blocks("python"))))
def test_python_block_runs(index, workdir):
    proc = subprocess.run([sys.executable, "-c", blocks("python")[index]], cwd=workdir, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_shell_commands_run_in_order(workdir):
    for line in commands():
        argv = shlex.split(line)
        if argv[1] == "serve":  # a server does not exit: its tests start it and drive a browser
            argv.append("--help")
        proc = subprocess.run([sys.executable, "-m", "clipkit", *argv[1:]], cwd=workdir, env=_env(),
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, (line, proc.stderr[-3000:])
