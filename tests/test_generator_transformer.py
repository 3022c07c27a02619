"""The generator's transformer, sampler and pipeline on tiny random models.

Invariants: every mask type is what the model actually sees (a token change reaches
exactly the positions the mask allows, through a real forward pass); KV-cached decoding
equals full recomputation step by step, with and without guidance and with an image
prefix; sampling is a function of (caption, seed, sample index); the `Generator` file
round-trips; `clipkit generate` runs end to end on a saved tiny generator.
"""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from clipkit.generator.configs import get_generator_config
from clipkit.generator.dvae import DVAE
from clipkit.generator.generator import Generator
from clipkit.generator.sample import filter_logits, row_generators, sample_codes
from clipkit.generator.train import TransformerTrainConfig, train_transformer
from clipkit.generator.transformer import (MASK_TYPES, PAD_BASE, DALLETransformer, TransformerConfig, build_mask,
                                           null_text, text_from_clip_ids)


TINY_DVAE, TINY = get_generator_config("tiny")  # text_len 12, 8×8 grid, 16 codes, width 32
CAPTIONS = ["a green pentagon", "a small red circle on the left", "three blue stars"]


def _model(cfg: TransformerConfig = TINY, seed: int = 0, scale: float = 1.0) -> DALLETransformer:
    """A random model with a known BPE vocabulary; `scale` > 1 makes every weight larger so
    that a changed token visibly changes what it reaches."""
    torch.manual_seed(seed)
    m = DALLETransformer(cfg)
    m.set_text_vocab([*range(100, 100 + cfg.text_vocab - 3), 49406, 49407])  # + start and end
    if scale != 1.0:
        with torch.no_grad():
            for name, p in m.named_parameters():
                if "ln" not in name:
                    p.mul_(scale)
    return m.eval()


def _text(batch: int, cfg: TransformerConfig = TINY, seed: int = 0, length: int | None = None) -> torch.Tensor:
    """Generator text ids: start, random known BPE ids, end, then per-position pads."""
    g = torch.Generator().manual_seed(seed)
    L = cfg.text_len
    n = L - 2 if length is None else length
    rows = torch.randint(100, 100 + cfg.text_vocab - 3, (batch, L), generator=g)
    rows[:, 0] = 49406
    rows[:, n + 1] = 49407
    pos = torch.arange(L)
    return torch.where(pos > n + 1, PAD_BASE + pos, rows)


