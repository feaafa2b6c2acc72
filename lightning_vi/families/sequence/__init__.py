"""Sequence family: PV-RNN, Koopman VAE, MA-fBM latent SDE, recurrent (token) VAE, video VAE."""

from lightning_vi.families.sequence.fbm_sde import FBMSDE
from lightning_vi.families.sequence.kvae import KoopmanVAE
from lightning_vi.families.sequence.pvrnn import PVRNN
from lightning_vi.families.sequence.rvae import RecurrentVAE
from lightning_vi.families.sequence.video_vae import VideoVAE

__all__ = ["PVRNN", "KoopmanVAE", "FBMSDE", "RecurrentVAE", "VideoVAE"]
