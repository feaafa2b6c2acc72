"""Diagnostics (neural collapse, ...), media, prediction-writing, sequence-family and continual-learning callbacks."""

from lightning_vi.callbacks.images import LatentTraversal, Reconstructions, SampleGrid
from lightning_vi.callbacks.neural_collapse import NeuralCollapse
from lightning_vi.callbacks.media import figure_to_array, log_image, make_grid
from lightning_vi.callbacks.predictions import NpzPredictionWriter
from lightning_vi.callbacks.continual import TaskSequence, task_accuracies
from lightning_vi.callbacks.wandb_run import WandbRunRecord

__all__ = ["SampleGrid", "Reconstructions", "LatentTraversal", "log_image", "make_grid", "figure_to_array", "NpzPredictionWriter",
           "TaskSequence", "task_accuracies", "WandbRunRecord", "NeuralCollapse"]