def _codes(batch: int, cfg: TransformerConfig = TINY, seed: int = 1) -> torch.Tensor:
    return torch.randint(cfg.image_vocab, (batch, cfg.image_len), generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------
# masks
# ---------------------------------------------------------------------------


def _expected_mask(kind: str, L: int, g: int, k: int) -> torch.Tensor:
    """The mask rules written out position by position (an oracle for build_mask)."""
    T = L + g * g
    out = torch.zeros(T, T, dtype=torch.bool)
    for q in range(T):
        for key in range(q + 1):
            if q < L or key < L:  # text is causal; image positions see all the text
                out[q, key] = True
                continue
            (qr, qc), (kr, kc) = divmod(q - L, g), divmod(key - L, g)
            out[q, key] = {"row": (q - L) - (key - L) <= g,
                           "column": qc == kc,
                           "conv": abs(qr - kr) <= k // 2 and abs(qc - kc) <= k // 2,
                           "full": True}[kind]
    return out


@pytest.mark.parametrize("kind", MASK_TYPES)
def test_build_mask_matches_the_rules(kind):
    torch.testing.assert_close(build_mask(kind, 5, 4, 3), _expected_mask(kind, 5, 4, 3), rtol=0, atol=0)


def test_layer_rule_row_column_then_full_last():
    cfg = dataclasses.replace(TINY, layers=8)
    assert cfg.layer_types() == ("row", "column", "row", "row", "row", "column", "row", "full")
    assert dataclasses.replace(cfg, last_layer="conv").layer_types()[-1] == "conv"


def _outputs(model: DALLETransformer, text: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """What each input position t outputs, through the model's forward: (B, T−1, V) with
    the text head's logits at text positions and the image head's after them (padded to
    one width; the last image token is no input)."""
    text_logits, image_logits = model(text, image)
    V = max(text_logits.shape[-1], image_logits.shape[-1])
    pad = lambda x: torch.nn.functional.pad(x, (0, V - x.shape[-1]))  # noqa: E731
    return torch.cat([pad(text_logits), pad(image_logits)], 1)


@pytest.mark.parametrize("kind", MASK_TYPES)
def test_a_position_sees_exactly_what_its_mask_allows(kind):
    """One layer of the given type: change the token at every input position k in turn
    (one batch row each) and record which outputs q moved. Moved ⇔ mask[q, k]."""
    cfg = dataclasses.replace(TINY, layers=1, attn_pattern=(kind,), conv_kernel=3)
    model = _model(cfg, scale=8.0)
    L, N = cfg.text_len, cfg.image_len
    T = L + N - 1  # input positions (the last image token is only a target)
    text, image = _text(1, cfg, length=6), _codes(1, cfg)
    texts, images = text.repeat(T + 1, 1), image.repeat(T + 1, 1)
    for k in range(T):  # row k + 1 changes the token at position k
        if k < L:
            texts[k + 1, k] = PAD_BASE + k if text[0, k] < PAD_BASE else 100 + (k % 7)
        else:
            images[k + 1, k - L] = (image[0, k - L] + 1) % cfg.image_vocab
    with torch.no_grad():
        out = _outputs(model, texts, images)  # (T + 1, T, V)
    delta = (out[1:] - out[:1]).abs().amax(-1)  # (k, q): how much output q moved when token k changed
    allowed = build_mask(kind, L, cfg.grid_size, 3)[:T, :T]  # (q, k)
    assert float(delta.T[~allowed].max()) <= 1e-6, f"{kind}: a position reacted to a token its mask hides"
    seen = delta.T > 1e-4  # (q, k)
    assert torch.equal(seen, allowed), f"{kind}: {int((seen != allowed).sum())} visible (q, k) pairs did not react"


def test_stacked_layers_follow_their_own_masks():
    """Two column layers never let information cross columns; a row layer after them does."""
    L, g = TINY.text_len, TINY.grid_size
    cols = _model(dataclasses.replace(TINY, layers=2, attn_pattern=("column", "column")), scale=8.0)
    mixed = _model(dataclasses.replace(TINY, layers=2, attn_pattern=("column", "row")), scale=8.0)
    text, image = _text(1), _codes(1).repeat(2, 1)
    image[1, 0] = (image[0, 0] + 1) % TINY.image_vocab  # change image token 0 (column 0)
    text = text.repeat(2, 1)
    q = L + g + 1  # row 1, column 1: not column 0, and more than g positions after token 0
    with torch.no_grad():
        a = _outputs(cols, text, image)
        b = _outputs(mixed, text, image)
    assert torch.equal(a[0, q], a[1, q])
    # after the column layer the change sits in column 0; the row layer at q reads image
    # positions 1 .. g + 1, among them g (row 1, column 0)
    assert float((b[0, q] - b[1, q]).abs().max()) > 1e-4


# ---------------------------------------------------------------------------
# KV cache == full recomputation
# ---------------------------------------------------------------------------


def test_prefill_and_steps_equal_the_full_forward():
    model = _model(scale=2.0)
    text, codes = _text(3), _codes(3)
    L = TINY.text_len
    with torch.no_grad():
        _, full = model(text, codes)  # (3, N, K)
        caches = model.new_caches(3)
        got = [model.prefill(text, caches)]
        for i in range(TINY.image_len - 1):
            got.append(model.step(codes[:, i], i, caches))
    torch.testing.assert_close(torch.stack(got, 1), full, atol=1e-5, rtol=1e-5)
    assert caches[0].length == L + TINY.image_len - 1


@pytest.mark.parametrize("guidance", [1.0, 3.0])
@pytest.mark.parametrize("prefix_rows", [0, 3])
def test_cached_sampling_gives_the_logits_of_recomputation(guidance, prefix_rows):
    """Step by step, the cached sampler's (guided) logits equal those of rerunning the
    whole prefix, and so do the codes it draws from them."""
    model = _model(scale=2.0)
    text = _text(2, length=4)
    prefix = _codes(2)[:, :prefix_rows * TINY.grid_size] if prefix_rows else None
    runs = {}
    for use_cache in (True, False):
        logs = []
        codes = sample_codes(model, text, guidance=guidance, image_prefix=prefix, generators=row_generators(5, 2),
                             use_cache=use_cache, on_step=lambda i, lg: logs.append((i, lg.clone())))
        runs[use_cache] = (codes, logs)
    (c1, l1), (c0, l0) = runs[True], runs[False]
    assert [i for i, _ in l1] == [i for i, _ in l0] == list(range(prefix_rows * TINY.grid_size, TINY.image_len))
    for (i, a), (_, b) in zip(l1, l0):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=lambda m: f"step {i}: {m}")
    assert torch.equal(c1, c0)


def test_guidance_combines_conditional_and_unconditional_streams():
    model = _model(scale=2.0)
    text = _text(2, length=4)
    first = {}
    sample_codes(model, text, guidance=3.0, temperature=0,
                 on_step=lambda i, lg: first.setdefault(i, lg.clone()))
    with torch.no_grad():
        c = model.prefill(text, model.new_caches(2))
        u = model.prefill(null_text(2, TINY.text_len), model.new_caches(2))
    torch.testing.assert_close(first[0], u + 3.0 * (c - u), atol=1e-5, rtol=1e-5)
    plain = {}
    sample_codes(model, text, guidance=1.0, temperature=0, on_step=lambda i, lg: plain.setdefault(i, lg.clone()))
    torch.testing.assert_close(plain[0], c, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------
# sampling: determinism, filters, prompts
# ---------------------------------------------------------------------------


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    assert torch.isfinite(filter_logits(logits, top_k=2)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.7)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.8)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.81)).tolist() == [[True, True, True, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.1)).tolist() == [[True, False, False, False]]
    assert torch.equal(filter_logits(logits), logits)
    with pytest.raises(ValueError):
        filter_logits(logits, top_k=0)
    with pytest.raises(ValueError):
        filter_logits(logits, top_p=0.0)


