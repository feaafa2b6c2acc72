"""Classifier family: a host for regularizer plugins (feature layer + linear head)."""

from lightning_vi.families.classifier.classifier import Classifier

__all__ = ["Classifier"]
