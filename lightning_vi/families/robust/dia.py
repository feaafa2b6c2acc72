"""Dropout Inversion Attack (P32: Scheliga, Maeder & Seeland 2023, "Dropout is NOT all you need to prevent
gradient leakage") as a gradient-leakage audit tool.

A client computes the gradient of one example with dropout active (unknown masks ``m_l``). The attacker
optimises a dummy input ``x'`` so that its gradient matches the shared one (inverting-gradients objective,
Geiping et al. 2020):  ``L(x', m') = 1 - cos(g(x', m'), g) + tv * TV(x') [+ mask_weight * sum_l (mean(m'_l) - (1-p_l))^2]``.

* ``attack="baseline"``: ``x'`` only; the model runs in train mode with fresh random dropout masks each step
  (the realistic setting: the attacker knows the architecture and that the client trained with dropout, but
  not the masks).
* ``attack="dia"``: ``x'`` jointly with one relaxed mask per dropout layer, initialised with Bernoulli(1-p)
  draws and clipped to [0, 1] after each step, with the keep-rate penalty above (paper Sec. 4, Eq. 3).

The label comes from the last layer's gradient (iDLG, Zhao et al. 2020) unless given.

Run ``python -m lightning_vi.families.robust.dia --config configs/robust/dia.yml --out DIR`` for the audit on
scikit-learn digits (a ReLU MLP, where only the active units' masks show in the gradient: :func:`visible_units`).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

ATTACKS = ("baseline", "dia")


class MaskedDropout(nn.Module):
    """Inverted dropout whose mask can be read (``last_mask``) and injected (``forced_mask``).

    ``forced_mask`` (shape ``[features]`` or the input's shape) replaces the Bernoulli(1-p) draw; it is used in
    train mode and in eval mode alike, scaled by ``1/(1-p)`` as in ``nn.Dropout``.
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout p={p!r} is out of range; allowed: [0, 1)")
        self.p = float(p)
        self.forced_mask: Tensor | None = None
        self.last_mask: Tensor | None = None

    def forward(self, h: Tensor) -> Tensor:
        if self.forced_mask is not None:
            mask = self.forced_mask
        elif self.training:
            mask = torch.bernoulli(torch.full_like(h, 1.0 - self.p))
        else:
            return h
        self.last_mask = mask.detach()
        return h * mask / (1.0 - self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU}


class MaskedDropoutMLP(nn.Module):
    """``Linear -> act -> MaskedDropout`` blocks and a linear head.

    ``act="sigmoid"`` (as in DLG/iDLG): activations are positive, so every unit's mask shows in the gradient.
    ``act="relu"``: a unit whose pre-activation is negative outputs 0, so its mask never shows in the gradient
    (unidentifiable); the iDLG label rule still holds (features >= 0)."""

    def __init__(self, in_features: int = 64, hidden: Sequence[int] = (64, 64), num_classes: int = 10,
                 p: float = 0.5, act: str = "sigmoid") -> None:
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"act={act!r} is unknown; allowed: {', '.join(ACTIVATIONS)}")
        layers: list[nn.Module] = [nn.Flatten()]
        d = in_features
        for h in hidden:
            layers += [nn.Linear(d, h), ACTIVATIONS[act](), MaskedDropout(p)]
            d = h
        layers.append(nn.Linear(d, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def dropout_layers(model: nn.Module) -> list[MaskedDropout]:
    return [m for m in model.modules() if isinstance(m, MaskedDropout)]


def infer_label(model: nn.Module, grad: Sequence[Tensor]) -> int:
    """iDLG label: with cross-entropy, the last linear layer's gradient row ``(softmax - onehot)_c h`` is negative
    only for the true class when ``h >= 0``; take the bias gradient's argmin (or the weight row sums')."""
    params = [p for p in model.parameters() if p.requires_grad]
    last_w = [i for i, p in enumerate(params) if p.dim() == 2][-1]
    if last_w + 1 < len(params) and params[last_w + 1].dim() == 1 \
            and params[last_w + 1].shape[0] == params[last_w].shape[0]:
        return int(grad[last_w + 1].argmin())
    return int(grad[last_w].sum(dim=1).argmin())


def _tv(x: Tensor) -> Tensor:
    if x.dim() < 4:
        return x.new_zeros(())
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def _grad_of(model: nn.Module, x: Tensor, y: Tensor, create_graph: bool) -> list[Tensor]:
    params = [p for p in model.parameters() if p.requires_grad]
    loss = F.cross_entropy(model(x), y)
    return list(torch.autograd.grad(loss, params, create_graph=create_graph))


def _cosine(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    fa = torch.cat([t.reshape(-1) for t in a])
    fb = torch.cat([t.reshape(-1) for t in b])
    return F.cosine_similarity(fa, fb, dim=0, eps=1e-12)


def dropout_inversion(model: nn.Module, grad: Sequence[Tensor], input_shape: Sequence[int], *,
                      attack: str = "dia", label: int | Tensor | None = None, steps: int = 2000,
                      lr: float = 0.1, tv: float = 1e-4, mask_weight: float = 1.0,
                      value_range: tuple[float, float] = (0.0, 1.0), clip_masks: bool = True,
                      seed: int = 0) -> dict:
    """Reconstruct the one example whose gradient ``grad`` (one tensor per trainable parameter, in
    ``model.parameters()`` order) was shared.

    Args:
        model: the client model (its weights at the time of the gradient); MaskedDropout layers for ``"dia"``.
        grad: the shared gradient of cross-entropy at batch size 1, computed with the client's dropout masks.
        input_shape: the input's shape with a leading batch dimension of 1, e.g. ``(1, 1, 8, 8)``.
        attack: ``"baseline"`` (input only, fresh random masks each step) or ``"dia"`` (input and masks).
        label: the true class, or None to infer it from ``grad`` (iDLG).
        steps, lr: Adam steps and learning rate; ``tv``: total-variation weight; ``mask_weight``: keep-rate penalty.
        value_range: the input is clipped to this box after each step.
        clip_masks: clip the relaxed masks to [0, 1] after each step (``False`` only for the ablation).

    Returns: ``{"x": reconstruction, "label": int, "masks": list of [features] (dia) or None, "loss": float}``.
    """
    if attack not in ATTACKS:
        raise ValueError(f"attack={attack!r} is unknown; allowed: {', '.join(ATTACKS)}")
    shape = tuple(int(s) for s in input_shape)
    if len(shape) < 2:
        raise ValueError(f"input_shape={shape!r} needs a leading batch dimension, e.g. (1, 1, 8, 8)")
    if shape[0] != 1:
        raise ValueError(f"batch of {shape[0]}: the attack reconstructs one example; give batch size 1")
    if label is not None and torch.as_tensor(label).numel() != 1:
        n = torch.as_tensor(label).numel()
        raise ValueError(f"batch of {n}: the attack reconstructs one example; give batch size 1")
    params = [p for p in model.parameters() if p.requires_grad]
    grad = [g.detach() for g in grad]
    if len(grad) != len(params) or any(g.shape != p.shape for g, p in zip(grad, params)):
        raise ValueError(f"grad has shapes {[tuple(g.shape) for g in grad]}; expected one tensor per trainable "
                         f"parameter: {[tuple(p.shape) for p in params]}")
    layers = dropout_layers(model)
    if attack == "dia" and not layers:
        plain = [type(m).__name__ for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
        hint = f" (it has {', '.join(plain)}: replace them with MaskedDropout)" if plain else ""
        raise ValueError(f"model {type(model).__name__} has no MaskedDropout layer{hint}; DIA's mask search needs "
                         f"at least one dropout layer. Use attack='baseline' for a model without dropout.")
    y = torch.tensor([infer_label(model, grad) if label is None else int(torch.as_tensor(label).reshape(()))])
    gen = torch.Generator().manual_seed(seed)
    lo, hi = value_range
    x = (lo + (hi - lo) * torch.rand(shape, generator=gen)).requires_grad_(True)
    masks: list[Tensor] = []
    if attack == "dia":
        # the mask shape is the layer's feature shape: probe one forward pass
        with torch.no_grad():
            was = model.training
            model.eval()
            shapes = []
            hooks = [m.register_forward_hook(lambda m, i, o: shapes.append(i[0].shape[1:])) for m in layers]
            model(x)
            for h in hooks:
                h.remove()
            model.train(was)
        masks = [torch.bernoulli(torch.full(s, 1.0 - m.p), generator=gen).requires_grad_(True)
                 for s, m in zip(shapes, layers)]
    opt = torch.optim.Adam([x, *masks], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    was_training = model.training
    model.train()
    try:
        for _ in range(steps):
            opt.zero_grad()
            for m, mask in zip(layers, masks):
                m.forced_mask = mask
            g_dummy = _grad_of(model, x, y, create_graph=True)
            loss = 1.0 - _cosine(g_dummy, grad) + tv * _tv(x)
            for m, mask in zip(layers, masks):
                loss = loss + mask_weight * (mask.mean() - (1.0 - m.p)) ** 2
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                x.clamp_(lo, hi)
                for mask in masks if clip_masks else ():
                    mask.clamp_(0.0, 1.0)
    finally:
        for m in layers:
            m.forced_mask = None
        model.train(was_training)
    return {"x": x.detach(), "label": int(y), "masks": [mk.detach() for mk in masks] if masks else None,
            "loss": float(loss.detach())}


def client_gradient(model: nn.Module, x: Tensor, y: Tensor, seed: int = 0) -> tuple[list[Tensor], list[Tensor]]:
    """The client's shared gradient (train mode, fresh dropout masks) and those masks (``[features]`` each)."""
    torch.manual_seed(seed)
    model.train()
    g = [t.detach() for t in _grad_of(model, x, y.reshape(1), create_graph=False)]
    masks = [m.last_mask.reshape(m.last_mask.shape[1:]) if m.last_mask is not None else None
             for m in dropout_layers(model)]
    for m in dropout_layers(model):
        m.last_mask = None
    return g, masks


@torch.no_grad()
def visible_units(model: nn.Module, x: Tensor, masks: Sequence[Tensor]) -> list[Tensor]:
    """Per dropout layer, the units whose input is non-zero in the client's forward pass (with its ``masks``):
    only their masks show in the gradient. With sigmoid all units are visible; with ReLU the inactive ones are not
    (their mask multiplies 0), so no attack can recover those masks."""
    layers = dropout_layers(model)
    seen: list[Tensor] = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append((i[0] != 0).reshape(i[0].shape[1:])))
             for m in layers]
    for m, mask in zip(layers, masks):
        m.forced_mask = mask
    try:
        model(x)
    finally:
        for m in layers:
            m.forced_mask = None
        for h in hooks:
            h.remove()
    return seen


def attack_result_metrics(x_rec: Tensor, x_true: Tensor, masks: list[Tensor] | None = None,
                          true_masks: list[Tensor] | None = None, visible: list[Tensor] | None = None) -> dict:
    """MSE, PSNR, SSIM (``lightning_vi.metrics.restoration``) and, for DIA, the fraction of units whose mask
    thresholded at 0.5 equals the true mask (``mask_agreement``) and the same on the ``visible`` units only
    (``mask_agreement_visible``, see :func:`visible_units`)."""
    from lightning_vi.metrics.restoration import psnr, ssim

    img_rec, img_true = x_rec.reshape(1, 1, *x_true.shape[-2:]), x_true.reshape(1, 1, *x_true.shape[-2:])
    out = {"mse": float(F.mse_loss(x_rec.reshape(-1), x_true.reshape(-1))),
           "psnr": psnr(img_rec, img_true), "ssim": ssim(img_rec, img_true)}
    if masks is not None and true_masks is not None:
        agree = torch.cat([((m > 0.5).float() == t).float().reshape(-1) for m, t in zip(masks, true_masks)])
        out["mask_agreement"] = float(agree.mean())
        if visible is not None:
            vis = torch.cat([v.reshape(-1) for v in visible])
            out["mask_agreement_visible"] = float(agree[vis].mean()) if bool(vis.any()) else float("nan")
    return out


def train_digits_mlp(p: float = 0.5, hidden: Sequence[int] = (64, 64), epochs: int = 3, seed: int = 0,
                     act: str = "sigmoid"):
    """A MaskedDropoutMLP trained a few epochs on 8x8 digits (Adam, batch 64); returns (model, x, y)."""
    from lightning_vi.data.digits import load_digits_tensors

    torch.manual_seed(seed)
    data = load_digits_tensors(8)
    x, y = data["x"], data["y"]
    model = MaskedDropoutMLP(64, hidden, 10, p, act=act)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model, x, y


def _save_grid(path: Path, rows: list[Tensor], titles: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = rows[0].shape[0]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.2 * n, 1.3 * len(rows)), squeeze=False)
    for r, (imgs, title) in enumerate(zip(rows, titles)):
        for c in range(n):
            axes[r][c].imshow(imgs[c].reshape(8, 8).numpy(), cmap="gray", vmin=0, vmax=1)
            axes[r][c].set_xticks([]), axes[r][c].set_yticks([])
        axes[r][0].set_ylabel(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


OPTIONS = {"n": 8, "p": 0.5, "act": "sigmoid", "hidden": [64, 64], "epochs": 3, "steps": 2000, "lr": 0.1,
           "tv": 1e-4, "mask_weight": 1.0, "clip_masks": True, "seed": 0}


def _read_config(path: str) -> dict:
    import yaml

    cfg = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(cfg, dict):
        raise ValueError(f"{path}: the config must be a mapping of options; allowed keys: {', '.join(OPTIONS)}")
    unknown = sorted(set(cfg) - set(OPTIONS) - {"out"})
    if unknown:
        raise ValueError(f"{path}: unknown option(s) {unknown}; allowed: out, {', '.join(OPTIONS)}")
    return cfg


def main(argv: Sequence[str] | None = None) -> dict:
    """Audit: train a dropout MLP on digits, attack N examples with baseline and DIA, write npz/png/json.
    Options come from --config YAML (configs/robust/dia.yml) and the flags, the flags winning."""
    import numpy as np

    ap = argparse.ArgumentParser(prog="python -m lightning_vi.families.robust.dia", description=main.__doc__)
    ap.add_argument("--config", help="YAML file with any of the options below (keys as the flags, '_' for '-')")
    ap.add_argument("--out", help="output directory (required here or in the config)")
    ap.add_argument("--n", type=int, help="number of examples to attack")
    ap.add_argument("--p", type=float, help="dropout rate")
    ap.add_argument("--act", choices=sorted(ACTIVATIONS), help="hidden activation of the MLP")
    ap.add_argument("--hidden", type=int, nargs="+", help="hidden widths of the MLP")
    ap.add_argument("--epochs", type=int, help="training epochs of the client model")
    ap.add_argument("--steps", type=int, help="Adam steps of each attack")
    ap.add_argument("--lr", type=float)
    ap.add_argument("--tv", type=float, help="total-variation weight")
    ap.add_argument("--mask-weight", type=float, help="DIA keep-rate penalty weight")
    ap.add_argument("--clip-masks", type=lambda v: {"true": True, "false": False}[v.lower()],
                    help="true/false: clip DIA's masks to [0, 1]")
    ap.add_argument("--seed", type=int)
    a = ap.parse_args(argv)
    given = {k: v for k, v in vars(a).items() if v is not None and k != "config"}
    opts = {**OPTIONS, **(_read_config(a.config) if a.config else {}), **given}
    if not opts.get("out"):
        raise ValueError("no output directory: give --out DIR (or `out:` in the config)")
    o = argparse.Namespace(**opts)
    out = Path(o.out)
    out.mkdir(parents=True, exist_ok=True)
    model, xs, ys = train_digits_mlp(o.p, hidden=tuple(o.hidden), epochs=o.epochs, seed=o.seed, act=o.act)
    idx = torch.randperm(len(xs), generator=torch.Generator().manual_seed(o.seed + 1))[: o.n]
    recs: dict[str, list[Tensor]] = {"baseline": [], "dia": []}
    per: list[dict] = []
    for k, i in enumerate(idx.tolist()):
        x, y = xs[i : i + 1], ys[i : i + 1]
        g, true_masks = client_gradient(model, x, y, seed=o.seed * 1000 + k)
        visible = visible_units(model, x, true_masks)
        row = {"index": i, "label": int(y), "visible_fraction": float(torch.cat(visible).float().mean())}
        for att in ATTACKS:
            r = dropout_inversion(model, g, x.shape, attack=att, steps=o.steps, lr=o.lr, tv=o.tv,
                                  mask_weight=o.mask_weight, clip_masks=o.clip_masks, seed=o.seed + k)
            recs[att].append(r["x"])
            row[att] = {"label_inferred": r["label"],
                        **attack_result_metrics(r["x"], x, r["masks"], true_masks, visible)}
        per.append(row)
    summary = {att: {key: float(np.mean([row[att][key] for row in per])) for key in per[0][att]
                     if key != "label_inferred"} for att in ATTACKS}
    result = {"config": opts, "summary": summary, "examples": per}
    truth = xs[idx].reshape(o.n, 64)
    rec = {att: torch.cat(v).reshape(o.n, 64) for att, v in recs.items()}
    np.savez(out / "reconstructions.npz", truth=truth.numpy(), labels=ys[idx].numpy(),
             **{att: v.numpy() for att, v in rec.items()})
    _save_grid(out / "reconstructions.png", [truth, rec["baseline"], rec["dia"]], ["truth", "baseline", "DIA"])
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(summary, indent=2))
    return result


if __name__ == "__main__":
    main()
