"""Diffusion tests: one intra-op thread (tiny models on a shared CPU run ~30x faster than with
thread contention)."""

import torch

torch.set_num_threads(1)
