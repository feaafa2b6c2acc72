"""Diffusion and flow families: DDPM/DDIM/CFG, latent diffusion, DiffuseVAE, flow matching
(CrossFlow), LMD, the RED-Diff inverse-problem solver, VQ-Diffusion and DDMI."""

from lightning_vi.families.diffusion.ddmi import DDMI, D2CVAE
from lightning_vi.families.diffusion.ddpm import DDPM
from lightning_vi.families.diffusion.diffusevae import DiffuseVAE
from lightning_vi.families.diffusion.flow_matching import FlowMatching
from lightning_vi.families.diffusion.latent_diffusion import LatentDiffusion
from lightning_vi.families.diffusion.lmd import LMD
from lightning_vi.families.diffusion.red_diff import REDDiffRestorer
from lightning_vi.families.diffusion.red_diff_solver import REDDiff, make_operator
from lightning_vi.families.diffusion.schedules import NoiseSchedule
from lightning_vi.families.diffusion.vq_diffusion import VQDiffusion

__all__ = ["DDPM", "DiffuseVAE", "FlowMatching", "LatentDiffusion", "LMD", "REDDiff", "REDDiffRestorer", "make_operator", "NoiseSchedule",
           "VQDiffusion", "DDMI", "D2CVAE"]
