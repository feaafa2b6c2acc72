"""Synthetic EHR records over a planted code graph (P34 data)."""

import pytest
import torch

from lightning_vi.data.ehr import EHRDataModule, ehr_records, planted_code_graph


def test_planted_graph_is_symmetric_within_modules():
    adj, module = planted_code_graph(40, 5, 6, 0.6, torch.Generator().manual_seed(0))
    assert torch.equal(adj, adj.T) and adj.diag().sum() == 0 and adj.sum() > 0
    i, j = adj.nonzero().T
    assert (module[i] == module[j]).all() and (module[i] >= 0).all()


def test_records_are_deterministic_and_follow_the_graph():
    a = ehr_records(300, generator=torch.Generator().manual_seed(3), n_noise=0, label_noise=0.0)
    b = ehr_records(300, generator=torch.Generator().manual_seed(3), n_noise=0, label_noise=0.0)
    assert torch.equal(a["x"], b["x"]) and torch.equal(a["y"], b["y"])
    assert a["x"].shape == (300, 40) and (a["x"].sum(1) >= 1).all()
    # without noise codes every code of a record lies in one of the record's modules
    code_module = a["module"]
    held = a["x"] > 0.5
    rec, code = held.nonzero().T
    assert (code_module[code] >= 0).all()
    assert a["modules"][rec, code_module[code]].eq(1).all()
    m = a["modules"]
    expected = ((m[:, 0] * m[:, 1]) + m[:, 2] * (1 - m[:, 3])).clamp(max=1)
    assert torch.equal(a["y"], expected) and 0.2 < a["y"].mean() < 0.8


def test_no_edges_is_a_clear_error():
    with pytest.raises(ValueError, match="no edges"):
        ehr_records(10, edge_prob=0.0)
    with pytest.raises(ValueError, match="n_codes"):
        planted_code_graph(10, 5, 6)


def test_datamodule_batches():
    dm = EHRDataModule(n=100, batch_size=16)
    batch = next(iter(dm.train_dataloader()))
    assert batch["x"].shape == (16, 40) and set(batch) == {"x", "y", "modules"}
    assert dm.adjacency.shape == (40, 40)
