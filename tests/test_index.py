"""`clipkit.Index`, `clipkit index` and `clipkit search`: exact search == full product,
incremental updates, resuming, model checks, path safety, the CLI, faiss, and
2 processes (torchrun, gloo) == 1 process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from clipkit.cli import main as cli
from clipkit.index import BadIndexError, Index, image_files
from clipkit.search import ann_index, default_nprobe, recall_at_k, recommended_factory, topk_exact


def _render(n: int, seed: int = 0) -> list[Image.Image]:
    from clipkit.data.synth import colour_shape_eval_set

    return colour_shape_eval_set(n=n, split="all", seed=seed, image_size=32).images[:n]


@pytest.fixture
def photos(tmp_path):
    """13 images in a tree (one hidden folder, one non-image file, one corrupt .png)."""
    root = tmp_path / "photos"
    (root / "a" / "b").mkdir(parents=True)
    (root / ".hidden").mkdir()
    for i, img in enumerate(_render(13)):
        sub = ("", "a", "a/b")[i % 3]
        img.save(root / sub / f"img{i:02d}.png")
    _render(1, seed=5)[0].save(root / ".hidden" / "skip.png")
    (root / "notes.txt").write_text("not an image")
    (root / "broken.png").write_bytes(b"\x89PNG but not really")
    return root


def _by_path(index: Index) -> dict[str, torch.Tensor]:
    return dict(zip(index.paths, index.embeddings()))


# ---------------------------------------------------------------------------
# Exact search: the chunked product is the full product's top k
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("block", [1, 7, 64, 10_000])
@pytest.mark.parametrize("k", [1, 5, 50, 300])
def test_chunked_topk_equals_full_matmul_topk(block, k):
    g = torch.Generator().manual_seed(0)
    db = torch.nn.functional.normalize(torch.randn(257, 16, generator=g), dim=1)
    q = torch.nn.functional.normalize(torch.randn(6, 16, generator=g), dim=1)
    full = (q @ db.T).topk(min(k, len(db)), dim=1)
    scores, rows = topk_exact(q, db, k, block=block)
    assert torch.equal(rows, full.indices)
    torch.testing.assert_close(scores, full.values, rtol=0, atol=1e-6)
    # the same over an iterable of uneven blocks (index shards)
    shards = [db[:100], db[100:101], db[101:]]
    scores2, rows2 = topk_exact(q, iter(shards), k, block=block)
    assert torch.equal(rows2, full.indices)


def test_topk_rejects_bad_input():
    with pytest.raises(ValueError, match="k must be"):
        topk_exact(torch.zeros(1, 4), torch.zeros(3, 4), 0)
    with pytest.raises(ValueError, match="dimensions"):
        topk_exact(torch.zeros(1, 4), torch.zeros(3, 5), 1)


def test_recommended_factory_follows_the_faiss_guidelines():
    assert recommended_factory(100) == "IVF2,Flat"  # ~39 training points per list at least
    assert recommended_factory(1_000_000) == "IVF4096,Flat"  # 4 sqrt(N), a power of two
    assert recommended_factory(5_000_000) == "IVF65536_HNSW32,Flat"
    assert default_nprobe("IVF16,Flat") == 16 and default_nprobe("IVF4096,Flat") == 128
    assert default_nprobe("IVF65536_HNSW32,Flat") == 2048
    with pytest.raises(ValueError):
        recommended_factory(0)


def test_ann_with_every_list_probed_is_exact():
    pytest.importorskip("faiss")
    g = torch.Generator().manual_seed(1)
    db = torch.nn.functional.normalize(torch.randn(2000, 32, generator=g), dim=1)
    q = torch.nn.functional.normalize(torch.randn(20, 32, generator=g), dim=1)
    ann = ann_index(db, "IVF16,Flat", nprobe=16)
    _, approx = ann.search(q, 10)
    _, exact = topk_exact(q, db, 10)
    assert recall_at_k(approx, exact) == 1.0


# ---------------------------------------------------------------------------
# Building and updating
# ---------------------------------------------------------------------------


def test_build_embeds_every_image_through_encode_images(photos, tmp_path, checkpoint):
    from clipkit.zeroshot import encode_images, resolve_model

    report = Index.build(photos, tmp_path / "idx", checkpoint, chunk_size=4, batch_size=3)
    index = report.index
    expected = [p for p, _, _ in image_files(photos) if p != "broken.png"]
    assert sorted(index.paths) == sorted(expected) and len(index) == 13
    assert ".hidden/skip.png" not in index.paths and "notes.txt" not in index.paths
    assert [p for p, _ in report.skipped] == ["broken.png"] and index.skipped[0][0] == "broken.png"
    assert report.encoded == 14 and report.added == 13
    model, pre = resolve_model(checkpoint)
    direct = encode_images(model, [str(photos / p) for p in index.paths], preprocess=pre).features
    torch.testing.assert_close(index.embeddings(), direct, rtol=0, atol=1e-6)
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["fingerprint"] == index.fingerprint and manifest["model"] == str(Path(checkpoint).resolve())
    st = (photos / "a" / "img01.png").stat()
    entry = next(e for s in manifest["shards"] for e in s["entries"] if e[0] == "a/img01.png")
    assert entry == ["a/img01.png", st.st_size, st.st_mtime_ns]


def test_rerun_embeds_only_new_and_changed_files_and_drops_deleted(photos, tmp_path, checkpoint):
    out = tmp_path / "idx"
    Index.build(photos, out, checkpoint, chunk_size=4)
    again = Index.build(photos, out, checkpoint, chunk_size=4)
    assert again.encoded == 0 and again.kept == 13 and again.removed == 0

    (photos / "img00.png").unlink()  # deleted
    _render(2, seed=9)[1].save(photos / "a" / "img01.png")  # changed (other content, other size)
    _render(1, seed=7)[0].save(photos / "a" / "b" / "new.png")  # new
    report = Index.build(photos, out, checkpoint, chunk_size=4)
    assert report.encoded == 2 and report.removed == 2 and report.kept == 11
    updated = _by_path(report.index)
    assert "img00.png" not in updated and "a/b/new.png" in updated
    fresh = _by_path(Index.build(photos, tmp_path / "fresh", checkpoint, chunk_size=4).index)
    assert updated.keys() == fresh.keys()
    for p in fresh:
        torch.testing.assert_close(updated[p], fresh[p], rtol=0, atol=1e-6)
    # only the manifest's shards remain on disk
    on_disk = {f.name for f in (out / "shards").iterdir()}
    assert on_disk == {s["file"] for s in report.index.manifest["shards"]}


def test_interrupted_build_resumes_from_finished_shards(photos, tmp_path, checkpoint):
    out = tmp_path / "idx"
    with pytest.raises(InterruptedError):
        Index.build(photos, out, checkpoint, chunk_size=4, stop_after_chunks=2)
    assert len(list((out / "shards").glob("*.safetensors"))) == 2
    assert not (out / "manifest.json").exists()
    report = Index.build(photos, out, checkpoint, chunk_size=4)
    assert report.encoded == 14 - 8  # the two finished chunks of 4 files are not encoded again
    whole = Index.build(photos, tmp_path / "whole", checkpoint, chunk_size=4).index
    assert report.index.paths == whole.paths
    assert torch.equal(report.index.embeddings(), whole.embeddings())


def test_other_weights_are_an_error_unless_rebuilt(photos, tmp_path, checkpoint):
    from clipkit.checkpoints import save
    from clipkit.models import create_model

    out = tmp_path / "idx"
    Index.build(photos, out, checkpoint, chunk_size=8)
    torch.manual_seed(1)
    other = tmp_path / "other.safetensors"
    save(create_model("tiny-vit"), other)
    with pytest.raises(BadIndexError, match="other weights.*--rebuild"):
        Index.build(photos, out, str(other))
    with pytest.raises(BadIndexError, match="other weights"):
        Index(out).search("a red circle", model=str(other))
    report = Index.build(photos, out, str(other), rebuild=True)
    assert report.encoded == 14 and report.index.model_name == str(other.resolve())
    with pytest.raises(BadIndexError, match="covers"):
        Index.build(photos / "a", out, str(other))


def test_missing_index_and_bad_root_fail_clearly(tmp_path):
    with pytest.raises(BadIndexError, match="no index at .*clipkit index DIR"):
        Index(tmp_path / "nothing")
    with pytest.raises(NotADirectoryError):
        Index.build(tmp_path / "nothing", tmp_path / "idx")


# ---------------------------------------------------------------------------
# Searching
# ---------------------------------------------------------------------------


def test_text_and_image_search_equal_the_full_product(photos, tmp_path, checkpoint):
    from clipkit.zeroshot import encode_images, encode_prompts

    index = Index.build(photos, tmp_path / "idx", checkpoint, chunk_size=4).index
    model, pre = index.model()
    emb = index.embeddings()
    q = encode_prompts(model, ["a red circle"])[0]
    full = (emb @ q).topk(5)
    hits = index.search("a red circle", k=5)
    assert [h.path for h in hits] == [index.paths[i] for i in full.indices]
    assert [h.score for h in hits] == pytest.approx(full.values.tolist(), abs=1e-6)
    # an indexed image finds itself first, with cosine 1
    first = index.search(image=str(photos / "a" / "img04.png"), k=3)
    assert first[0].path == "a/img04.png" and first[0].score == pytest.approx(1.0, abs=1e-5)
    direct = encode_images(model, [str(photos / "a" / "img04.png")], preprocess=pre).features[0]
    torch.testing.assert_close(index.encode_query(image=str(photos / "a" / "img04.png")), direct)
    assert len(index.search("anything", k=100)) == 13
    with pytest.raises(ValueError, match="exactly one"):
        index.search("text", image=str(photos / "img00.png"))


def test_streamed_and_in_memory_search_agree(photos, tmp_path, checkpoint, monkeypatch):
    import clipkit.index

    index = Index.build(photos, tmp_path / "idx", checkpoint, chunk_size=4).index
    q = index.encode_query("a blue square")[None]
    in_memory = index.search_vectors(q, 7)
    assert index._kept is not None
    monkeypatch.setattr(clipkit.index, "KEEP_IN_MEMORY", 0)
    streamed = Index(tmp_path / "idx").search_vectors(q, 7)  # shard by shard from disk
    assert torch.equal(in_memory[1], streamed[1])
    torch.testing.assert_close(in_memory[0], streamed[0], rtol=0, atol=1e-6)  # other block shapes: rounding


def test_ann_search_over_an_index(photos, tmp_path, checkpoint):
    pytest.importorskip("faiss")
    index = Index.build(photos, tmp_path / "idx", checkpoint, chunk_size=4).index
    hits = index.search("a red circle", k=3, ann=True)
    exact = index.search("a red circle", k=3, ann=False)
    assert len(hits) == 3 and {h.path for h in hits} <= set(index.paths)
    assert [h.path for h in hits] == [h.path for h in exact]  # 13 vectors, few lists: all probed
    assert len(list((tmp_path / "idx").glob("ann-*.faiss"))) == 1  # kept for the next query


def test_file_serves_only_indexed_files_inside_the_root(photos, tmp_path, checkpoint):
    outside = tmp_path / "secret.png"
    _render(1)[0].save(outside)
    os.symlink(outside, photos / "link.png")  # an image file by name, pointing out of the root
    index = Index.build(photos, tmp_path / "idx", checkpoint).index
    assert index.file("a/img01.png") == (photos / "a" / "img01.png").resolve()
    assert "link.png" in index  # indexed (it is an image) but never served
    for bad in ["link.png", "../secret.png", str(outside), "/etc/passwd", "a/../../secret.png",
                "notes.txt", "a/%2e%2e/img00.png", "", None]:
        with pytest.raises(KeyError):
            index.file(bad)


# ---------------------------------------------------------------------------
# The commands
# ---------------------------------------------------------------------------


def test_cli_index_and_search(photos, tmp_path, checkpoint, capsys):
    out = tmp_path / "idx"
    assert cli(["index", str(photos), "--out", str(out), "--checkpoint", checkpoint, "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "13 images (13 added, 0 unchanged, 0 removed, 1 unreadable)" in captured.out
    assert "skipped broken.png" in captured.err

    assert cli(["search", str(out), "a red circle", "-k", "4", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 4 and set(hits[0]) == {"path", "score"}
    assert hits == [h.to_dict() for h in Index(out).search("a red circle", k=4)]

    sheet = tmp_path / "hits.png"
    assert cli(["search", str(out), "--image", str(photos / "img03.png"), "-k", "3", "--sheet", str(sheet)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["rank", "score", "path"] and table[1].split()[2] == "img03.png"
    with Image.open(sheet) as im:
        assert im.size[0] > 3 * 128
        first = im.crop((4, 4, 4 + 128, 4 + 128)).convert("RGB")
        assert len(first.getcolors(1 << 16)) > 1  # not blank: the hit's image is drawn


def test_cli_search_takes_the_shared_model_flags(photos, tmp_path, checkpoint, capsys):
    from clipkit.cli import build_parser

    args = build_parser().parse_args(["search", "i.idx", "x", "--model", "ViT-B/32", "--checkpoint", "w.pt"])
    assert (args.model, args.checkpoint) == ("ViT-B/32", "w.pt")
    idx = tmp_path / "idx"
    Index.build(photos, idx, checkpoint)
    assert cli(["search", str(idx), "a red circle", "-k", "3", "--json"]) == 0
    own = json.loads(capsys.readouterr().out)
    assert cli(["search", str(idx), "a red circle", "-k", "3", "--json", "--checkpoint", checkpoint]) == 0
    assert json.loads(capsys.readouterr().out) == own  # the same weights, named by --checkpoint


@pytest.mark.parametrize("argv, message", [
    (["search", "{missing}", "x"], "no index at"),
    (["search", "{idx}"], "give a text query or --image"),
    (["search", "{idx}", "x", "--image", "q.png"], "give a text query or --image"),
    (["search", "{idx}", "x", "-k", "0"], "-k must be >= 1"),
    (["search", "{idx}", "--image", "{photos}/broken.png"], "cannot load image"),
    (["index", "{photos}/img00.png", "--out", "{tmp}/i2"], "is not a folder"),
])
def test_cli_errors_are_one_line_and_exit_2(argv, message, photos, tmp_path, checkpoint, capsys):
    idx = tmp_path / "idx"
    Index.build(photos, idx, checkpoint)
    argv = [a.format(missing=tmp_path / "missing", idx=idx, photos=photos, tmp=tmp_path) for a in argv]
    assert cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_cli_serve_without_the_extra_says_how_to_install(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)
    assert cli(["serve"]) == 2
    assert capsys.readouterr().err.strip() == 'clipkit serve: uvicorn is missing: pip install "clipkit[serve]"'


def test_cli_ann_without_faiss_says_how_to_install(photos, tmp_path, checkpoint, capsys, monkeypatch):
    idx = tmp_path / "idx"
    Index.build(photos, idx, checkpoint)
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError
    assert cli(["search", str(idx), "a red circle", "--ann"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == 'clipkit search: approximate search needs faiss: pip install "clipkit[search]"'


def test_two_processes_equal_one(photos, tmp_path, checkpoint):
    """torchrun with 2 CPU processes on gloo writes the same index as 1 process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd(), "CLIPKIT_CACHE": str(tmp_path / "c")}
    indexes = {}
    for n in (1, 2):
        out = tmp_path / f"idx{n}"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n),
               "--master_addr", "127.0.0.1", "--master_port", str(29100 + n + os.getpid() % 500),
               "-m", "clipkit", "index", str(photos), "--out", str(out), "--checkpoint", checkpoint,
               "--chunk-size", "3", "--quiet"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr[-3000:]
        indexes[n] = Index(out)
    assert indexes[1].paths == indexes[2].paths and len(indexes[1]) == 13
    assert torch.equal(indexes[1].embeddings(), indexes[2].embeddings())
    assert indexes[1].manifest["shards"] == indexes[2].manifest["shards"]
    assert indexes[1].skipped == indexes[2].skipped == [("broken.png", indexes[1].skipped[0][1])]


