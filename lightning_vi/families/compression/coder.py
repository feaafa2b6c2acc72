"""A real entropy coder for the quantised latents: range coding with ``constriction`` (Bamler 2022).

What is coded, exactly: the integer latents ``y_hat [B, M, d]`` (clipped to ``[-R, R]``), dimension by
dimension. Symbol ``y_hat[b, m, i]`` is coded with the categorical distribution over the support
``{-R, ..., R}`` given by the prior's conditional ``P(y_i | y_<i)`` (:meth:`VectorPrior.conditional_pmf`:
the mixture's chain-rule conditional, exact for the model's pmf). The product of the conditionals is the
model's ``P(y_hat)``, so the file length is the estimated rate plus the range coder's fixed-point loss and
its final flush (a few words) plus the 16-byte header.

Both sides compute the same float64 tables with the same calls (the decoder sees exactly the prefix the
encoder saw), which the range coder needs to be invertible. ``constriction`` gives every symbol of the
support a nonzero probability, so no value in ``[-R, R]`` is uncodable.

File layout (little endian): ``b"LVIC"``, version ``u8``, prior tag ``u8``, ``R`` as ``u16``, number of
images ``u32``, number of payload words ``u32``, then the payload (``u32`` words).
"""

from __future__ import annotations

import struct

import numpy as np
import torch
from torch import Tensor

from lightning_vi.registry import require

MAGIC, VERSION = b"LVIC", 1
HEADER = struct.Struct("<4sBBHII")
PRIOR_TAGS = {"factorized": 0, "mvgm": 1}


class BitstreamError(ValueError):
    """The bytes are not a bitstream of this model (magic, version, prior or length mismatch)."""


def _constriction():
    return require("constriction", "compression_vae (entropy coding)")


def _tables(prior, prefix: Tensor, support: Tensor) -> np.ndarray:
    pmf = prior.conditional_pmf(prefix, support)  # [B, M, S]
    return pmf.reshape(-1, support.numel()).cpu().numpy().astype(np.float64)


@torch.no_grad()
def encode_latents(prior, y_hat: Tensor, max_abs: int) -> np.ndarray:
    """Range-code integer latents ``y_hat [B, M, d]`` (values in ``[-max_abs, max_abs]``); returns ``u32`` words."""
    c = _constriction()
    if y_hat.abs().max() > max_abs:
        raise ValueError(f"latent values must lie in [-{max_abs}, {max_abs}] (max_abs_latent); got max |y| = "
                         f"{int(y_hat.abs().max())}")
    y = y_hat.double()
    support = torch.arange(-max_abs, max_abs + 1, dtype=torch.float64, device=y.device)
    family = c.stream.model.Categorical(perfect=False)
    encoder = c.stream.queue.RangeEncoder()
    for i in range(y.shape[-1]):
        probs = _tables(prior, y[..., :i], support)
        symbols = (y[..., i].reshape(-1) + max_abs).to(torch.int64).cpu().numpy().astype(np.int32)
        encoder.encode(symbols, family, probs)
    return encoder.get_compressed()


@torch.no_grad()
def decode_latents(prior, words: np.ndarray, batch: int, max_abs: int, device: torch.device | str = "cpu") -> Tensor:
    """Inverse of :func:`encode_latents`: ``[batch, M, d]`` integer-valued float64 latents."""
    c = _constriction()
    m, d = prior.group_shape
    support = torch.arange(-max_abs, max_abs + 1, dtype=torch.float64, device=device)
    family = c.stream.model.Categorical(perfect=False)
    decoder = c.stream.queue.RangeDecoder(np.ascontiguousarray(words, dtype=np.uint32))
    y = torch.zeros(batch, m, 0, dtype=torch.float64, device=device)
    for _ in range(d):
        probs = _tables(prior, y, support)
        symbols = decoder.decode(family, probs)
        col = torch.as_tensor(symbols.astype(np.int64), device=device).double().view(batch, m, 1) - max_abs
        y = torch.cat([y, col], -1)
    return y


def pack(words: np.ndarray, prior_kind: str, max_abs: int, batch: int) -> bytes:
    """Header + payload bytes of one bitstream."""
    words = np.ascontiguousarray(words, dtype="<u4")
    return HEADER.pack(MAGIC, VERSION, PRIOR_TAGS[prior_kind], max_abs, batch, words.size) + words.tobytes()


def unpack(data: bytes, prior_kind: str, max_abs: int) -> tuple[np.ndarray, int]:
    """Check the header against the model; return (payload words, number of images)."""
    if len(data) < HEADER.size:
        raise BitstreamError(f"bitstream has {len(data)} bytes; a header alone has {HEADER.size}")
    magic, version, tag, r, batch, n_words = HEADER.unpack_from(data)
    if magic != MAGIC or version != VERSION:
        raise BitstreamError(f"not a lightning-vi compression bitstream (magic {magic!r}, version {version}); "
                             f"expected {MAGIC!r} version {VERSION}")
    kinds = {v: k for k, v in PRIOR_TAGS.items()}
    if tag != PRIOR_TAGS[prior_kind] or r != max_abs:
        raise BitstreamError(f"bitstream was written with prior={kinds.get(tag, tag)!r}, max_abs_latent={r}; "
                             f"this model has prior={prior_kind!r}, max_abs_latent={max_abs}")
    if len(data) != HEADER.size + 4 * n_words:
        raise BitstreamError(f"bitstream has {len(data)} bytes; its header announces {HEADER.size + 4 * n_words}")
    return np.frombuffer(data, dtype="<u4", offset=HEADER.size).astype(np.uint32), batch
