"""Registered regularizer plugins; see ``base.py`` for the contract and the ordering rules."""

from lightning_vi.plugins.base import Plugin

__all__ = ["Plugin"]
