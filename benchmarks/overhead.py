"""Framework overhead: epoch time of the quickstart conv VAE through Lightning vs a plain PyTorch loop.

Same model class, data (digits at 16x16), batch size 128, optimizer (Adam), data loader and number of
epochs; each timed over ``--epochs`` epochs after one warm-up epoch, alternating the two runs
``--repeats`` times; the ratio compares the fastest epochs (background load only adds time). Writes JSON (default benchmarks/results/overhead.json).

    python benchmarks/overhead.py --epochs 6 --repeats 3 --threads 1   # -> results/overhead_1t.json
    python benchmarks/overhead.py --accelerator cuda --precision bf16-mixed --batch-size 512  # on a GPU

On a GPU both loops move each batch to the device and synchronise before reading the clock; the
plain loop uses ``torch.autocast`` for ``bf16-mixed`` as Lightning's precision plugin does.
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


CLOCK = time.perf_counter  # --clock cpu: this process's CPU time (robust to other load on a shared machine)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class EpochTimer(L.Callback):
    def __init__(self, device: str) -> None:
        self.times: list[float] = []
        self.device = device

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        _sync(self.device)
        self._t = CLOCK()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        _sync(self.device)
        self.times.append(CLOCK() - self._t)


def lightning_epochs(dm: DigitsDataModule, epochs: int, device: str = "cpu", precision: str = "32-true") -> list[float]:
    L.seed_everything(0, verbose=False)
    timer = EpochTimer(device)
    trainer = L.Trainer(accelerator=device, devices=1, max_epochs=epochs + 1, logger=False, precision=precision,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[timer])
    trainer.fit(make_model(), dm)
    return timer.times[1:]


def plain_epochs(dm: DigitsDataModule, epochs: int, device: str = "cpu", precision: str = "32-true") -> list[float]:
    L.seed_everything(0, verbose=False)
    model = make_model().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    loader = dm.train_dataloader()
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    times = []
    model.train()
    for epoch in range(epochs + 1):
        _sync(device)
        t = CLOCK()
        for batch in loader:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with autocast:
                out = model.objective(batch)
                loss = out["recon"] + model.beta * out["kl"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        _sync(device)
        times.append(CLOCK() - t)
    return times[1:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--accelerator", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--precision", choices=["32-true", "bf16-mixed"], default="32-true")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: process CPU time, for 1-thread runs on a busy machine (not with --accelerator cuda)")
    ap.add_argument("--out", default=None, help="default: benchmarks/results/overhead_<threads>t.json")
    args = ap.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
    tag = f"{torch.get_num_threads()}t" + ("_cpuclock" if args.clock == "cpu" else "") if args.accelerator == "cpu" else f"cuda_{args.precision}"
    out = args.out or str(Path(__file__).parent / "results" / f"overhead_{tag}.json")
    result = run(args.epochs, args.repeats, args.accelerator, args.precision, args.batch_size)
    result["clock"] = args.clock
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


def run(epochs: int, repeats: int, device: str = "cpu", precision: str = "32-true", batch_size: int = 128) -> dict:
    """Alternate plain and Lightning runs ``repeats`` times; return the timing summary."""
    dm = DigitsDataModule(image_size=16, batch_size=batch_size)
    dm.setup()
    lit, plain = [], []
    for _ in range(repeats):  # alternate, so background load hits both alike
        plain += plain_epochs(dm, epochs, device, precision)
        lit += lightning_epochs(dm, epochs, device, precision)
    return {
        "benchmark": "overhead",
        "model": "VAE conv [32, 64], latent 8, Bernoulli, digits 16x16",
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "precision": precision,
        "batch_size": batch_size, "steps_per_epoch": len(dm.train_dataloader()),
        "plain_epoch_s": {"min": min(plain), "median": statistics.median(plain)},
        "lightning_epoch_s": {"min": min(lit), "median": statistics.median(lit)},
        # Noise on a shared machine only adds time, so the ratio of the fastest epochs is the overhead.
        "ratio": min(lit) / min(plain), "ratio_of_medians": statistics.median(lit) / statistics.median(plain),
        "target_ratio": 1.05,
        "torch": torch.__version__, "lightning": L.__version__, "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
    }


if __name__ == "__main__":
    main()
