"""DDMI oracles on seeds 0, 1, 2 (the pipeline of tests/families/diffusion/test_ddmi.py, which runs seed 0).

    python benchmarks/ddmi.py            # all seeds -> benchmarks/results/ddmi.json
    python benchmarks/ddmi.py 1 2        # some seeds (merged into the JSON)
    python benchmarks/ddmi.py --mutation zero_embeddings 0   # a mutation (not written to the JSON)

Mutations: ``zero_embeddings`` (the adaptive embeddings are zeroed), ``coords_01`` (query coordinates on
[0, 1]^2 instead of [-1, 1]^2: grid_sample then reads only the bottom-right quarter of each embedding grid),
``single_level`` (one HPE level, the 4x4 latent resolution).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "families" / "diffusion"))
torch.set_num_threads(1)

import test_ddmi as T  # noqa: E402
from lightning_vi.families.diffusion import ddmi as D  # noqa: E402


def mutate(name: str):
    if name == "zero_embeddings":
        orig = D.D2CVAE.positional_embeddings
        D.D2CVAE.positional_embeddings = lambda self, z: [g * 0 for g in orig(self, z)]
        return {}
    if name == "coords_01":
        orig = D.pixel_coords
        D.pixel_coords = lambda h, w=None, device=None: (orig(h, w, device) + 1) / 2
        return {}
    if name == "single_level":
        return {"levels": 1}
    raise ValueError(f"mutation={name!r}; allowed: zero_embeddings, coords_01, single_level")


def run(seed: int, overrides: dict) -> dict:
    t = time.time()
    adaptive, fixed = T.train_vaes(seed, **overrides)
    out = {"params_adaptive": sum(p.numel() for p in adaptive.parameters()),
           "params_fixed": sum(p.numel() for p in fixed.parameters()),
           "adaptive": T.reconstruction_scores(adaptive, seed), "fixed": T.reconstruction_scores(fixed, seed)}
    with tempfile.TemporaryDirectory() as d:
        ddmi = T.train_ddmi(adaptive, Path(d) / "d2c.ckpt", seed)
    out["generation"] = T.generation_scores(ddmi, T.fit_shape_classifier(seed), seed)
    out["seconds"] = round(time.time() - t, 1)
    return out


def main(argv: list[str]) -> None:
    mutation = None
    if argv[:1] == ["--mutation"]:
        mutation, argv = argv[1], argv[2:]
    overrides = mutate(mutation) if mutation else {}
    seeds = [int(s) for s in argv] or [0, 1, 2]
    path = ROOT / "benchmarks" / "results" / "ddmi.json"
    results = json.loads(path.read_text()) if path.exists() and not mutation else {}
    for seed in seeds:
        r = run(seed, overrides)
        print(json.dumps({"seed": seed, "mutation": mutation, **r}), flush=True)
        if not mutation:
            results[str(seed)] = r
            path.write_text(json.dumps(dict(sorted(results.items())), indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
