"""video_vae (OD-VAE): PSNR at 8x compression on moving sprites; chunked decoding equals full decoding."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from helpers import quiet_trainer
from lightning_vi.data.videos import MovingSpritesDataModule, moving_sprites
from lightning_vi.families.sequence.video_vae import VideoVAE, psnr
from lightning_vi.registry import FAMILIES


def test_reconstruction_psnr_at_compression():
    L.seed_everything(0)
    d = moving_sprites(144, 8, 16, torch.Generator().manual_seed(0))
    train, test = d["x"][:128], d["x"][128:]
    m = VideoVAE(frames=8, image_size=16, time_factor=2, space_factor=4, latent_channels=4, channels=16)
    assert m.compression == 8.0
    opt = torch.optim.Adam(m.parameters(), lr=5e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(120):
        out = m.objective({"x": train[torch.randint(0, 128, (16,), generator=g)]})
        loss = out["recon"] + 1e-3 * out["kl"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    with torch.no_grad():
        score = psnr(m(test), test)
    blank = psnr(torch.zeros_like(test), test)  # 13.9 dB: predicting an empty frame
    assert score > 18.0 and score > blank + 4, (float(score), float(blank))


@pytest.mark.parametrize("chunk", [1, 3])
def test_chunked_decoding_equals_full(chunk):
    torch.manual_seed(0)
    m = VideoVAE(frames=16, image_size=16, time_factor=4, space_factor=2, channels=8).eval()
    z = torch.randn(2, 4, 5, 8, 8)  # any number of latent frames
    with torch.no_grad():
        assert torch.allclose(m.decode(z), m.decode(z, chunk=chunk), atol=1e-6)


def test_bad_shapes():
    with pytest.raises(ValueError, match="frames=7 is not divisible by time_factor=2"):
        VideoVAE(frames=7, time_factor=2)
    with pytest.raises(ValueError, match="height=18 is not divisible by space_factor=4"):
        VideoVAE(image_size=18, space_factor=4)
    with pytest.raises(ValueError, match="power of 2"):
        VideoVAE(time_factor=3, frames=9)
    m = VideoVAE()
    with pytest.raises(ValueError, match="frames=5 is not divisible"):
        m.encode(torch.zeros(1, 1, 5, 16, 16))


def test_registered_trains_and_reloads(tmp_path):
    assert FAMILIES.get("video_vae") is VideoVAE
    L.seed_everything(0)
    dm = MovingSpritesDataModule(n=40, frames=4, image_size=8, batch_size=16)
    m = VideoVAE(frames=4, image_size=8, time_factor=2, space_factor=2, channels=8)
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(m, dm)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    m2 = VideoVAE.load_from_checkpoint(path)
    x = dm.splits["val"]["x"]
    with torch.no_grad():
        assert torch.equal(m.eval()(x), m2.eval()(x))
