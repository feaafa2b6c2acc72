"""GPU check: every config trains in bf16-mixed on one CUDA device, bf16 agrees with fp32, checkpoints move to CPU.

Run on a machine with a GPU (CI has none; results are committed as JSON):

    python benchmarks/gpu_check.py --out benchmarks/results/gpu_check.json

1. Each config in ``configs/`` without ``# requires:`` runs ``lvi fit`` in-process with
   ``accelerator=gpu, precision=bf16-mixed`` for ``--steps`` steps; the logged ``train/loss`` must be finite.
2. The quickstart conv VAE trains ``--epochs`` epochs in fp32 and in bf16-mixed from the same seed; the
   validation ELBO of the two must agree within 2% (bf16 autocast must not change what is learned).
3. The bf16 checkpoint reloads on CPU (``map_location="cpu"``) and reconstructs like the GPU model (fp32 eval).
4. Framework overhead on the GPU (benchmarks/overhead.py's plain loop vs Lightning), fp32 and bf16.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def check_configs(steps: int, accelerator: str = "gpu") -> dict:
    from lightning_vi.cli import build_cli

    results = {}
    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        if "# requires:" in path.read_text():
            continue
        name = str(path.relative_to(ROOT / "configs"))
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            try:
                cli = build_cli(["fit", "--config", str(path), "--trainer.accelerator", accelerator, "--trainer.devices", "1",
                                 "--trainer.precision", "bf16-mixed", "--trainer.max_steps", str(steps),
                                 "--trainer.limit_val_batches", "2", "--trainer.logger", "false",
                                 "--trainer.enable_progress_bar", "false",
                                 "--trainer.default_root_dir", tmp])
                loss = cli.trainer.callback_metrics.get("train/loss")
                ok = loss is not None and bool(torch.isfinite(loss))
                results[name] = {"ok": ok, "train_loss": None if loss is None else float(loss),
                                 "accelerator": type(cli.trainer.accelerator).__name__,
                                 "precision": cli.trainer.precision, "steps": cli.trainer.global_step}
            except Exception as err:  # record and go on: one family's failure must not hide the others
                results[name] = {"ok": False, "error": f"{type(err).__name__}: {err}",
                                 "traceback": traceback.format_exc()[-1500:]}
        results[name]["seconds"] = round(time.perf_counter() - t0, 2)
        print(name, results[name], flush=True)
    return results


def fp32_vs_bf16(epochs: int, accelerator: str = "gpu") -> dict:
    dev = "cuda" if accelerator == "gpu" else "cpu"
    from overhead import MODELS

    from lightning_vi.data import DigitsDataModule
    from lightning_vi.families.vae import VAE

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("32-true", "bf16-mixed"):
            L.seed_everything(0, verbose=False)
            dm = DigitsDataModule(image_size=16, batch_size=128)
            model = VAE(**MODELS["conv"]["kwargs"])
            trainer = L.Trainer(accelerator=accelerator, devices=1, precision=precision, max_epochs=epochs, logger=False,
                                enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp)
            t0 = time.perf_counter()
            trainer.fit(model, dm)
            fit_s = time.perf_counter() - t0
            ckpt = Path(tmp) / f"{precision}.ckpt"
            trainer.save_checkpoint(ckpt)
            model = model.to(dev).eval()  # Lightning hands the model back on the CPU after fit
            batch = next(iter(dm.val_dataloader()))
            with torch.no_grad():  # evaluate both in fp32 so only training precision differs
                elbos = [float(model.objective({k: v.to(dev) for k, v in b.items()})["elbo"]) for b in dm.val_dataloader()]
                recon_gpu = model(batch["x"].to(dev)).cpu()  # forward: decoder mean at the posterior mean
            reloaded = VAE.load_from_checkpoint(ckpt, map_location="cpu").eval()
            with torch.no_grad():
                recon_cpu = reloaded(batch["x"])
            out[precision] = {"val_elbo": sum(elbos) / len(elbos), "fit_seconds": fit_s,
                              "cpu_reload_max_abs_diff": float((recon_cpu - recon_gpu).abs().max())}
    a, b = out["32-true"]["val_elbo"], out["bf16-mixed"]["val_elbo"]
    out["relative_elbo_gap"] = abs(a - b) / abs(a)
    out["ok"] = out["relative_elbo_gap"] < 0.02
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--skip", nargs="*", default=[], choices=["configs", "parity", "overhead"])
    ap.add_argument("--accelerator", choices=["gpu", "cpu"], default="gpu", help="cpu: dry run of this script")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_check.json"))
    args = ap.parse_args()
    if args.accelerator == "gpu" and not torch.cuda.is_available():
        raise SystemExit("gpu_check.py needs a CUDA device (torch.cuda.is_available() is False)")
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 in the parity check
    result = {"device": torch.cuda.get_device_name() if args.accelerator == "gpu" else "cpu", "torch": torch.__version__, "lightning": L.__version__}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save() -> None:
        out.write_text(json.dumps(result, indent=2))

    if "configs" not in args.skip:
        result["configs_bf16"] = check_configs(args.steps, args.accelerator)
        result["configs_ok"] = f"{sum(r['ok'] for r in result['configs_bf16'].values())}/{len(result['configs_bf16'])}"
        save()
    if "parity" not in args.skip:
        result["quickstart_fp32_vs_bf16"] = fp32_vs_bf16(args.epochs, args.accelerator)
        save()
    if "overhead" not in args.skip:
        import overhead

        dev = "cuda" if args.accelerator == "gpu" else "cpu"
        result["overhead"] = {p: {m: overhead.run(m, 5, 2, dev, p) for m in overhead.MODELS} for p in ("32-true", "bf16-mixed")}
        save()
    print(json.dumps({k: v for k, v in result.items() if k != "configs_bf16"}, indent=2))


if __name__ == "__main__":
    main()
