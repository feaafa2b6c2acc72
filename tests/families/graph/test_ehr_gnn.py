"""ehr_gnn (P34): variationally regularized graph network over EHR codes, oracles on planted-graph records."""

import pytest
import torch
from sklearn.metrics import roc_auc_score

from lightning_vi.core.plain_loop import fit_objective
from lightning_vi.data.ehr import ehr_records
from lightning_vi.families.graph import EHRGNN, effective_rank
from lightning_vi.registry import FAMILIES

SEEDS = (0, 1, 2)


def auroc(labels: torch.Tensor, scores: torch.Tensor) -> float:
    """Rank (Mann-Whitney) AUROC, written independently of the model."""
    return float(roc_auc_score(labels.numpy(), scores.numpy()))


@pytest.fixture(scope="module")
def trained():
    """Per seed: 200 training records, 1000 test records, the model with KL (1) and without (0)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: threads only add overhead
    out = {}
    try:
        for seed in SEEDS:
            tr = ehr_records(200, generator=torch.Generator().manual_seed(100 + seed), graph_seed=seed)
            te = ehr_records(1000, generator=torch.Generator().manual_seed(900 + seed), graph_seed=seed)
            models = {}
            for kl in (0.0, 1.0):
                torch.manual_seed(seed)
                models[kl] = fit_objective(EHRGNN(n_codes=40, kl_weight=kl), {"x": tr["x"], "y": tr["y"]}, 300, 3e-3)
            out[seed] = (tr, te, models)
    finally:
        torch.set_num_threads(threads)
    return out


def test_registered_and_empty_record_error():
    assert FAMILIES.get("ehr_gnn") is EHRGNN
    m = EHRGNN(n_codes=5)
    with pytest.raises(ValueError, match="no code"):
        m.compute_loss({"x": torch.tensor([[1.0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]), "y": torch.ones(2)}, "train")
    with pytest.raises(ValueError, match="n_codes=5"):
        m(torch.ones(2, 4))


def test_attention_is_masked_to_present_codes():
    m = EHRGNN(n_codes=6)
    x = torch.tensor([[1.0, 1, 0, 0, 0, 0], [0, 0, 1, 1, 1, 0]])
    _, _, att = m.encode(x)
    assert torch.allclose(att.sum(-1), torch.ones(2, 6))
    assert att[0][:, 2:].abs().max() == 0 and att[1][:, [0, 1, 5]].abs().max() == 0


def test_kl_weight_zero_drops_the_kl_term():
    x = torch.tensor([[1.0, 1, 0, 0], [0, 1, 1, 0]])
    torch.manual_seed(0)
    loss1, terms = EHRGNN(n_codes=4, kl_weight=1.0).compute_loss({"x": x, "y": torch.ones(2)}, "train")
    torch.manual_seed(0)
    loss0, _ = EHRGNN(n_codes=4, kl_weight=0.0).compute_loss({"x": x, "y": torch.ones(2)}, "train")
    assert torch.allclose(loss1 - loss0, terms["kl"].detach() if torch.is_tensor(terms["kl"]) else torch.tensor(terms["kl"]),
                          atol=1e-5)


def test_kl_regularisation_improves_test_auroc_with_few_records(trained):
    for seed, (_, te, models) in trained.items():
        a_kl, a_plain = (auroc(te["y"], models[k](te["x"])) for k in (1.0, 0.0))
        assert a_kl > a_plain + 0.01, (seed, a_kl, a_plain)


def test_learned_graph_recovers_planted_edges(trained):
    for seed, (tr, _, models) in trained.items():
        iu = torch.triu_indices(40, 40, 1)
        sim = models[1.0].similarity_graph(tr["x"])[iu[0], iu[1]]
        assert auroc(tr["adjacency"][iu[0], iu[1]], sim) > 0.6, seed


@pytest.mark.xfail(strict=True, reason="measured: the N(0, I) KL prunes latent dims, so the effective rank of "
                   "node representations is LOWER with the KL (about 3 vs 5-6 over seeds 0-2); see docs/graph.md")
def test_kl_raises_effective_rank_of_node_representations(trained):
    for seed, (tr, _, models) in trained.items():
        er = {k: effective_rank(models[k].encode(tr["x"])[0].detach()[tr["x"] > 0.5]) for k in (0.0, 1.0)}
        assert er[1.0] > er[0.0], (seed, er)
