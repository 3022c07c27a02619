"""dVAE: shapes, relaxation, a short training run, exact resume; the OpenAI twin's parity
with the `DALL-E` package (fixture from tests/make_dalle_fixture.py); the restricted
reader of pickled modules and its trust flag."""
from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from clipkit.generator.configs import GENERATOR_CONFIGS, get_generator_config
from clipkit.generator.dvae import DVAE, DVAEConfig, gumbel_softmax, map_pixels, recon_loss, unmap_pixels
from clipkit.generator.openai_dvae import (PickleRefused, convert_openai_dvae, load_openai_dvae,
                                           read_pickled_state_dict)
from clipkit.generator.train import DVAETrainConfig, evaluate_dvae, load_dvae, temperature_at, train_dvae

FIXTURES = Path(__file__).parent / "fixtures" / "dalle"
TINY = DVAEConfig(image_size=16, hidden=8, mults=(1, 2), vocab_size=16, n_init=8, stem_kernel=3)


def _blobs(n: int = 32, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Flat backgrounds with one coloured square each: easy to reconstruct, like the synthetic world."""
    g = torch.Generator().manual_seed(seed)
    imgs = torch.rand(n, 3, 1, 1, generator=g).expand(n, 3, size, size).clone()
    for i in range(n):
        x, y = torch.randint(0, size - 6, (2,), generator=g).tolist()
        imgs[i, :, y:y + 6, x:x + 6] = torch.rand(3, 1, 1, generator=g)
    return imgs


# ---------------------------------------------------------------------------
# the dVAE itself
# ---------------------------------------------------------------------------


def test_encode_decode_shapes_and_range():
    torch.manual_seed(0)
    m = DVAE(TINY).eval()
    x = torch.rand(3, 3, 16, 16)
    ids = m.encode(x)
    assert ids.shape == (3, 8, 8) and ids.dtype == torch.long
    assert 0 <= int(ids.min()) and int(ids.max()) < TINY.vocab_size
    out = m.decode(ids)
    assert out.shape == (3, 3, 16, 16) and 0 <= float(out.min()) and float(out.max()) <= 1
    assert torch.equal(m.decode(ids.flatten(1)), out)  # flat raster order, as the transformer emits
    # the lookup path equals the 1x1 conv of a one-hot input
    one_hot = torch.nn.functional.one_hot(ids, 16).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(m.decoder(one_hot), m.decode_stats(ids), atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="code ids"):
        m.decode(torch.full((1, 8, 8), 16))
    with pytest.raises(ValueError, match="divisible"):
        m.encode(torch.rand(1, 3, 15, 15))


def test_pixel_mapping_and_gumbel():
    x = torch.rand(2, 3, 4, 4)
    y = map_pixels(x)
    assert float(y.min()) >= 0.1 and float(y.max()) <= 0.9
    torch.testing.assert_close(unmap_pixels(y), x)
    logits = torch.tensor([[0.0, 1.0, 2.0]]).expand(4000, 3)
    z = gumbel_softmax(logits, 1.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(z.sum(-1), torch.ones(4000))
    freq = torch.bincount(gumbel_softmax(logits, 0.01, generator=torch.Generator().manual_seed(1)).argmax(-1)) / 4000
    torch.testing.assert_close(freq, torch.softmax(logits[0], 0), atol=0.03, rtol=0)
    a = gumbel_softmax(logits[:5], 1.0, generator=torch.Generator().manual_seed(2))
    b = gumbel_softmax(logits[:5], 1.0, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)


def test_temperature_schedule_is_cosine_1_to_1_16():
    tc = DVAETrainConfig(anneal_fraction=1.0)
    assert temperature_at(0, 100, tc) == pytest.approx(1.0)
    assert temperature_at(50, 100, tc) == pytest.approx((1 + 1 / 16) / 2)
    assert temperature_at(100, 100, tc) == pytest.approx(1 / 16)
    assert temperature_at(500, 100, tc) == pytest.approx(1 / 16)


def test_logit_laplace_loss_prefers_the_right_location():
    x = torch.rand(1, 3, 4, 4)
    y = map_pixels(x)
    good = torch.cat([torch.log(y / (1 - y)), torch.full_like(y, -2.0)], 1)
    bad = torch.cat([torch.log(y / (1 - y)) + 1, torch.full_like(y, -2.0)], 1)
    assert recon_loss(x, good) < recon_loss(x, bad)
    assert recon_loss(x, good, "mse") < recon_loss(x, bad, "mse")


# Flat colours from a small palette, like the synthetic world's shapes on plain backgrounds.
PALETTE = torch.tensor([[0.85, 0.1, 0.1], [0.1, 0.65, 0.2], [0.15, 0.3, 0.9], [0.95, 0.9, 0.15],
                        [0.5, 0.5, 0.5], [0.9, 0.9, 0.9]])


def _palette_scenes(n: int = 64, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    imgs = PALETTE[torch.randint(0, len(PALETTE), (n,), generator=g)][:, :, None, None].expand(n, 3, size, size).clone()
    for i in range(n):
        x, y = torch.randint(0, size - 6, (2,), generator=g).tolist()
        imgs[i, :, y:y + 6, x:x + 6] = PALETTE[int(torch.randint(0, len(PALETTE), (1,), generator=g))][:, None, None]
    return imgs


def test_short_training_lowers_reconstruction_loss(tmp_path):
    """150 steps take the hard-code reconstruction error below half the data's variance:
    a decoder that ignored its codes could do no better than the variance itself (the
    mean image), so the codes must carry the colours and the square's place."""
    torch.manual_seed(0)
    data = _palette_scenes(64)
    variance = float(((data - data.mean(0, keepdim=True)) ** 2).mean())
    # Wider than TINY (a 2-channel residual path learns too slowly to test in seconds); the
    # squared-error loss and a small β, as in the shipped synth-mini recipe.
    cfg = DVAEConfig(image_size=16, hidden=16, mults=(1, 2), vocab_size=32, n_init=16, stem_kernel=3,
                     recon_loss="mse")
    model = DVAE(cfg)
    before = evaluate_dvae(model, data[:16])["mse"]
    tc = DVAETrainConfig(batch_size=16, lr=1e-2, warmup=5, kl_weight=0.01)
    model, hist = train_dvae(model, data, 150, train=tc, out_dir=tmp_path, log_every=30,
                             eval_images=data[:16], log=lambda _: None)
    after = hist[-1]["eval_mse"]
    assert after < 0.5 * variance, (after, variance)
    assert after < 0.5 * before
    assert hist[-1]["recon"] < hist[0]["recon"]
    assert hist[-1]["eval_psnr"] > hist[0]["eval_psnr"]
    loaded = load_dvae(tmp_path / "dvae.safetensors")
    assert torch.equal(loaded.encode(data[:4]), model.encode(data[:4]))
    for rec in hist:  # the codebook monitor is in every record, and consistent
        assert rec["codes_used"] + rec["dead_codes"] == cfg.vocab_size
        assert 1 <= rec["code_perplexity"] <= rec["codes_used"] + 1e-9


def test_codebook_usage_counts_argmax_codes_and_their_perplexity():
    from clipkit.generator.train import codebook_usage

    logits = torch.full((2, 8, 2, 2), -1.0)  # 8 positions over a codebook of 8
    for i, code in enumerate([0, 0, 0, 0, 1, 1, 2, 3]):
        b, r = divmod(i, 4)
        logits[b, code, r // 2, r % 2] = 5.0
    u = codebook_usage(logits)
    assert u["codes_used"] == 4 and u["dead_codes"] == 4
    # histogram 4/8, 2/8, 1/8, 1/8: entropy 1.75 bits -> perplexity 2 ** 1.75
    assert u["code_perplexity"] == pytest.approx(2 ** 1.75)
    uniform = torch.eye(8).view(8, 8, 1, 1)  # each image its own code
    assert codebook_usage(uniform) == {"codes_used": 8, "dead_codes": 0, "code_perplexity": pytest.approx(8.0)}


@pytest.mark.parametrize("quantizer", ["gumbel", "vq"])
def test_resume_equals_straight_run(tmp_path, quantizer):
    """Both quantizers; for vq this covers the codebook buffers and the restarts' draws."""
    cfg = TINY if quantizer == "gumbel" else dataclasses.replace(TINY, quantizer="vq", code_dim=4, recon_loss="mse")
    data = _blobs(16)
    tc = DVAETrainConfig(batch_size=4, warmup=2)
    torch.manual_seed(1)
    straight, _ = train_dvae(DVAE(cfg), data, 6, train=tc, log=lambda _: None)
    torch.manual_seed(1)
    train_dvae(DVAE(cfg), data, 6, train=tc, out_dir=tmp_path, stop_at=3, log=lambda _: None)
    torch.manual_seed(99)  # the resumed run must not depend on the fresh model's init
    resumed, _ = train_dvae(DVAE(cfg), data, 6, train=tc, out_dir=tmp_path, resume=True, log=lambda _: None)
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


# ---------------------------------------------------------------------------
# the OpenAI twin
# ---------------------------------------------------------------------------


def _fixture():
    f = load_file(FIXTURES / "dvae_parity.safetensors")
    enc = {k[len("encoder."):]: v for k, v in f.items() if k.startswith("encoder.")}
    dec = {k[len("decoder."):]: v for k, v in f.items() if k.startswith("decoder.")}
    return f, enc, dec


def test_openai_twin_matches_the_dall_e_package():
    f, enc, dec = _fixture()
    state, config = convert_openai_dvae(enc, dec, image_size=32)
    assert (config.hidden, config.mults, config.blocks_per_group, config.vocab_size, config.n_init,
            config.stem_kernel) == (8, (1, 2, 4, 8), 2, 64, 8, 7)
    m = DVAE(config)
    m.load_state_dict(state, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(m.logits(f["x"]), f["logits"], atol=1e-5, rtol=0)
        assert torch.equal(m.encode(f["x"]), f["ids"])
        torch.testing.assert_close(m.decoder(f["soft"]), f["stats_soft"], atol=1e-5, rtol=0)
        torch.testing.assert_close(m.decode_stats(f["ids"]), f["stats_hard"], atol=1e-5, rtol=0)
        torch.testing.assert_close(m.decode(f["ids"]), f["reconstruction"], atol=1e-5, rtol=0)


def test_released_style_pickles_load_without_running_their_code():
    f, enc, dec = _fixture()
    assert "dall_e" not in sys.modules
    enc2 = read_pickled_state_dict(FIXTURES / "encoder.pkl")
    dec2 = read_pickled_state_dict(FIXTURES / "decoder.pkl")
    assert "dall_e" not in sys.modules  # the classes the pickle names were never imported
    assert set(enc2) == set(enc) and all(torch.equal(enc2[k], enc[k]) for k in enc)
    assert set(dec2) == set(dec) and all(torch.equal(dec2[k], dec[k]) for k in dec)
    m = load_openai_dvae(FIXTURES / "encoder.pkl", FIXTURES / "decoder.pkl", image_size=32)
    with torch.no_grad():
        torch.testing.assert_close(m.logits(f["x"]), f["logits"], atol=1e-5, rtol=0)


def test_converter_reports_mismatches():
    _, enc, dec = _fixture()
    broken = {k: v for k, v in enc.items() if k != "blocks.group_2.block_1.id_path.w"}
    with pytest.raises(ValueError, match="missing"):
        convert_openai_dvae(broken, dec)
    with pytest.raises(ValueError, match="codes"):
        convert_openai_dvae(enc, {**dec, "blocks.input.w": torch.zeros(8, 32, 1, 1)})
    with pytest.raises(KeyError, match="blocks.input.w"):
        convert_openai_dvae({"conv.weight": torch.zeros(1)}, dec)


# Stand-ins for the trust tests: a module pickled whole, and a pickle that calls a function.
SETSTATE_CALLS: list[str] = []
CALLED: list[str] = []


class StandInModule(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.register_buffer("scale", torch.arange(4.0))
        self.register_buffer("scratch", torch.zeros(2), persistent=False)
        self.note = "attrs travel in __dict__"

    def __setstate__(self, state):
        SETSTATE_CALLS.append("ran")
        super().__setstate__(state)


def side_effect(message):
    CALLED.append(message)
    return {"x": torch.zeros(1)}


class Payload:
    def __reduce__(self):
        return side_effect, ("the pickle ran code",)


@pytest.mark.parametrize("zip_format", [True, False])
def test_restricted_reader_records_modules_and_trust_runs_their_code(tmp_path, zip_format):
    torch.manual_seed(0)
    module = StandInModule()
    path = tmp_path / "module.pkl"
    torch.save(module, path, _use_new_zipfile_serialization=zip_format)
    SETSTATE_CALLS.clear()
    state = read_pickled_state_dict(path)
    assert SETSTATE_CALLS == []  # the class's code never ran
    assert set(state) == {"conv.weight", "conv.bias", "scale"}
    for k, v in module.state_dict().items():
        assert torch.equal(state[k], v)
    trusted = read_pickled_state_dict(path, trust_pickle=True)
    assert SETSTATE_CALLS == ["ran"]
    assert all(torch.equal(trusted[k], v) for k, v in module.state_dict().items())


def test_restricted_reader_refuses_calls_unless_trusted(tmp_path):
    path = tmp_path / "payload.pkl"
    torch.save({"payload": Payload()}, path)
    CALLED.clear()
    with pytest.raises(PickleRefused, match="trust_pickle=True"):
        read_pickled_state_dict(path)
    assert CALLED == []
    read_pickled_state_dict(path, trust_pickle=True)
    assert CALLED == ["the pickle ran code"]


def test_plain_state_dict_files_load_too(tmp_path):
    sd = {"a.w": torch.randn(2, 3), "a.b": torch.arange(3)}
    torch.save(sd, tmp_path / "sd.pt")
    got = read_pickled_state_dict(tmp_path / "sd.pt")
    assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd)
    with pytest.raises(FileNotFoundError):
        read_pickled_state_dict(tmp_path / "missing.pkl")


def test_fixture_is_small_and_records_its_config():
    from safetensors import safe_open

    assert sum(p.stat().st_size for p in FIXTURES.iterdir()) < 2_000_000
    with safe_open(str(FIXTURES / "dvae_parity.safetensors"), framework="pt") as f:
        config = json.loads(f.metadata()["config"])
    assert config["n_hid"] == 8 and config["vocab_size"] == 64


@pytest.mark.parametrize("name", sorted(GENERATOR_CONFIGS))
def test_every_generator_config_pairs_a_dvae_grid_with_its_transformer(name):
    dvae_cfg, tr_cfg = get_generator_config(name)
    assert dvae_cfg.grid_size == tr_cfg.grid_size
    assert dvae_cfg.vocab_size == tr_cfg.image_vocab
    dvae = DVAE(dvae_cfg)
    x = torch.rand(2, 3, dvae_cfg.image_size, dvae_cfg.image_size)
    ids = dvae.encode(x)
    assert ids.shape == (2, tr_cfg.grid_size, tr_cfg.grid_size)
    assert dvae.decode(ids).shape == x.shape


def test_parse_mix():
    import argparse

    from clipkit.commands.train_generator import parse_mix

    assert parse_mix("shape=0.4, digit=0.3") == {"shape": 0.4, "digit": 0.3}
    for bad in ("shape", "shape=x", "", "shap=0.4"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_mix(bad)
