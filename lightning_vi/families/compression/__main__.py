"""Write and read real bitstreams with a trained ``compression_vae`` checkpoint.

    python -m lightning_vi.families.compression compress --ckpt last.ckpt --digits test --out digits.lvic
    python -m lightning_vi.families.compression compress --ckpt last.ckpt --images x.npy --out x.lvic
    python -m lightning_vi.families.compression decompress --ckpt last.ckpt --in digits.lvic --out recon.npy

``--images`` takes a ``.npy`` or ``.pt`` array ``[N, C, H, W]`` in ``[0, 1]``; ``--digits`` takes a split
(``train``/``val``/``test``) of ``DigitsDataModule`` with the given ``--seed`` and ``--test-fraction``.
``compress`` prints the file size, the bits per pixel of the file and the model's estimate.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch


def _load_images(args: argparse.Namespace, image_size: int) -> torch.Tensor:
    if args.images:
        path = Path(args.images)
        x = torch.load(path) if path.suffix == ".pt" else torch.from_numpy(np.load(path))
        return x.float()
    from lightning_vi.data.digits import DigitsDataModule

    dm = DigitsDataModule(image_size=image_size, seed=args.seed, test_fraction=args.test_fraction)
    dm.setup()
    if args.digits not in dm.splits:
        raise ValueError(f"--digits {args.digits!r} is not a split; choose one of {sorted(dm.splits)}")
    return dm.splits[args.digits]["x"]


def main(argv: list[str] | None = None) -> dict:
    from lightning_vi.families.compression.model import CompressionVAE

    parser = argparse.ArgumentParser(prog="python -m lightning_vi.families.compression", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    enc = sub.add_parser("compress", help="images -> bitstream file")
    enc.add_argument("--ckpt", required=True)
    src = enc.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", help=".npy or .pt array [N, C, H, W] in [0, 1]")
    src.add_argument("--digits", help="a DigitsDataModule split: train, val or test")
    enc.add_argument("--seed", type=int, default=0)
    enc.add_argument("--test-fraction", type=float, default=0.1)
    enc.add_argument("--out", required=True)
    dec = sub.add_parser("decompress", help="bitstream file -> reconstructions (.npy)")
    dec.add_argument("--ckpt", required=True)
    dec.add_argument("--in", dest="inp", required=True)
    dec.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    model = CompressionVAE.load_from_checkpoint(args.ckpt, map_location="cpu").eval()
    if args.command == "compress":
        x = _load_images(args, model.input_shape[-1])
        data = model.compress(x)
        Path(args.out).write_bytes(data)
        pixels = x.shape[0] * model.num_pixels
        info = {"file": args.out, "images": int(x.shape[0]), "bytes": len(data),
                "bpp_file": 8 * len(data) / pixels, "bpp_estimate": model.estimated_bits(x) / pixels}
    else:
        y_hat, x_hat = model.decompress(Path(args.inp).read_bytes())
        np.save(args.out, x_hat.cpu().numpy())
        info = {"file": args.out, "images": int(x_hat.shape[0]), "latent_shape": list(y_hat.shape)}
    print(json.dumps(info))
    return info


if __name__ == "__main__":
    main()
