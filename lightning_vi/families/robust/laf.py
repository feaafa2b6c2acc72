"""Label-Agnostic Forgetting (LAF; Shen et al. 2024, "Label-Agnostic Forgetting: A Supervision-Free Unlearning in
Deep Models"): remove a forget set's knowledge from a classifier ``head(extractor(x))`` without using labels.

Steps (paper Sec. 3):
  1. representation VAEs: fit a remain-VAE and a forget-VAE on the frozen original embeddings ``f0(x)``;
  2. extractor unlearning: update ``f`` to minimise the ELBO difference on forget data,
     ``-ELBO_r(f(x_f)) + ELBO_f(f(x_f))`` (forget embeddings move to where the remain-VAE, not the forget-VAE, puts
     mass; the forget term is clipped at ``forget_cap`` nats/dim so it cannot diverge), plus ``-ELBO_r(f(x_r))`` to keep
     remain embeddings in the remain-VAE's support;
  3. representation alignment: InfoNCE between ``f(x_r)`` and ``f0(x_r)`` (positives: the same example, negatives: the
     rest of the batch and the current forget embeddings), restoring remain knowledge for the frozen head; steps 2 and
     3 alternate each epoch and the forget term stays on during alignment (without it alignment restores the class);
  4. optional semi-supervised mode: a few labelled remain examples add cross-entropy on the head during alignment.

``membership_inference_auc`` is the loss-threshold attack (Yeom et al. 2018): AUC of ``-CE`` separating training
members from held-out non-members (0.5 = indistinguishable).

Package wiring: ``label_agnostic_forget`` finds the extractor of a trained ``classifier`` family model by itself
(its ``backbone``, whose output is ``features(x)``, the ``HasPenultimate`` head input). The callback
:class:`LabelAgnosticForgetting` runs LAF at the end of ``lvi fit`` and writes ``metrics.json`` and
``unlearned.ckpt`` (``lvi fit --config configs/robust/laf.yaml``); ``python -m lightning_vi.families.robust.laf
--config configs/robust/laf.yaml --ckpt PATH`` does the same for an already trained checkpoint.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["LabelAgnosticForgetting", "RepresentationVAE", "forget_audit", "label_agnostic_forget",
           "membership_inference_auc"]


class RepresentationVAE(nn.Module):
    """Small Gaussian VAE on embedding vectors; ``nelbo(z)`` is the per-example negative ELBO per dimension
    (unit-variance Gaussian decoder, constants dropped)."""

    def __init__(self, dim: int, latent: int = 8, hidden: int = 64) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent))
        self.dec = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, dim))

    def nelbo(self, z: Tensor) -> Tensor:
        mu, logvar = self.enc(z).chunk(2, -1)
        h = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        rec = 0.5 * (self.dec(h) - z).pow(2).sum(-1)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(-1)
        return (rec + kl) / z.shape[-1]


def _as_tensor(data, name: str) -> Tensor:
    if isinstance(data, Tensor):
        x = data
    else:  # a DataLoader / iterable of tensors, (x, y) tuples or {"x": ...} dicts; labels are ignored
        parts = []
        for b in data:
            parts.append(b["x"] if isinstance(b, dict) else b[0] if isinstance(b, (tuple, list)) else b)
        x = torch.cat(parts) if parts else torch.empty(0)
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 examples); give at least one example")
    return x


@torch.no_grad()
def _embed(f: nn.Module, x: Tensor, bs: int = 512) -> Tensor:
    return torch.cat([f(x[i:i + bs]) for i in range(0, len(x), bs)])


def _fit_vae(z: Tensor, epochs: int, gen: torch.Generator, lr: float = 1e-3, bs: int = 128) -> RepresentationVAE:
    vae = RepresentationVAE(z.shape[-1]).to(z.device)
    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    for _ in range(epochs):
        for idx in torch.randperm(len(z), generator=gen).split(bs):
            opt.zero_grad()
            vae.nelbo(z[idx]).mean().backward()
            opt.step()
    vae.requires_grad_(False).eval()
    return vae


def _info_nce(a: Tensor, b: Tensor, neg: Tensor, temperature: float) -> Tensor:
    """InfoNCE of ``a[i]`` against positive ``b[i]``; negatives: the other ``b`` and all of ``neg``."""
    a, b, neg = F.normalize(a, dim=-1), F.normalize(b, dim=-1), F.normalize(neg, dim=-1)
    logits = a @ torch.cat([b, neg]).T / temperature
    return F.cross_entropy(logits, torch.arange(len(a), device=a.device))


def label_agnostic_forget(model: nn.Module, forget, remain, epochs: int = 25, vae_epochs: int = 50,
                          lr: float = 1e-3, forget_cap: float = 1.0,
                          temperature: float = 0.1, batch_size: int = 128,
                          semi_supervised_labels: tuple[Tensor, Tensor] | None = None, semi_weight: float = 1.0,
                          seed: int = 0, extractor: str | None = None, head: str = "head") -> nn.Module:
    """Unlearn ``forget`` from ``model`` (with submodules ``model.<extractor>`` and ``model.<head>``) using unlabelled
    ``forget`` and ``remain`` data (tensors or loaders); returns an unlearned deep copy (the head stays frozen).

    ``extractor=None``: ``"extractor"`` if the model has one, else ``"backbone"`` (the ``classifier`` family, whose
    ``features(x) = backbone(x)`` feed the head through eval-mode dropout).

    ``semi_supervised_labels = (x_l, y_l)``: a few labelled remain examples for CE on the head during alignment.
    Raises ``ValueError`` for an empty forget/remain set or a forget set equal to the whole data (remain empty).
    """
    xf = _as_tensor(forget, "forget set")
    xr = remain if isinstance(remain, Tensor) else torch.empty(0) if remain is None else _as_tensor(remain, "remain set")
    if xr.shape[0] == 0:
        raise ValueError("remain set is empty (0 examples): the forget set equals all the data; LAF needs remaining "
                         "examples")
    if epochs < 0:
        raise ValueError(f"epochs={epochs!r} is out of range; allowed: [0, inf)")
    if extractor is None:
        extractor = next((a for a in ("extractor", "backbone") if isinstance(getattr(model, a, None), nn.Module)),
                         "extractor")
    for attr in (extractor, head):
        if not isinstance(getattr(model, attr, None), nn.Module):
            raise ValueError(f"model has no submodule {attr!r}; give the extractor/head attribute names")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    new = copy.deepcopy(model).train()
    f0 = copy.deepcopy(getattr(model, extractor)).eval().requires_grad_(False)
    f, h = getattr(new, extractor), getattr(new, head)
    h.requires_grad_(False)
    device = next(f.parameters()).device
    xf, xr = xf.to(device), xr.to(device)
    if semi_supervised_labels is not None:
        semi_supervised_labels = tuple(t.to(device) for t in semi_supervised_labels)
    zf0, zr0 = _embed(f0, xf), _embed(f0, xr)
    vae_r, vae_f = _fit_vae(zr0, vae_epochs, gen), _fit_vae(zf0, vae_epochs * max(1, len(zr0) // len(zf0)), gen)
    opt = torch.optim.Adam(f.parameters(), lr=lr)
    n_batches = max(1, -(-len(xf) // batch_size))
    for _ in range(epochs):  # Algorithm 1: alternate extractor unlearning and representation alignment per epoch
        pf = torch.randperm(len(xf), generator=gen).split(batch_size)
        pr = torch.randint(len(xr), (n_batches, batch_size), generator=gen)
        for i_f, i_r in zip(pf, pr):  # step 2: ELBO difference on forget; remain kept in the remain-VAE's support
            zf, zr = f(xf[i_f]), f(xr[i_r])
            loss = (vae_r.nelbo(zf).mean() - vae_f.nelbo(zf).clamp(max=forget_cap).mean()
                    + vae_r.nelbo(zr).mean())
            opt.zero_grad()
            loss.backward()
            opt.step()
        for i_r in torch.randperm(len(xr), generator=gen).split(batch_size):  # step 3 (+4): alignment
            i_f = torch.randint(len(xf), (min(len(xf), batch_size),), generator=gen)
            zf = f(xf[i_f])  # the forget term stays on so alignment does not restore the forget class
            loss = (_info_nce(f(xr[i_r]), zr0[i_r], zf, temperature)
                    + vae_r.nelbo(zf).mean() - vae_f.nelbo(zf).clamp(max=forget_cap).mean())
            if semi_supervised_labels is not None:
                xl, yl = semi_supervised_labels
                loss = loss + semi_weight * F.cross_entropy(h(f(xl)), yl)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return new.eval()


@torch.no_grad()
def membership_inference_auc(model: nn.Module, x_members: Tensor, y_members: Tensor, x_nonmembers: Tensor,
                             y_nonmembers: Tensor) -> float:
    """Loss-threshold membership inference: ROC AUC of the score ``-CE(model(x), y)`` with members labelled 1."""
    from sklearn.metrics import roc_auc_score

    if len(x_members) == 0 or len(x_nonmembers) == 0:
        raise ValueError(f"need members and non-members; got {len(x_members)} and {len(x_nonmembers)}")
    model.eval()
    s = torch.cat([-F.cross_entropy(model(x_members), y_members, reduction="none"),
                   -F.cross_entropy(model(x_nonmembers), y_nonmembers, reduction="none")])
    t = torch.cat([torch.ones(len(x_members)), torch.zeros(len(x_nonmembers))])
    return float(roc_auc_score(t.numpy(), s.numpy()))


def _collect(loader) -> tuple[Tensor, Tensor]:
    """All ``(x, y)`` of a loader of ``{"x", "y"}`` dicts or ``(x, y)`` tuples."""
    xs, ys = [], []
    for b in loader:
        x, y = (b["x"], b.get("y")) if isinstance(b, dict) else (b[0], b[1] if len(b) > 1 else None)
        if y is None:
            raise ValueError("the forget audit needs labelled batches ('y') to split forget/remain and score "
                             "accuracy; LAF itself never reads them")
        xs.append(x)
        ys.append(y)
    return torch.cat(xs), torch.cat(ys).long()


@torch.no_grad()
def _accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    return float((model(x).argmax(-1) == y).float().mean()) if len(y) else float("nan")


def forget_audit(model: nn.Module, train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor], forget_class: int,
                 **laf_kwargs: Any) -> tuple[nn.Module, dict]:
    """Forget the training examples of ``forget_class`` with :func:`label_agnostic_forget` and score the result.

    ``train`` / ``test``: ``(x, y)``; labels only split the data and score it (LAF is label-free). Returns the
    unlearned copy and ``{"before": m, "after": m, "n_forget_train", ...}`` with ``m`` = test accuracy on the forget
    class (``forget_acc``) and on the rest (``remain_acc``), training accuracy on the forget set
    (``forget_train_acc``) and the loss-threshold MIA AUC of forget-class train (members) vs test (non-members)
    (``mia_auc``; 0.5 = the forget examples look unseen, as for a model retrained without them).
    """
    (xtr, ytr), (xte, yte) = train, test
    classes = sorted(set(ytr.tolist()))
    if int(forget_class) not in classes:
        raise ValueError(f"forget_class={forget_class!r} has no training example; allowed: {classes}")
    device = next(model.parameters()).device
    xtr, ytr, xte, yte = xtr.to(device), ytr.to(device), xte.to(device), yte.to(device)
    fm, tf = ytr == forget_class, yte == forget_class
    if not bool(tf.any()):
        raise ValueError(f"forget_class={forget_class!r} has no test example: the MIA needs non-members")

    def score(m: nn.Module) -> dict:
        m.eval()
        return {"forget_acc": _accuracy(m, xte[tf], yte[tf]), "remain_acc": _accuracy(m, xte[~tf], yte[~tf]),
                "forget_train_acc": _accuracy(m, xtr[fm], ytr[fm]),
                "mia_auc": membership_inference_auc(m, xtr[fm], ytr[fm], xte[tf], yte[tf])}

    was_training = model.training
    before = score(model)
    with torch.enable_grad():
        new = label_agnostic_forget(model, xtr[fm], xtr[~fm], **laf_kwargs)
    model.train(was_training)
    return new, {"forget_class": int(forget_class), "n_forget_train": int(fm.sum()), "n_forget_test": int(tf.sum()),
                 "n_remain_train": int((~fm).sum()), "before": before, "after": score(new),
                 "laf": {k: v for k, v in laf_kwargs.items() if isinstance(v, (int, float, str, type(None)))}}


class LabelAgnosticForgetting(L.Callback):
    """Run LAF at the end of ``fit`` on the trained classifier: forget the training examples of ``forget_class``
    (train split = members, test split = non-members) and write ``<out>/metrics.json`` (see :func:`forget_audit`)
    and ``<out>/unlearned.ckpt`` (a checkpoint of the same family: ``Classifier.load_from_checkpoint`` or
    ``lvi test --ckpt_path`` read it). The metrics also go to the logger as ``laf/<before|after>_<metric>``.

    Args:
        forget_class: the class whose training examples are forgotten.
        epochs, vae_epochs, lr, forget_cap, temperature, batch_size, seed: :func:`label_agnostic_forget`'s.
        labels_per_class: > 0 switches on the semi-supervised mode with that many labelled remain examples per class.
        out: output folder (default ``<trainer.default_root_dir>/laf``).

    Under ``fast_dev_run`` it runs one LAF epoch (one VAE epoch) as a smoke check.
    """

    def __init__(self, forget_class: int = 0, epochs: int = 25, vae_epochs: int = 50, lr: float = 1e-3,
                 forget_cap: float = 1.0, temperature: float = 0.1, batch_size: int = 128, labels_per_class: int = 0,
                 seed: int = 0, out: str | None = None) -> None:
        super().__init__()
        for name, value, low in (("epochs", epochs, 0), ("vae_epochs", vae_epochs, 1), ("batch_size", batch_size, 1),
                                 ("labels_per_class", labels_per_class, 0), ("forget_class", forget_class, 0)):
            if int(value) != value or value < low:
                raise ValueError(f"LabelAgnosticForgetting: {name}={value!r} is out of range; allowed: integers "
                                 f">= {low}")
        for name, value in (("lr", lr), ("forget_cap", forget_cap), ("temperature", temperature)):
            if not value > 0:
                raise ValueError(f"LabelAgnosticForgetting: {name}={value!r} is out of range; allowed: (0, inf)")
        self.forget_class, self.labels_per_class, self.out = int(forget_class), int(labels_per_class), out
        self.laf_kwargs = {"epochs": int(epochs), "vae_epochs": int(vae_epochs), "lr": lr, "forget_cap": forget_cap,
                           "temperature": temperature, "batch_size": int(batch_size), "seed": int(seed)}
        self.metrics: dict | None = None

    def run(self, model: nn.Module, datamodule, out: str | Path, smoke: bool = False) -> tuple[nn.Module, dict]:
        """Unlearn and score ``model`` on ``datamodule``'s train/test splits; write ``<out>/metrics.json``."""
        datamodule.setup("fit")
        datamodule.setup("test")
        train, test = _collect(datamodule.train_dataloader()), _collect(datamodule.test_dataloader())
        kwargs = dict(self.laf_kwargs)
        if smoke:
            kwargs.update(epochs=min(1, kwargs["epochs"]), vae_epochs=1)
        if self.labels_per_class:
            x, y = train
            keep = torch.cat([torch.nonzero(y == k)[: self.labels_per_class, 0] for k in sorted(set(y.tolist()))
                              if k != self.forget_class])
            kwargs["semi_supervised_labels"] = (x[keep], y[keep])
        new, metrics = forget_audit(model, train, test, self.forget_class, **kwargs)
        metrics["laf"]["labels_per_class"] = self.labels_per_class
        metrics["smoke"] = smoke
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        self.metrics = metrics
        return new, metrics

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.datamodule is None:
            raise ValueError("LabelAgnosticForgetting needs a LightningDataModule (its train and test splits)")
        out = Path(self.out or Path(trainer.default_root_dir) / "laf")
        new, metrics = self.run(pl_module, trainer.datamodule, out, smoke=bool(trainer.fast_dev_run))
        original = copy.deepcopy(pl_module.state_dict())
        pl_module.load_state_dict(new.state_dict())  # the trainer saves the module it holds: swap weights in
        try:
            trainer.save_checkpoint(out / "unlearned.ckpt", weights_only=True)
        finally:
            pl_module.load_state_dict(original)
        if trainer.logger is not None:
            trainer.logger.log_metrics({f"laf/{when}_{k}": v for when in ("before", "after")
                                        for k, v in metrics[when].items()}, step=trainer.global_step)


