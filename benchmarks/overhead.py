"""Framework overhead: epoch time of a VAE through ``lvi``'s module and Trainer vs a plain PyTorch loop.

Two models, each on scikit-learn digits with batch size 128 and Adam (issue 13's measurement):

- ``tiny``: MLP VAE 64-256-256-16, Bernoulli, digits at 8x8 (about 1 ms of compute a step, so any
  per-step framework cost shows);
- ``conv``: the quickstart conv VAE ([32, 64] channels, latent 8, Bernoulli, digits at 16x16).

Three runs per model over the same data loader, model class, optimizer and number of epochs:

- ``plain``: a hand-written loop calling the family's ``objective`` (no Lightning);
- ``bare``: a minimal ``LightningModule`` wrapping the same network, ``training_step`` returns the loss
  and logs nothing: Lightning's own loop, the floor for any Lightning framework;
- ``lvi``: the registered family through ``Trainer`` as users run it (progress bar on, every term
  logged, plugins hooks, finiteness check).

Each run is timed over ``--epochs`` epochs after one warm-up epoch; runs alternate ``--repeats`` times so
background load hits all alike; ratios compare the fastest epochs (load only adds time). With
``--clock cpu`` the clock is this process's CPU time (robust on a shared machine with ``--threads 1``).

    python benchmarks/overhead.py --threads 1 --clock cpu      # -> results/overhead.json
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

MODELS = {
    "tiny": dict(image_size=8, kwargs=dict(input_shape=[1, 8, 8], latent_dim=16, architecture="mlp",
                                           hidden_dims=[256, 256], likelihood="bernoulli", lr=1e-3),
                 description="MLP VAE 64-256-256-16, Bernoulli, digits 8x8"),
    "conv": dict(image_size=16, kwargs=dict(input_shape=[1, 16, 16], latent_dim=8, architecture="conv",
                                            channels=[32, 64], likelihood="bernoulli", lr=2e-3),
                 description="VAE conv [32, 64], latent 8, Bernoulli, digits 16x16 (the quickstart)"),
}
TARGETS = {"tiny": 1.3, "conv": 1.05}
CLOCK = time.perf_counter


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


class Bare(L.LightningModule):
    """The same network and loss with nothing of ours around it: Lightning's own per-step cost."""

    def __init__(self, vae: VAE) -> None:
        super().__init__()
        self.vae = vae

    def training_step(self, batch, batch_idx):
        out = self.vae.objective(batch)
        return out["recon"] + self.vae.beta * out["kl"]

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=self.vae.hparams.lr)


def _trainer(epochs: int, device: str, precision: str, timer: EpochTimer) -> L.Trainer:
    return L.Trainer(accelerator=device, devices=1, max_epochs=epochs + 1, logger=False, precision=precision,
                     enable_checkpointing=False, enable_progress_bar=True, enable_model_summary=False,
                     num_sanity_val_steps=0, limit_val_batches=0, callbacks=[timer])


def lightning_epochs(model: str, dm, epochs: int, device: str, precision: str, bare: bool) -> list[float]:
    L.seed_everything(0, verbose=False)
    timer = EpochTimer(device)
    net = VAE(**MODELS[model]["kwargs"])
    _trainer(epochs, device, precision, timer).fit(Bare(net) if bare else net, dm)
    return timer.times[1:]


def plain_epochs(model: str, dm, epochs: int, device: str, precision: str) -> list[float]:
    L.seed_everything(0, verbose=False)
    net = VAE(**MODELS[model]["kwargs"]).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=net.hparams.lr)
    loader = dm.train_dataloader()
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    times = []
    net.train()
    for _ in range(epochs + 1):
        _sync(device)
        t = CLOCK()
        for batch in loader:
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with autocast:
                out = net.objective(batch)
                loss = out["recon"] + net.beta * out["kl"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        _sync(device)
        times.append(CLOCK() - t)
    return times[1:]


def run(model: str, epochs: int, repeats: int, device: str = "cpu", precision: str = "32-true") -> dict:
    spec = MODELS[model]
    dm = DigitsDataModule(image_size=spec["image_size"], batch_size=128)
    dm.setup()
    times: dict[str, list[float]] = {"plain": [], "bare": [], "lvi": []}
    for _ in range(repeats):
        times["plain"] += plain_epochs(model, dm, epochs, device, precision)
        times["bare"] += lightning_epochs(model, dm, epochs, device, precision, bare=True)
        times["lvi"] += lightning_epochs(model, dm, epochs, device, precision, bare=False)
    best = {k: min(v) for k, v in times.items()}
    steps = len(dm.train_dataloader())
    return {
        "model": spec["description"], "steps_per_epoch": steps,
        "epoch_s": {k: {"min": min(v), "median": statistics.median(v)} for k, v in times.items()},
        "ms_per_step_min": {k: 1e3 * v / steps for k, v in best.items()},
        "ratio_lvi_vs_plain": best["lvi"] / best["plain"],
        "ratio_bare_lightning_vs_plain": best["bare"] / best["plain"],
        "ratio_lvi_vs_bare_lightning": best["lvi"] / best["bare"],
        "ratio_of_medians_lvi_vs_plain": statistics.median(times["lvi"]) / statistics.median(times["plain"]),
        "target_ratio_lvi_vs_plain": TARGETS[model],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["tiny", "conv"])
    ap.add_argument("--epochs", type=int, default=None, help="timed epochs per run (default: tiny 20, conv 5)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--accelerator", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--precision", choices=["32-true", "bf16-mixed"], default="32-true")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: process CPU time, for 1-thread runs on a busy machine (not with --accelerator cuda)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "overhead.json"))
    args = ap.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
    result = {
        "benchmark": "overhead", "clock": args.clock, "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if args.accelerator == "cuda" else "cpu", "precision": args.precision,
        "batch_size": 128, "optimizer": "Adam", "progress_bar": True,
        "torch": torch.__version__, "lightning": L.__version__, "machine": platform.processor() or platform.machine(),
        "models": {},
    }
    for m in args.models:
        epochs = args.epochs or (20 if m == "tiny" else 5)
        result["models"][m] = run(m, epochs, args.repeats, args.accelerator, args.precision)
        print(json.dumps({m: result["models"][m]}, indent=2), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
