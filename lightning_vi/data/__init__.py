"""LightningDataModules over generated or package-shipped data (never fetched in tests)."""

from lightning_vi.data.base import InMemoryDataModule, TensorDictDataset
from lightning_vi.data.digits import DigitsDataModule, load_digits_tensors
from lightning_vi.data.fbm import FBMDataModule
from lightning_vi.data.episodes import EpisodeDataModule, EpisodeSampler
from lightning_vi.data.glyphs import glyph_data
from lightning_vi.data.files import NpzDataModule, TorchvisionDataModule
from lightning_vi.data.linear import PPCADataModule, ppca_data, ppca_max_loglik
from lightning_vi.data.permuted import PermutedDigitsDataModule
from lightning_vi.data.regression import RegressionDataModule
from lightning_vi.data.sequences import SineSequenceDataModule, sine_mixtures
from lightning_vi.data.sprites import SpritesDataModule, render_sprites, sample_factors
from lightning_vi.data.spurious import SpuriousDigitsDataModule
from lightning_vi.data.tokens import TokenSequenceDataModule
from lightning_vi.data.toys import Toy2DDataModule, sample_toy
from lightning_vi.data.videos import MovingSpritesDataModule

__all__ = [
    "InMemoryDataModule", "TensorDictDataset", "DigitsDataModule", "load_digits_tensors", "NpzDataModule",
    "TorchvisionDataModule", "PPCADataModule", "ppca_data", "ppca_max_loglik", "SineSequenceDataModule",
    "sine_mixtures", "SpritesDataModule", "render_sprites", "sample_factors", "Toy2DDataModule", "sample_toy",
    "FBMDataModule", "RegressionDataModule", "SpuriousDigitsDataModule", "TokenSequenceDataModule",
    "MovingSpritesDataModule", "PermutedDigitsDataModule", "EpisodeDataModule", "EpisodeSampler", "glyph_data",
]