def test_sampling_filters_hold_at_every_step():
    model = _model(scale=2.0)
    text = _text(4)
    greedy = sample_codes(model, text, temperature=0)
    assert torch.equal(sample_codes(model, text, top_k=1, generators=row_generators(0, 4)), greedy)
    allowed = []

    def record(i, logits):
        allowed.append(torch.topk(logits, 3).indices)

    codes = sample_codes(model, text, top_k=3, generators=row_generators(1, 4), on_step=record)
    for i, top in enumerate(allowed):
        assert all(int(codes[b, i]) in top[b].tolist() for b in range(4))
    assert int(codes.max()) < TINY.image_vocab  # image positions only ever draw image codes


def _tiny_generator(seed: int = 0) -> Generator:
    from clipkit.tokenizer import get_tokenizer
    from clipkit.generator.transformer import build_text_vocab

    torch.manual_seed(seed)
    tr = DALLETransformer(TINY)
    tr.set_text_vocab(build_text_vocab(CAPTIONS, get_tokenizer()))
    with torch.no_grad():
        for name, p in tr.named_parameters():
            if "ln" not in name:
                p.mul_(4.0)  # livelier random distributions, so samples differ visibly
    return Generator(DVAE(TINY_DVAE), tr, defaults={"guidance": 2.0}).eval()


def test_same_caption_and_seed_give_the_same_images():
    gen = _tiny_generator()
    a = gen.generate("a green pentagon", n=4, seed=7)
    b = gen.generate("a green pentagon", n=4, seed=7)
    assert torch.equal(a.codes, b.codes)
    assert [im.tobytes() for im in a] == [im.tobytes() for im in b]
    assert not torch.equal(gen.generate("a green pentagon", n=4, seed=8).codes, a.codes)
    # sample j depends on (caption, seed, j) only: not on n, the batch size or other captions
    more = gen.sample_codes(["three blue stars", "a green pentagon"], n=6, seed=7, batch_size=5)
    assert torch.equal(more[1, :4], a.codes)
    assert len({tuple(c.tolist()) for c in a.codes}) > 1  # the n samples differ from each other


def test_image_prompt_completion_keeps_the_given_rows():
    gen = _tiny_generator()
    g = TINY.grid_size
    prompt = _codes(1, seed=3)[0]
    out = gen.generate("a green pentagon", n=3, seed=0, image_prompt=prompt, prompt_rows=3)
    assert all(torch.equal(c[:3 * g], prompt[:3 * g]) for c in out.codes)
    assert not all(torch.equal(c[3 * g:], prompt[3 * g:]) for c in out.codes)
    # an image prompt is encoded by the dVAE first; its top rows are kept
    image = torch.rand(3, TINY_DVAE.image_size, TINY_DVAE.image_size, generator=torch.Generator().manual_seed(0))
    ids = gen.dvae.encode(image[None]).flatten(1)[0]
    out = gen.generate("a green pentagon", n=2, seed=0, image_prompt=image, prompt_rows=2)
    assert all(torch.equal(c[:2 * g], ids[:2 * g]) for c in out.codes)
    with pytest.raises(ValueError, match="prompt_rows"):
        gen.generate("a green pentagon", n=1, image_prompt=prompt, prompt_rows=g + 1)


