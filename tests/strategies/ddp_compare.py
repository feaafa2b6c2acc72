"""Train one small MLP autoencoder on digits with plain DDP and with a compressed strategy, on 2 CPU processes.

Usage: ``python ddp_compare.py OUT.json --seed 0 --steps 300 --strategy ddp_topk``. The parent starts two
worker processes (RANK/LOCAL_RANK/WORLD_SIZE set, so Lightning creates no processes itself); each worker
runs both Trainers in turn in the same process group. Rank 0 writes the JSON: final full-data MSE of each
run, the bytes the compressed hook sent, and plain DDP's bytes counted as the full gradient per step.
"""

import argparse
import json
import os
import socket
import subprocess
import sys


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(args) -> None:
    import lightning as L
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    import lightning_vi  # noqa: F401  (registers ddp_topk / ddp_randk)
    from lightning_vi.data.digits import load_digits_tensors

    data = load_digits_tensors()
    x, y = data["x"].flatten(1), data["y"]

    class AE(L.LightningModule):
        def __init__(self):
            super().__init__()
            if args.hidden:
                self.net = nn.Sequential(nn.Linear(64, args.hidden), nn.Tanh(), nn.Linear(args.hidden, args.code),
                                         nn.Linear(args.code, args.hidden), nn.Tanh(), nn.Linear(args.hidden, 64))
            else:  # linear autoencoder: its optimum is the PCA reconstruction error
                self.net = nn.Sequential(nn.Linear(64, args.code), nn.Linear(args.code, 64))
            if args.task == "classify":
                self.net = nn.Sequential(nn.Linear(64, args.hidden), nn.Tanh(), nn.Linear(args.hidden, 10)) \
                    if args.hidden else nn.Linear(64, 10)

        def loss(self, xb, yb):
            if args.task == "classify":
                l2 = sum((p ** 2).sum() for p in self.parameters())
                return nn.functional.cross_entropy(self.net(xb), yb) + args.wd * l2
            return ((self.net(xb) - xb) ** 2).mean()

        def training_step(self, batch, batch_idx):
            loss = self.loss(*batch)
            self.log("train/loss", loss)
            return loss

        def configure_optimizers(self):
            if args.opt == "sgd":
                return torch.optim.SGD(self.parameters(), lr=args.lr, momentum=args.momentum)
            return torch.optim.Adam(self.parameters(), lr=args.lr)

    results = {}
    for name in ("ddp", args.strategy):
        L.seed_everything(args.seed, verbose=False)
        model = AE()
        loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True, drop_last=True)
        strategy = name
        if name != "ddp" and args.error_feedback is not None:  # e.g. ddp_randk with error feedback (unscaled Rand-k)
            from lightning.pytorch.strategies import StrategyRegistry

            strategy = StrategyRegistry[name]["strategy"](error_feedback=args.error_feedback == "on")
        trainer = L.Trainer(accelerator="cpu", devices=2, strategy=strategy, max_steps=args.steps, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            use_distributed_sampler=True, max_epochs=-1)
        trainer.fit(model, loader)
        with torch.no_grad():
            mse = float(model.loss(x, y))
        n_params = sum(p.numel() for p in model.parameters())
        state = getattr(trainer.strategy, "compression", None)
        results[name] = {
            "mse": mse,
            "steps": trainer.global_step,
            "dense_bytes": trainer.global_step * n_params * 4,  # plain DDP: the full float32 gradient per step
            "bytes_sent": state.bytes_sent_total if state is not None else None,
            "logged_comm_bytes": float(trainer.callback_metrics.get("train/comm_bytes", float("nan"))),
        }
    if int(os.environ["RANK"]) == 0:
        with open(args.out, "w") as f:
            json.dump(results, f)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--strategy", default="ddp_topk")
    p.add_argument("--hidden", type=int, default=0)
    p.add_argument("--task", default="classify", choices=["classify", "autoencode"])
    p.add_argument("--wd", type=float, default=1e-2)
    p.add_argument("--opt", default="adam", choices=["adam", "sgd"])
    p.add_argument("--momentum", type=float, default=0.0)
    p.add_argument("--code", type=int, default=8)
    p.add_argument("--error-feedback", choices=["on", "off"], default=None, help="default: the strategy's own")
    p.add_argument("--worker", action="store_true")
    args = p.parse_args()
    if args.worker:
        _worker(args)
        return
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", NODE_RANK="0",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port, OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, __file__, *sys.argv[1:], "--worker"], env=env))
    codes = [proc.wait() for proc in procs]
    sys.exit(max(codes))


if __name__ == "__main__":
    main()
