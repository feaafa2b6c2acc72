"""Framework overhead: epoch time of the quickstart conv VAE through Lightning vs a plain PyTorch loop.

Same model class, data (digits at 16x16), batch size 128, optimizer (Adam), data loader and number of
epochs; each timed over ``--epochs`` epochs after one warm-up epoch, alternating the two runs
``--repeats`` times; the ratio compares the fastest epochs (background load only adds time). Writes JSON (default benchmarks/results/overhead.json).

    python benchmarks/overhead.py --epochs 6 --repeats 3 --threads 1   # -> results/overhead_1t.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import lightning as L
import torch

from lightning_vi.data import DigitsDataModule
from lightning_vi.families.vae import VAE


def make_model() -> VAE:
    return VAE(input_shape=[1, 16, 16], latent_dim=8, architecture="conv", conv_channels=[32, 64],
               likelihood="bernoulli", lr=2e-3)


class EpochTimer(L.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._t = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.times.append(time.perf_counter() - self._t)


def lightning_epochs(dm: DigitsDataModule, epochs: int) -> list[float]:
    L.seed_everything(0, verbose=False)
    timer = EpochTimer()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=epochs + 1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[timer])
    trainer.fit(make_model(), dm)
    return timer.times[1:]


def plain_epochs(dm: DigitsDataModule, epochs: int) -> list[float]:
    L.seed_everything(0, verbose=False)
    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    loader = dm.train_dataloader()
    times = []
    model.train()
    for epoch in range(epochs + 1):
        t = time.perf_counter()
        for batch in loader:
            out = model.objective(batch)
            loss = out["recon"] + model.beta * out["kl"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t)
    return times[1:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--out", default=None, help="default: benchmarks/results/overhead_<threads>t.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out or str(Path(__file__).parent / "results" / f"overhead_{torch.get_num_threads()}t.json")
    dm = DigitsDataModule(image_size=16, batch_size=128)
    dm.setup()
    lit, plain = [], []
    for _ in range(args.repeats):  # alternate, so background load hits both alike
        plain += plain_epochs(dm, args.epochs)
        lit += lightning_epochs(dm, args.epochs)
    result = {
        "benchmark": "overhead",
        "model": "VAE conv [32, 64], latent 8, Bernoulli, digits 16x16",
        "batch_size": 128, "steps_per_epoch": len(dm.train_dataloader()),
        "plain_epoch_s": {"min": min(plain), "median": statistics.median(plain)},
        "lightning_epoch_s": {"min": min(lit), "median": statistics.median(lit)},
        # Noise on a shared machine only adds time, so the ratio of the fastest epochs is the overhead.
        "ratio": min(lit) / min(plain), "ratio_of_medians": statistics.median(lit) / statistics.median(plain),
        "target_ratio": 1.05,
        "torch": torch.__version__, "lightning": L.__version__, "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