def test_text_ids_use_per_position_pads_not_zero():
    from clipkit.tokenizer import get_tokenizer

    clip = get_tokenizer()(["a green pentagon"], context_length=TINY.text_len)
    ids = text_from_clip_ids(clip, TINY.text_len)[0]
    end = int((ids == 49407).nonzero()[0])
    assert (ids[end + 1:] == PAD_BASE + torch.arange(end + 1, TINY.text_len)).all()
    assert 0 not in ids.tolist()


# ---------------------------------------------------------------------------
# loss, training, files, command
# ---------------------------------------------------------------------------


def test_loss_weights_text_one_eighth_and_ignores_pads():
    model = _model()
    text, codes = _text(2, length=3), _codes(2)
    loss, parts = model.loss(text, codes)
    assert parts["text_tokens"] == 2 * 4  # 3 words + end per row; pads are not targets
    assert loss.item() == pytest.approx(parts["text_ce"] / 8 + 7 * parts["image_ce"] / 8, rel=1e-5)
    assert parts["image_ce"] == pytest.approx(math.log(TINY.image_vocab), rel=0.2)  # random init: ~uniform


def test_transformer_training_lowers_loss_and_resumes_exactly(tmp_path):
    # four captions, each always paired with its own image: the codes are learnable from the text
    corpus = {"text": _text(4, seed=3, length=4).repeat(16, 1), "codes": _codes(4, seed=4).repeat(16, 1)}
    tc = TransformerTrainConfig(batch_size=8, warmup=2, lr=1e-2, p_uncond=0.0)
    _, hist = train_transformer(_model(), corpus, 60, train=tc, log_every=20, log=lambda _: None)
    assert hist[-1]["image_ce"] < 0.5 * math.log(TINY.image_vocab)  # uniform guessing: log 16 nats
    straight, _ = train_transformer(_model(), corpus, 6, train=tc, log=lambda _: None)
    train_transformer(_model(), corpus, 6, train=tc, out_dir=tmp_path, stop_at=3, log=lambda _: None)
    resumed, _ = train_transformer(_model(seed=5), corpus, 6, train=tc, out_dir=tmp_path, resume=True,
                                   log=lambda _: None)
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_generator_file_round_trip(tmp_path):
    gen = _tiny_generator()
    path = gen.save(tmp_path / "g.safetensors")
    back = Generator.load(path)
    sd, sd2 = gen.state_dict(), back.state_dict()
    assert list(sd) == list(sd2) and all(torch.equal(sd[k], sd2[k]) for k in sd)
    assert back.defaults == gen.defaults and back.transformer.config == gen.transformer.config
    assert torch.equal(back.sample_codes("a green pentagon", n=3, seed=1),
                       gen.sample_codes("a green pentagon", n=3, seed=1))
    half = Generator.load(gen.save(tmp_path / "h.safetensors", dtype=torch.float16))
    assert half.transformer.image_head.weight.dtype == torch.float32
    assert (tmp_path / "h.safetensors").stat().st_size < 0.6 * path.stat().st_size
    with pytest.raises(FileNotFoundError):
        Generator.load(tmp_path / "missing.safetensors")


def test_generate_command_writes_a_grid(tmp_path, capsys):
    from PIL import Image

    from clipkit.cli import main

    path = _tiny_generator().save(tmp_path / "tiny.safetensors")
    out = tmp_path / "grid.png"
    rc = main(["generate", "a green pentagon", "-n", "4", "--out", str(out), "--checkpoint", str(path),
               "--seed", "3", "--scale", "1", "--save-dir", str(tmp_path / "each")])
    assert rc == 0
    grid = Image.open(out)
    side = TINY_DVAE.image_size
    assert grid.size == (2 * (side + 2) + 2, 2 * (side + 2) + 2)  # 2×2 tiles with 2-pixel gaps
    assert len(list((tmp_path / "each").glob("*.png"))) == 4
    assert "a green pentagon" in capsys.readouterr().out
    # without --scale, cells come out about 128 pixels wide whatever the image size
    assert main(["generate", "a red star", "-n", "1", "--out", str(out), "--checkpoint", str(path)]) == 0
    assert Image.open(out).size == (128 // side * side + 4,) * 2
    assert main(["generate", "x", "--checkpoint", str(tmp_path / "missing.safetensors")]) == 2


def test_pil_to_tensor_is_a_deprecated_alias_of_the_one_converter():
    from PIL import Image

    from clipkit.generator.generator import pil_to_tensor
    from clipkit.transforms import to_tensor

    image = Image.new("RGB", (5, 7), (10, 200, 30))
    with pytest.warns(DeprecationWarning, match="clipkit.transforms.to_tensor"):
        old = pil_to_tensor(image, 4)
    assert torch.equal(old, to_tensor(image, 4)) and old.shape == (3, 4, 4)
