"""Control families: RePo (reconstruction-free latent world model with a KL constraint, P23)."""

from lightning_vi.families.control.repo import RePo, align_encoder, check_trajectories, support_loss

__all__ = ["RePo", "align_encoder", "check_trajectories", "support_loss"]
