"""Synthetic EHR-like records over a planted code graph (graph-EHR oracle data, P34).

Generative process (deterministic from the seed):

* ``n_codes`` medical codes; the first ``n_modules * module_size`` form ``n_modules`` disjoint disease
  modules, the rest are background codes.
* Planted graph: inside each module every code pair is an edge with probability ``edge_prob``
  (symmetric ``adjacency`` [C, C], no self loops, kept as ground truth; no edges across modules).
* A record picks 1 or 2 distinct modules; for each it starts at a uniform code of the module and walks
  ``walk_length`` steps along planted edges, adding every visited code; then each of ``n_noise`` uniform
  background/any codes is added. Records are multi-hot ``x`` [N, C].
* Outcome: ``y = 1`` iff the record holds module 0 and module 1 together, or module 2 without module 3
  (an interaction of disease modules), each label flipped with probability ``label_noise``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_vi.core.checks import check_range
from lightning_vi.data.base import InMemoryDataModule


def planted_code_graph(n_codes: int = 40, n_modules: int = 5, module_size: int = 6, edge_prob: float = 0.6,
                       generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Planted symmetric adjacency [C, C] (0/1 float) and module id per code [C] (-1 = background code)."""
    check_range("n_modules", n_modules, 4)
    check_range("module_size", module_size, 2)
    check_range("edge_prob", edge_prob, 0.0, 1.0)
    if n_modules * module_size > n_codes:
        raise ValueError(f"n_modules * module_size = {n_modules * module_size} exceeds n_codes={n_codes}; "
                         "allowed: n_modules * module_size <= n_codes")
    g = generator or torch.Generator().manual_seed(0)
    module = torch.full((n_codes,), -1, dtype=torch.long)
    module[: n_modules * module_size] = torch.arange(n_modules).repeat_interleave(module_size)
    same = (module[:, None] == module[None, :]) & (module[:, None] >= 0)
    upper = torch.triu(torch.rand(n_codes, n_codes, generator=g) < edge_prob, diagonal=1)
    adj = (same & upper).float()
    adj = adj + adj.T
    if adj.sum() == 0:
        raise ValueError(f"the planted code graph has no edges (edge_prob={edge_prob}, module_size={module_size}); "
                         "records are sampled along planted edges, so use edge_prob > 0 (e.g. 0.6)")
    return adj, module


def ehr_records(n: int, n_codes: int = 40, n_modules: int = 5, module_size: int = 6, edge_prob: float = 0.6,
                walk_length: int = 3, n_noise: int = 2, label_noise: float = 0.05,
                generator: torch.Generator | None = None, graph_seed: int = 0) -> dict[str, Tensor]:
    """``n`` records of the process above: ``x`` [n, C] multi-hot codes, ``y`` [n] (0/1 float), ``modules``
    [n, n_modules] (which modules the record was drawn from), plus the planted ``adjacency`` [C, C] and
    ``module`` [C] (not per record: the graph is drawn from ``graph_seed``, shared by every split)."""
    check_range("n", n, 1)
    check_range("walk_length", walk_length, 0)
    check_range("n_noise", n_noise, 0)
    check_range("label_noise", label_noise, 0.0, 0.5)
    adj, module = planted_code_graph(n_codes, n_modules, module_size, edge_prob, torch.Generator().manual_seed(graph_seed))
    g = generator or torch.Generator().manual_seed(1)
    x = torch.zeros(n, n_codes)
    mods = torch.zeros(n, n_modules)
    n_pick = 1 + (torch.rand(n, generator=g) < 0.5).long()
    for r in range(n):
        for m in torch.randperm(n_modules, generator=g)[: int(n_pick[r])].tolist():
            mods[r, m] = 1.0
            code = m * module_size + int(torch.randint(module_size, (1,), generator=g))
            x[r, code] = 1.0
            for _ in range(walk_length):
                nbrs = adj[code].nonzero()[:, 0]
                if len(nbrs) == 0:
                    break
                code = int(nbrs[torch.randint(len(nbrs), (1,), generator=g)])
                x[r, code] = 1.0
        if n_noise:
            x[r, torch.randint(n_codes, (n_noise,), generator=g)] = 1.0
    y = ((mods[:, 0] * mods[:, 1]) + mods[:, 2] * (1 - mods[:, 3])).clamp(max=1.0)
    flip = torch.rand(n, generator=g) < label_noise
    y = torch.where(flip, 1 - y, y)
    return {"x": x, "y": y, "modules": mods, "adjacency": adj, "module": module}


class EHRDataModule(InMemoryDataModule):
    """Records of :func:`ehr_records` as batches ``{"x", "y", "modules"}``; the planted graph is
    ``self.adjacency`` (set at construction).

    Args:
        n: number of records; the other arguments as for :func:`ehr_records`.
    """

    def __init__(self, n: int = 1000, n_codes: int = 40, n_modules: int = 5, module_size: int = 6,
                 edge_prob: float = 0.6, walk_length: int = 3, n_noise: int = 2, label_noise: float = 0.05,
                 batch_size: int = 128, val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0,
                 num_workers: int = 0) -> None:
        super().__init__(batch_size, val_fraction, test_fraction, seed, num_workers)
        check_range("n", n, 10)
        self.kwargs = dict(n_codes=n_codes, n_modules=n_modules, module_size=module_size, edge_prob=edge_prob,
                           walk_length=walk_length, n_noise=n_noise, label_noise=label_noise)
        probe = ehr_records(1, **self.kwargs, graph_seed=seed)  # validates the arguments now, not at setup
        self.adjacency, self.module = probe["adjacency"], probe["module"]
        self.n = n

    def generate(self) -> dict[str, Tensor]:
        d = ehr_records(self.n, generator=self.generator(), graph_seed=self.seed, **self.kwargs)
        return {k: d[k] for k in ("x", "y", "modules")}
