"""RePo oracles (P23) on offline point-mass image trajectories (lightning_vi.data.pointmass).

Per seed: 512 training trajectories (8 frames, 16x16 RGB, distractor blob orbiting with a per-trajectory
random colour, jitter 0.5); RePo and the equal-size reconstruction world model each trained 300 Adam steps
(batch 32, lr 3e-3). Oracles: (1) reward MSE on test trajectories with a changed distractor (new colour
(0.3, 0.3, 1.0), bouncing instead of orbiting) is lower for RePo than for the reconstruction model;
(2) the KL constraint (target 1 nat/step) is met: |KL - target| < 20% of target; (3) reward-free encoder
alignment (100 steps) on a shifted background lowers RePo's reward MSE there (on every seed, and by
>30% summed over the seeds).
Measured numbers and mutations: docs/control.md.
"""

from __future__ import annotations

import pytest
import torch

from lightning_vi.core.plain_loop import fit_objective
from lightning_vi.data.pointmass import PointMassDataModule, pointmass_trajectories
from lightning_vi.families.control import RePo, align_encoder, support_loss
from lightning_vi.registry import FAMILIES

SEEDS = (0, 1, 2)
TARGET = 1.0


def _gen(offset: int) -> torch.Generator:
    return torch.Generator().manual_seed(offset)


def _run(seed: int) -> dict[str, float]:
    tr = pointmass_trajectories(512, generator=_gen(seed), distractor_colour_jitter=0.5)
    changed = pointmass_trajectories(256, generator=_gen(2000 + seed), distractor_colour=(0.3, 0.3, 1.0),
                                     distractor_motion="bounce")
    shifted = pointmass_trajectories(256, generator=_gen(3000 + seed), distractor_colour_jitter=0.5,
                                     background_shift=0.3)

    def batches(step: int, g: torch.Generator = _gen(seed)) -> dict[str, torch.Tensor]:
        idx = torch.randint(0, 512, (32,), generator=g)
        return {k: v[idx] for k, v in tr.items()}

    def shifted_obs(step: int, g: torch.Generator = _gen(seed + 7)) -> dict[str, torch.Tensor]:
        idx = torch.randint(0, 256, (32,), generator=g)
        return {k: shifted[k][idx] for k in ("x", "action")}  # no rewards

    out: dict[str, float] = {}
    for objective in ("repo", "reconstruction"):
        torch.manual_seed(seed)
        model = fit_objective(RePo(objective=objective, kl_target=TARGET), batches, 300, lr=3e-3)
        out[f"{objective}_changed"] = model.reward_mse(changed)
        if objective == "repo":
            torch.manual_seed(seed)
            with torch.no_grad():
                model.train()
                out["kl"] = float(model.compute_loss(tr, "train")[1]["kl"])
                model.eval()
            out["beta"] = float(model.beta.detach())
            out["shifted_before"] = model.reward_mse(shifted)
            aligned = align_encoder(model, tr, shifted_obs, steps=100, lr=3e-3, kl_weight=0.1, bank_size=1024)
            out["shifted_after"] = aligned.reward_mse(shifted)
            out["frozen_ok"] = float(all(torch.equal(p, q) for (n, p), (_, q) in zip(
                model.named_parameters(), aligned.named_parameters()) if not n.startswith("encoder.")))
    return out


@pytest.fixture(scope="module")
def runs() -> dict[int, dict[str, float]]:
    torch.set_num_threads(1)
    out = {s: _run(s) for s in SEEDS}
    print({s: {k: round(v, 4) for k, v in r.items()} for s, r in out.items()})
    return out


def test_repo_reward_error_under_changed_distractor_below_reconstruction(runs):
    for seed, r in runs.items():
        assert r["repo_changed"] < 0.5 * r["reconstruction_changed"], (seed, r)


def test_kl_constraint_met_within_tolerance(runs):
    for seed, r in runs.items():
        assert abs(r["kl"] - TARGET) < 0.2 * TARGET, (seed, r)


