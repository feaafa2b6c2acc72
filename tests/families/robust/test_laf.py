"""Label-Agnostic Forgetting (Shen et al. 2024) on 8x8 digits: forget class 0 without labels.

Oracles (paper Sec. 5): forget-class test accuracy <= chance + 0.1, remain accuracy within 5 points of the original,
loss-threshold MIA AUC on forget train vs forget test within 0.1 of 0.5, semi-supervised >= supervision-free on remain.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_vi.data import load_digits_tensors
from lightning_vi.families.robust.laf import label_agnostic_forget, membership_inference_auc

SEEDS = (0, 1, 2)
FORGET = 0


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.extractor = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32), nn.ReLU())
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.extractor(x))


@torch.no_grad()
def accuracy(m, x, y) -> float:
    return (m(x).argmax(-1) == y).float().mean().item()


def setup(seed: int):
    d = load_digits_tensors()
    g = torch.Generator().manual_seed(seed)
    p = torch.randperm(len(d["y"]), generator=g)
    xtr, ytr, xte, yte = d["x"][p[:1300]], d["y"][p[:1300]], d["x"][p[1300:]], d["y"][p[1300:]]
    torch.manual_seed(seed)
    m = Net()
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    for _ in range(30):  # plain PyTorch training of the original classifier
        for i in torch.randperm(len(xtr), generator=g).split(64):
            opt.zero_grad()
            F.cross_entropy(m(xtr[i]), ytr[i]).backward()
            opt.step()
    return m.eval(), xtr, ytr, xte, yte


@pytest.mark.parametrize("seed", SEEDS)
def test_laf_forgets_keeps_remain_and_hides_membership(seed) -> None:
    torch.set_num_threads(1)
    m, xtr, ytr, xte, yte = setup(seed)
    fm, tf = ytr == FORGET, yte == FORGET
    orig_forget, orig_remain = accuracy(m, xte[tf], yte[tf]), accuracy(m, xte[~tf], yte[~tf])
    assert orig_forget > 0.9 and orig_remain > 0.9, (orig_forget, orig_remain)
    free = label_agnostic_forget(m, xtr[fm], xtr[~fm], seed=seed)  # no labels
    lab = torch.cat([torch.nonzero(ytr == k)[:10, 0] for k in range(10) if k != FORGET])
    semi = label_agnostic_forget(m, xtr[fm], xtr[~fm], seed=seed, semi_supervised_labels=(xtr[lab], ytr[lab]))
    assert accuracy(m, xte[tf], yte[tf]) == orig_forget  # the original model is left untouched
    for u in (free, semi):
        assert accuracy(u, xte[tf], yte[tf]) <= 0.1 + 0.1
        assert accuracy(u, xte[~tf], yte[~tf]) >= orig_remain - 0.05
    auc = membership_inference_auc(free, xtr[fm], ytr[fm], xte[tf], yte[tf])
    assert abs(auc - 0.5) <= 0.1, auc
    assert accuracy(semi, xte[~tf], yte[~tf]) >= accuracy(free, xte[~tf], yte[~tf])


def test_mia_auc_reference() -> None:
    # A model that is perfect on members and uniform on non-members: AUC 1; identical inputs: AUC 0.5.
    x = torch.eye(4)
    model = nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        model.weight.copy_(10 * torch.eye(4))
    y = torch.arange(4)
    assert membership_inference_auc(model, x, y, torch.zeros(4, 4), y) == 1.0
    assert membership_inference_auc(model, x, y, x, y) == 0.5


def test_bad_inputs() -> None:
    m = Net()
    x = torch.rand(20, 1, 8, 8)
    with pytest.raises(ValueError, match="forget set is empty"):
        label_agnostic_forget(m, x[:0], x, epochs=1)
    with pytest.raises(ValueError, match="forget set equals all the data"):
        label_agnostic_forget(m, x, x[:0], epochs=1)
    with pytest.raises(ValueError, match="forget set is empty"):
        label_agnostic_forget(m, torch.utils.data.DataLoader(x[:0]), x, epochs=1)
    with pytest.raises(ValueError, match="'backbone'"):
        label_agnostic_forget(m, x[:5], x[5:], epochs=1, extractor="backbone")
