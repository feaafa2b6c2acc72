"""Bad input to the sequence family: each error names the offending value and what is allowed."""

from __future__ import annotations

import pytest
import torch

from lightning_vi.data.fbm import FBMDataModule, fbm_paths
from lightning_vi.data.videos import moving_sprites
from lightning_vi.families.sequence import FBMSDE, PVRNN, KoopmanVAE, RecurrentVAE, VideoVAE
from lightning_vi.families.sequence._common import sequence_batch, stack_sequences
from lightning_vi.families.sequence.fbm_sde import approximation_error, optimal_weights, ou_rates


def _families():
    return {
        "pvrnn": (PVRNN(n_sequences=4, max_length=8, d_sizes=[4], z_sizes=[1], taus=[2.0]), torch.float32),
        "kvae": (KoopmanVAE(hidden=8), torch.float32),
        "fbm_sde": (FBMSDE(dt=0.1, gamma_max=10.0, hidden=8, context_dim=4), torch.float32),
        "rvae": (RecurrentVAE(vocab_size=8, hidden=8, embed_dim=4), torch.long),
    }


def _seq(length: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.ones(length, dtype=dtype) if dtype == torch.long else torch.linspace(0, 1, length)[:, None]


@pytest.mark.parametrize("name", ["pvrnn", "kvae", "fbm_sde", "rvae"])
def test_mismatched_lengths_need_a_mask(name):
    model, dtype = _families()[name]
    seqs = [_seq(5, dtype), _seq(7, dtype)]
    with pytest.raises(ValueError, match=r"mismatched lengths \[5, 7\] and no mask"):
        model.objective({"x": seqs})
    mask = torch.tensor([[1.0] * 5 + [0.0] * 2, [1.0] * 7])
    out = model.objective({"x": seqs, "mask": mask})  # padded and masked: accepted
    assert all(torch.isfinite(v).all() for k, v in out.items() if k in model.term_weights)
    # times or mask whose length differs from x
    x = torch.stack([_seq(4, dtype)] * 2)
    with pytest.raises(ValueError, match=r"batch\['t'\] has shape \(2, 3\) but x has 4 time steps"):
        model.objective({"x": x, "t": torch.tensor([[0.1, 0.2, 0.3]] * 2)})
    with pytest.raises(ValueError, match=r"batch\['mask'\] has shape \(2, 3\); expected \(2, 4\)"):
        model.objective({"x": x, "mask": torch.ones(2, 3)})


@pytest.mark.parametrize("name", ["pvrnn", "kvae", "fbm_sde", "rvae"])
@pytest.mark.parametrize("times,msg", [
    ([0.1, 0.2, 0.2, 0.3], r"sequence 1 has t\[1\]=0.2 then t\[2\]=0.2"),
    ([0.1, 0.3, 0.2, 0.4], r"sequence 1 has t\[1\]=0.3 then t\[2\]=0.2"),
])
def test_times_must_increase(name, times, msg):
    model, dtype = _families()[name]
    x = torch.stack([_seq(4, dtype)] * 2)
    t = torch.tensor([[0.1, 0.2, 0.3, 0.4], times])
    with pytest.raises(ValueError, match="strictly increasing.*" + msg):
        model.objective({"x": x, "t": t})


def test_stack_sequences_names_the_lengths():
    with pytest.raises(ValueError, match=r"mismatched lengths \[3, 3, 2\]"):
        stack_sequences([torch.zeros(3), torch.zeros(3), torch.zeros(2)])
    x, mask = stack_sequences([torch.ones(3), torch.ones(2)], pad=True)
    assert mask.tolist() == [[1, 1, 1], [1, 1, 0]] and x.sum() == 5
    x, t, m = sequence_batch({"x": torch.zeros(2, 3, 1), "t": torch.tensor([0.0, 0.5, 2.0])})  # shared 1-D grid
    assert t.shape == (2, 3) and m.sum() == 6


@pytest.mark.parametrize("hurst", [0.0, 1.0, -0.2, 1.5, float("nan")])
def test_hurst_outside_unit_interval(hurst):
    msg = rf"hurst={hurst!r} is out of range; allowed: \(0.0, 1.0\)"
    with pytest.raises(ValueError, match=msg):
        FBMSDE(hurst=hurst)
    with pytest.raises(ValueError, match=msg):
        fbm_paths(2, 4, hurst, torch.Generator())
    with pytest.raises(ValueError, match=msg):
        FBMDataModule(hurst=hurst)
    with pytest.raises(ValueError, match=msg):
        optimal_weights(hurst, ou_rates(3))
    with pytest.raises(ValueError, match=msg):
        approximation_error(hurst, ou_rates(3))


def test_video_shape_not_divisible_by_compression():
    with pytest.raises(ValueError, match=r"video frames=6 is not divisible by time_factor=4; allowed: multiples of 4"):
        VideoVAE(frames=6, time_factor=4)
    with pytest.raises(ValueError, match=r"video height=12 is not divisible by space_factor=8"):
        VideoVAE(image_size=12, space_factor=8)
    with pytest.raises(ValueError, match=r"time_factor=3 is not allowed; use a power of 2"):
        VideoVAE(frames=9, time_factor=3)
    m = VideoVAE(frames=8, image_size=16, time_factor=2, space_factor=4, channels=4)
    video = moving_sprites(2, 8, 16, torch.Generator().manual_seed(0))["x"]
    assert torch.isfinite(m.objective({"x": video})["recon"])
    with pytest.raises(ValueError, match=r"video frames=7 is not divisible by time_factor=2"):
        m.objective({"x": video[:, :, :7]})
    with pytest.raises(ValueError, match=r"video width=14 is not divisible by space_factor=4"):
        m.objective({"x": video[..., :14]})
    with pytest.raises(ValueError, match=r"video batch has shape \(2, 8, 16, 16\); expected \[B, C, T, H, W\]"):
        m.objective({"x": video[:, 0]})