def main(argv: Sequence[str] | None = None) -> dict:
    """LAF on a trained checkpoint: the model, data and LAF settings come from an `lvi fit` config with a
    LabelAgnosticForgetting callback (configs/robust/laf.yaml); writes OUT/metrics.json and OUT/unlearned.ckpt.
    To train the original first, run `lvi fit --config CONFIG` (it unlearns at the end of fit)."""
    from lightning_vi.checkpoints import check_fits_model, read_checkpoint
    from lightning_vi.cli import build_cli

    ap = argparse.ArgumentParser(prog="python -m lightning_vi.families.robust.laf", description=main.__doc__)
    ap.add_argument("--config", required=True, help="the lvi fit config that trained the checkpoint")
    ap.add_argument("--ckpt", required=True, help="a checkpoint written by `lvi fit --config CONFIG`")
    ap.add_argument("--out", help="output folder (default: the callback's `out`, else <default_root_dir>/laf)")
    ap.add_argument("--forget-class", type=int, help="override the callback's forget_class")
    a = ap.parse_args(argv)
    cli = build_cli(["--config", a.config, "--trainer.logger", "false"], run=False)
    cb = next((c for c in cli.trainer.callbacks if isinstance(c, LabelAgnosticForgetting)), None)
    if cb is None:
        raise ValueError(f"{a.config} has no LabelAgnosticForgetting callback under trainer.callbacks; add "
                         "`- class_path: lightning_vi.families.robust.laf.LabelAgnosticForgetting` (see "
                         "configs/robust/laf.yaml)")
    if a.forget_class is not None:
        cb.forget_class = a.forget_class
    ckpt = read_checkpoint(a.ckpt)
    check_fits_model(ckpt, a.ckpt, cli.model)
    cli.model.load_state_dict(ckpt["state_dict"])
    out = Path(a.out or cb.out or Path(cli.trainer.default_root_dir) / "laf")
    new, metrics = cb.run(cli.model.eval(), cli.datamodule, out)
    drop = ("optimizer_states", "lr_schedulers", "loops", "callbacks")
    torch.save({**{k: v for k, v in ckpt.items() if k not in drop}, "state_dict": new.state_dict()},
               out / "unlearned.ckpt")
    print(json.dumps({k: metrics[k] for k in ("before", "after")}, indent=2))
    return metrics


if __name__ == "__main__":
    main()
