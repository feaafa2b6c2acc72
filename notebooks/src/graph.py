"""Source of notebooks/graph.ipynb (regenerate: python notebooks/src/build.py graph)."""

CELLS = [
    ("markdown", """
# Graph family: variationally regularized graph learning for EHR (P34)

`ehr_gnn` learns the graph between medical codes by masked self-attention over the codes of each record, with
Gaussian node posteriors (KL to N(0, I)); the pooled record predicts an outcome. The synthetic records come from a
planted code graph (5 disease modules), so the learned graph can be checked against it.
"""),
    ("code", """
import torch
from sklearn.metrics import roc_auc_score
from lightning_vi.core.plain_loop import fit_objective
from lightning_vi.data.ehr import ehr_records
from lightning_vi.families.graph import EHRGNN
torch.set_num_threads(1)
train = ehr_records(200, generator=torch.Generator().manual_seed(100), graph_seed=0)
test = ehr_records(1000, generator=torch.Generator().manual_seed(900), graph_seed=0)
models = {}
for kl in (0.0, 1.0):                        # the same network without and with the KL term
    torch.manual_seed(0)
    models[kl] = fit_objective(EHRGNN(n_codes=40, kl_weight=kl), {'x': train['x'], 'y': train['y']}, 150, 3e-3)
    with torch.no_grad():
        scores = models[kl](test['x'])
    print(f'kl_weight {kl}: test AUROC {roc_auc_score(test["y"].numpy(), scores.numpy()):.3f}')
"""),
    ("markdown", """
The learned graph (similarity of the codes' representations) against the planted edges:
"""),
    ("code", """
with torch.no_grad():
    sim = models[1.0].similarity_graph(train['x'])
iu = torch.triu_indices(40, 40, 1)
print('planted-edge AUROC', round(roc_auc_score(train['adjacency'][iu[0], iu[1]].numpy(), sim[iu[0], iu[1]].numpy()), 3))
"""),
    ("markdown", """
The paper's singular-value analysis: without the variational regulariser the graph layer over-smooths a
record's node representations. Effective rank (exp entropy of the normalised singular values) of each test
record's node representations after the encoder attention, averaged over records:
"""),
    ("code", """
from lightning_vi.families.graph.ehr_gnn import record_effective_rank
with torch.no_grad():
    for kl, m in models.items():
        print(f'kl_weight {kl}: per-record effective rank {record_effective_rank(m.encoder_nodes(test["x"])[0], test["x"]):.2f}')
"""),
]