def test_reward_free_alignment_lowers_error_on_shifted_background(runs):
    for seed, r in runs.items():
        assert r["shifted_after"] < 0.97 * r["shifted_before"], (seed, r)
        assert r["frozen_ok"] == 1.0, "alignment may change only the encoder"
    before = sum(r["shifted_before"] for r in runs.values())
    after = sum(r["shifted_after"] for r in runs.values())
    assert after < 0.7 * before, {s: (r["shifted_before"], r["shifted_after"]) for s, r in runs.items()}


def test_dual_variable_moves_against_constraint_violation():
    """One dual step: KL above target must raise beta, below target lower it (gradient ascent on KL - eps)."""
    batch = pointmass_trajectories(8, generator=_gen(0))
    for target, sign in ((1e-3, 1.0), (1e3, -1.0)):
        torch.manual_seed(0)
        model = RePo(kl_target=target)
        before = float(model.beta.detach())
        fit_objective(model, batch, 1, lr=1e-2)
        assert sign * (float(model.beta.detach()) - before) > 0, (target, before, float(model.beta.detach()))


def test_support_loss_closed_form():
    src = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    tgt = torch.tensor([[0.5, 0.0], [2.0, 1.0]])
    assert torch.isclose(support_loss(tgt, src), torch.tensor((0.25 + 1.0) / 2))
    assert float(support_loss(src, src)) == 0.0


def test_registered_and_logs_terms():
    assert FAMILIES.get("repo") is RePo
    batch = pointmass_trajectories(4, generator=_gen(0))
    _, terms = RePo().compute_loss(batch, "train")
    assert {"reward", "kl", "beta", "kl_primal", "dual", "loss"} <= set(terms)
    _, terms = RePo(objective="reconstruction").compute_loss(batch, "train")
    assert {"reward", "kl", "recon"} <= set(terms)


def test_bad_input_messages():
    with pytest.raises(ValueError, match="objective='vae'.*repo"):
        RePo(objective="vae")
    with pytest.raises(ValueError, match="stoch_dim=0"):
        RePo(stoch_dim=0)
    with pytest.raises(ValueError, match="obs_shape=\\[\\]"):
        RePo(obs_shape=[])
    with pytest.raises(ValueError, match="kl_target=0"):
        RePo(kl_target=0.0)
    model = RePo()
    with pytest.raises(ValueError, match="at least one trajectory"):
        model.reward_mse({"x": torch.zeros(0, 8, 3, 16, 16), "action": torch.zeros(0, 8, 2),
                          "reward": torch.zeros(0, 8)})
    with pytest.raises(ValueError, match="action has shape"):
        model.features(torch.zeros(2, 8, 3, 16, 16), torch.zeros(2, 8, 3))
    with pytest.raises(ValueError, match="non-empty"):
        support_loss(torch.zeros(0, 3), torch.zeros(4, 3))
    with pytest.raises(ValueError, match="distractor_motion='spiral'"):
        pointmass_trajectories(4, distractor_motion="spiral")
    with pytest.raises(ValueError, match="n=0"):
        PointMassDataModule(n=0)
    with pytest.raises(ValueError, match="distractor_colour"):
        pointmass_trajectories(4, distractor_colour=(1.0, 0.0))


def test_lightning_fit_logs_kl_beta_and_checkpoint_rebuilds(tmp_path):
    import lightning as L

    dm = PointMassDataModule(n=40, batch_size=16, distractor_colour_jitter=0.5)
    model = RePo(deter_dim=8, stoch_dim=4, embed_dim=8, hidden_dim=16)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, log_every_n_steps=1)
    trainer.fit(model, dm)
    assert {"train/kl_epoch", "train/beta_epoch", "train/reward_epoch"} <= set(trainer.callback_metrics)
    trainer.save_checkpoint(tmp_path / "repo.ckpt")
    loaded = RePo.load_from_checkpoint(tmp_path / "repo.ckpt")
    batch = dm.splits["test"]
    assert loaded.hparams.stoch_dim == 4
    assert torch.allclose(loaded.predict_reward(batch["x"], batch["action"]),
                          model.eval().predict_reward(batch["x"], batch["action"]))
