"""The dVAE's vq quantizer: nearest-code assignment, the EMA codebook and dead-code
restarts (checked against a straightforward recomputation), the decode fast path, a short
training run that learns, exact resume, file round trips; and the bf16 training option."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from clipkit.generator.dvae import VQ_DEAD_COUNT, VQ_EMA_DECAY, DVAE, DVAEConfig
from clipkit.generator.train import (DVAETrainConfig, TransformerTrainConfig, evaluate_dvae, load_dvae,
                                     save_dvae, train_dvae, train_transformer)

VQ = DVAEConfig(image_size=16, hidden=8, mults=(1, 2), vocab_size=16, n_init=8, stem_kernel=3,
                recon_loss="mse", quantizer="vq", code_dim=4)


def _scenes(n: int, seed: int = 0) -> torch.Tensor:
    """Flat backgrounds with one 6x6 square of another colour (the synthetic world in small)."""
    g = torch.Generator().manual_seed(seed)
    imgs = torch.rand(n, 3, 1, 1, generator=g).expand(n, 3, 16, 16).clone()
    for i in range(n):
        x, y = torch.randint(0, 10, (2,), generator=g).tolist()
        imgs[i, :, y:y + 6, x:x + 6] = torch.rand(3, 1, 1, generator=g)
    return imgs


def _trained_step_model(seed: int = 0) -> DVAE:
    torch.manual_seed(seed)
    m = DVAE(VQ).train()
    m(_scenes(8), generator=torch.Generator().manual_seed(0))  # initialises the codebook
    return m


def test_config_checks_and_state_dict():
    with pytest.raises(ValueError, match="quantizer"):
        DVAEConfig(quantizer="kmeans")
    with pytest.raises(ValueError, match="code_dim"):
        DVAEConfig(quantizer="vq", code_dim=0)
    m = DVAE(VQ)
    assert m.encoder.blocks.output.conv.out_channels == 4  # a code vector, not 16 logits
    assert m.decoder.blocks.input.in_channels == 4
    assert {"codebook", "ema_count", "ema_sum", "codebook_ready"} <= set(m.state_dict())
    assert "codebook" not in DVAE(DVAEConfig(image_size=16, mults=(1, 2))).state_dict()  # gumbel: no buffers
    assert DVAEConfig.from_dict(VQ.to_dict()) == VQ
    old = {k: v for k, v in VQ.to_dict().items() if k not in ("quantizer", "code_dim")}
    assert DVAEConfig.from_dict(old).quantizer == "gumbel"  # files written before the option


def test_codes_are_the_nearest_codebook_vectors_and_decode_takes_the_fast_path():
    m = _trained_step_model().eval()
    x = _scenes(5, seed=3)
    z = m.encoder(m_map(x))  # (B, D, h, w)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    nearest = ((flat[:, None] - m.codebook[None]) ** 2).sum(-1).argmin(1).reshape(5, 8, 8)
    assert torch.equal(m.encode(x), nearest)
    ids = m.encode(x)
    straight = m.decoder(F.embedding(ids, m.codebook).permute(0, 3, 1, 2))  # vectors through the 1x1 conv
    torch.testing.assert_close(m.decode_stats(ids), straight, atol=1e-5, rtol=1e-5)
    # eval mode and no-grad passes leave the codebook alone
    before = m.codebook.clone()
    m(x)
    with torch.no_grad():
        m.train()(x)
    assert torch.equal(m.codebook, before)


def m_map(x):
    from clipkit.generator.dvae import map_pixels

    return map_pixels(x)


def test_a_training_pass_updates_the_codebook_as_the_ema_rule_says():
    m = _trained_step_model()
    x = _scenes(6, seed=5)
    count, total, cb = m.ema_count.clone(), m.ema_sum.clone(), m.codebook.clone()
    z = m.encoder(m_map(x)).detach()
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    ids = ((flat[:, None] - cb[None]) ** 2).sum(-1).argmin(1)
    # the straightforward computation, code by code
    K = VQ.vocab_size
    new_count = torch.stack([VQ_EMA_DECAY * count[k] + (1 - VQ_EMA_DECAY) * (ids == k).sum() for k in range(K)])
    new_sum = torch.stack([VQ_EMA_DECAY * total[k] + (1 - VQ_EMA_DECAY) * flat[ids == k].sum(0) for k in range(K)])
    n = new_count.sum()
    smoothed = (new_count + 1e-5) / (n + K * 1e-5) * n
    expect = new_sum / smoothed[:, None]
    m(x, generator=torch.Generator().manual_seed(1))
    alive = new_count >= VQ_DEAD_COUNT
    torch.testing.assert_close(m.ema_count[alive], new_count[alive])
    torch.testing.assert_close(m.codebook[alive], expect[alive], atol=1e-5, rtol=1e-4)
    # a dead code restarts on one of this batch's encoder vectors, with a count of 1
    for k in torch.nonzero(~alive).flatten().tolist():
        assert m.ema_count[k] == 1.0
        assert (flat == m.codebook[k]).all(1).any()


def test_dead_codes_restart_on_batch_vectors():
    m = _trained_step_model()
    with torch.no_grad():
        m.ema_count[3] = 0.0  # code 3 starved
        m.codebook[3] = 1e6  # and far from everything
    x = _scenes(4, seed=9)
    m(x, generator=torch.Generator().manual_seed(2))
    flat = m.encoder(m_map(x)).detach().permute(0, 2, 3, 1).reshape(-1, 4)
    assert (flat == m.codebook[3]).all(1).any()
    assert m.ema_count[3] == 1.0


def test_loss_has_reconstruction_plus_commitment():
    m = _trained_step_model()
    x = _scenes(4, seed=4)
    stats, logits = m(x, generator=torch.Generator().manual_seed(0))
    loss, parts = m.loss(x, stats, logits, kl_weight=123.0, commitment=0.5)  # kl_weight does not apply
    assert set(parts) == {"recon", "commit", "mse", "psnr"}
    assert loss.item() == pytest.approx(parts["recon"] + 0.5 * parts["commit"], rel=1e-5)
    # commit is the mean squared distance per component between encoder vectors and their codes
    z = m.encoder(m_map(x)).detach()
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    # (the pass above moved the codebook after assigning; recompute with the logits' own distances)
    assert parts["commit"] == pytest.approx(float(-logits.detach().max(1).values.mean() / 4), rel=1e-6)
    assert parts["commit"] >= 0 and flat.shape[0] == 4 * 64
    loss.backward()  # straight-through: the encoder gets gradients from the reconstruction
    assert m.encoder.blocks.input.weight.grad.abs().sum() > 0


def test_short_vq_training_learns_and_round_trips(tmp_path):
    torch.manual_seed(0)
    data = _scenes(64)
    variance = float(((data - data.mean(0, keepdim=True)) ** 2).mean())
    cfg = DVAEConfig(image_size=16, hidden=16, mults=(1, 2), vocab_size=32, n_init=16, stem_kernel=3,
                     recon_loss="mse", quantizer="vq", code_dim=8)
    model = DVAE(cfg)
    tc = DVAETrainConfig(batch_size=16, lr=1e-2, warmup=5)
    model, hist = train_dvae(model, data, 150, train=tc, out_dir=tmp_path, log_every=30,
                             eval_images=data[:16], log=lambda _: None)
    assert hist[-1]["eval_mse"] < 0.5 * variance, (hist[-1]["eval_mse"], variance)
    assert "temperature" not in hist[-1] and "commit" in hist[-1]
    assert hist[-1]["codes_used"] > 1
    loaded = load_dvae(tmp_path / "dvae.safetensors")
    assert loaded.config == cfg
    assert torch.equal(loaded.encode(data[:4]), model.encode(data[:4]))
    assert torch.equal(loaded.decode(model.encode(data[:4])), model.decode(model.encode(data[:4])))
    assert evaluate_dvae(loaded, data[:16])["mse"] == pytest.approx(evaluate_dvae(model, data[:16])["mse"])


def test_generator_file_keeps_a_vq_dvae(tmp_path):
    from clipkit.generator.generator import Generator
    from clipkit.generator.transformer import DALLETransformer, TransformerConfig

    m = _trained_step_model().eval()
    tr = DALLETransformer(TransformerConfig(text_len=12, text_vocab=256, image_vocab=16, grid_size=8,
                                            width=32, layers=2, heads=2))
    path = Generator(m, tr).save(tmp_path / "g.safetensors")
    g = Generator.load(path)
    assert g.dvae.config.quantizer == "vq"
    assert torch.equal(g.dvae.codebook, m.codebook)
    ids = torch.randint(0, 16, (2, 8, 8))
    assert torch.equal(g.dvae.decode(ids), m.decode(ids))
    save_dvae(m, tmp_path / "d.safetensors")
    assert torch.equal(load_dvae(tmp_path / "d.safetensors").codebook, m.codebook)


def test_bf16_training_option_runs_both_stages_and_rejects_unknown_values():
    from clipkit.generator.transformer import TransformerConfig

    data = _scenes(16)
    with pytest.raises(ValueError, match="precision"):  # the shared skeleton's check
        train_dvae(DVAE(VQ), data, 1, train=DVAETrainConfig(batch_size=4, precision="fp16"), log=lambda _: None)
    torch.manual_seed(0)
    fp32, _ = train_dvae(DVAE(VQ), data, 3, train=DVAETrainConfig(batch_size=4, warmup=1), log=lambda _: None)
    torch.manual_seed(0)
    bf16, hist = train_dvae(DVAE(VQ), data, 3, train=DVAETrainConfig(batch_size=4, warmup=1, precision="bf16"),
                            log=lambda _: None, log_every=1)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in hist)
    w32, w16 = fp32.encoder.blocks.input.weight, bf16.encoder.blocks.input.weight
    assert w16.dtype == torch.float32  # master weights stay fp32
    assert not torch.equal(w32, w16) and torch.allclose(w32, w16, atol=5e-2)  # bf16 rounding, same direction
    from clipkit.generator.transformer import DALLETransformer

    cfg = TransformerConfig(text_len=12, text_vocab=256, image_vocab=16, grid_size=8, width=32, layers=2, heads=2)
    model = DALLETransformer(cfg)
    model.set_text_vocab([*range(100, 100 + cfg.text_vocab - 3), 49406, 49407])
    text = torch.randint(100, 300, (8, 12))
    text[:, 0], text[:, -1] = 49406, 49407
    corpus = {"text": text, "codes": torch.randint(0, 16, (8, 64))}
    _, th = train_transformer(model, corpus, 3, log=lambda _: None, log_every=1,
                              train=TransformerTrainConfig(batch_size=4, warmup=1, precision="bf16"))
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in th)
    assert model.image_head.weight.dtype == torch.float32


def test_train_generator_command_takes_precision_and_refuses_kl_weight_for_vq(tmp_path, capsys):
    from clipkit.cli import main

    out = tmp_path / "run"
    assert main(["train-generator", "--stage", "dvae", "--config", "tiny", "--steps", "2", "--out", str(out),
                 "--precision", "bf16", "--batch-size", "4", "--log-every", "1"]) == 0
    assert (out / "dvae.safetensors").is_file()
    assert "step=2" in (out / "dvae.log").read_text()
    code = main(["train-generator", "--stage", "dvae", "--config", "synth-vq", "--steps", "2",
                 "--out", str(tmp_path / "vq"), "--kl-weight", "0.1"])
    assert code == 2
    assert "--kl-weight applies to the gumbel quantizer" in capsys.readouterr().err
    assert not (tmp_path / "vq").exists()  # refused before the run folder is made