# ---------------------------------------------------------------------------
# --fast: the image path is recorded, updates keep it, image queries use it
# ---------------------------------------------------------------------------


def test_fast_bf16_index_stores_the_fast_paths_embeddings(photos, tmp_path, checkpoint):
    from clipkit.models.fast import fast_model
    from clipkit.zeroshot import encode_images, resolve_model

    out = tmp_path / "idx"
    index = Index.build(photos, out, checkpoint, chunk_size=4, fast="bf16").index
    assert index.fast == "bf16" and json.loads((out / "manifest.json").read_text())["fast"] == "bf16"
    model, pre = resolve_model(checkpoint)
    files = [str(photos / p) for p in index.paths]
    fast = encode_images(fast_model(model, "bf16"), files, preprocess=pre).features
    plain = encode_images(model, files, preprocess=pre).features
    torch.testing.assert_close(index.embeddings(), fast.float(), rtol=0, atol=1e-6)
    assert not torch.equal(index.embeddings(), plain)  # really the bf16 path, not fp32
    assert float((index.embeddings() * plain).sum(1).min()) > 0.99
    # an image query goes through the same path: an indexed image scores 1 against itself
    hit = index.search(image=str(photos / "a" / "img04.png"), k=1)[0]
    assert hit.path == "a/img04.png" and hit.score == pytest.approx(1.0, abs=1e-5)
    # an update with the same setting embeds nothing; another setting is refused
    assert Index.build(photos, out, checkpoint, chunk_size=4, fast="bf16").encoded == 0
    with pytest.raises(BadIndexError, match="built --fast bf16 and this run is without --fast.*--rebuild"):
        Index.build(photos, out, checkpoint, chunk_size=4)
    with pytest.raises(ValueError, match="fast must be one of"):
        Index.build(photos, tmp_path / "idx2", checkpoint, fast="fp8")
    report = Index.build(photos, out, checkpoint, chunk_size=4, rebuild=True)
    assert report.encoded == 14 and report.index.fast is None
    torch.testing.assert_close(report.index.embeddings(), plain, rtol=0, atol=1e-6)


def test_cli_index_fast_int8(photos, tmp_path, checkpoint, capsys):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "idx"
    assert cli(["index", str(photos), "--out", str(out), "--checkpoint", checkpoint, "--fast", "int8",
                "--quiet"]) == 0
    index = Index(out)
    assert index.fast == "int8" and len(index) == 13
    from clipkit.zeroshot import encode_images, resolve_model

    model, pre = resolve_model(checkpoint)
    plain = encode_images(model, [str(photos / p) for p in index.paths], preprocess=pre).features
    assert float((index.embeddings() * plain).sum(1).min()) > 0.99
    capsys.readouterr()
    assert cli(["index", str(photos), "--out", str(out), "--checkpoint", checkpoint, "--quiet"]) == 2
    assert "built --fast int8" in capsys.readouterr().err
