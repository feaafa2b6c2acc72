"""Diffusion and flow families: DDPM/DDIM/CFG, latent diffusion, DiffuseVAE, flow matching
(CrossFlow), LMD, and the RED-Diff inverse-problem solver."""

from lightning_vi.families.diffusion.ddpm import DDPM
from lightning_vi.families.diffusion.diffusevae import DiffuseVAE
from lightning_vi.families.diffusion.flow_matching import FlowMatching
from lightning_vi.families.diffusion.latent_diffusion import LatentDiffusion
from lightning_vi.families.diffusion.lmd import LMD
from lightning_vi.families.diffusion.red_diff import REDDiffRestorer
from lightning_vi.families.diffusion.red_diff_solver import REDDiff, make_operator
from lightning_vi.families.diffusion.schedules import NoiseSchedule

__all__ = ["DDPM", "DiffuseVAE", "FlowMatching", "LatentDiffusion", "LMD", "REDDiff", "REDDiffRestorer", "make_operator", "NoiseSchedule"]
