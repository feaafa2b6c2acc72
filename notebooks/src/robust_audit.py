"""Source of notebooks/robust_audit.ipynb (regenerate: python notebooks/src/build.py robust_audit)."""

CELLS = [
    ("markdown", """
# Privacy audits: label-agnostic forgetting (P03) and the dropout inversion attack (P32)

Both run from configs in `configs/robust/`:

* `lvi fit --config configs/robust/laf.yaml` trains an MLP `classifier` that overfits 10% of the digits, then the
  `LabelAgnosticForgetting` callback unlearns digit 8 without labels and writes `laf/metrics.json` and
  `laf/unlearned.ckpt`; `python -m lightning_vi.families.robust.laf --config configs/robust/laf.yaml --ckpt PATH`
  does the same for a trained checkpoint.
* `python -m lightning_vi.families.robust.dia --config configs/robust/dia.yml --out DIR` attacks a ReLU dropout MLP's
  shared gradients with the mask-agnostic baseline and with DIA.

Here both run on a small budget.
"""),
    ("code", """
import json
from pathlib import Path

import lightning_vi
import torch
from lightning_vi.cli import build_cli

torch.set_num_threads(1)
CONFIGS = Path(lightning_vi.__file__).resolve().parents[1] / 'configs' / 'robust'
cli = build_cli(['fit', '--config', str(CONFIGS / 'laf.yaml'), '--trainer.max_epochs', '20',
                 '--trainer.logger', 'false', '--trainer.enable_progress_bar', 'false',
                 '--trainer.enable_model_summary', 'false'])
metrics = json.loads(Path('outputs/robust-laf/laf/metrics.json').read_text())
for when in ('before', 'after'):
    print(when, {k: round(v, 3) for k, v in metrics[when].items()})
"""),
    ("markdown", """
Forget-class test accuracy falls to about chance while the other digits keep their accuracy. The membership
attack (loss threshold, forget-class training vs test examples) stays well above 0.5 after unlearning: LAF moves
the class, but the examples it was trained on still have a lower loss than unseen ones (docs/robust.md has the
numbers on 3 seeds, with the retrained-from-scratch reference). The same audit on the saved checkpoint, for
another class:
"""),
    ("code", """
from lightning_vi.families.robust.laf import main as laf_main
again = laf_main(['--config', str(CONFIGS / 'laf.yaml'), '--ckpt', 'outputs/robust-laf/checkpoints/last.ckpt',
                  '--out', 'laf-digit3', '--forget-class', '3'])
"""),
    ("code", """
from lightning_vi.families.robust.dia import main as dia_main
res = dia_main(['--config', str(CONFIGS / 'dia.yml'), '--out', 'dia', '--n', '1', '--steps', '600'])
"""),
    ("markdown", """
On the ReLU MLP only the masks of active units show in the gradient (`visible_fraction` above), so DIA's mask
agreement is high on the visible units (`mask_agreement_visible`) and near chance on the rest. `dia/reconstructions.png`
shows truth, baseline and DIA; the full 2000-step audit is `python -m lightning_vi.families.robust.dia --config
configs/robust/dia.yml --out outputs/robust-dia`.
"""),
]
