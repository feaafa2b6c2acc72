"""GCRL oracles (P25) on synthetic goal-directed trajectories with an environment-specific style.

Data (lightning_vi.data.trajectories, default styles): training environments 0, 1, 2 (speed 0.25/0.35/0.45,
curvature -0.3/0/0.3 rad), unseen environment 3 (speed 0.40, curvature 0.15); 500 trajectories per environment,
8 observed and 12 predicted steps. Per seed: GCRL (z_dim = s_dim = 2) and the ablation (split=False, one latent
of size 4, N(0, I) prior) trained 600 Adam steps (lr 2e-3, batches of 256); low-shot: 10 trajectories of
environment 3, 200 steps at lr 2e-3. ADE/FDE of the posterior-mean prediction on 500 test trajectories of env 3.

Measured (seeds 0, 1, 2):
  zero-shot ADE  split 0.410 0.406 0.391 vs no-split 0.405 0.409 0.386 (FDE 0.516 0.508 0.492 vs 0.506 0.504 0.477):
  the split does NOT win zero-shot here (strict xfail below, docs/gcrl.md);
  low-shot ADE   env-only 0.427 0.441 0.438 vs full fine-tuning 0.485 0.542 0.483 (no-split full 0.492 0.517 0.511),
  FDE env-only 0.535 0.543 0.578 vs full 0.611 0.663 0.597.
Issue 19 third attempt (docs/gcrl.md): on a compositional shift (train envs vary speed or curvature, the unseen
one combines them) the split wins zero-shot, but only through its second encoder: an ablation with a matched
encoder, or the split with an environment-independent N(0, I) prior on S, does as well, so the oracle stays xfail.
Fourth attempt (experiments/p25_gcrl_zero_shot.py): the authors' spurious confidence channel (train alpha 1, 2, 4,
unseen 3 and 8): the split has the lower ADE on 9 of 12 seeds at alpha 3 and 8 of 12 at alpha 8, a width-matched
ablation is as good, and so is the split without the environment prior. Fifth attempt
(experiments/p25_gcrl_interaction.py): two-agent crossing scenes, environments = interaction radius (the authors'
synthetic benchmark), style encoder on relative inter-agent positions: the split is behind on 12 of 12 seeds;
with group walking (the preferred separation visible in the past) on 8-9 of 12.
Mutations (docs/gcrl.md): "env-only" path that trains every parameter -> low-shot test fails (same numbers as
full); env prior without environment dependence -> test_kl_s_uses_the_environment_component fails; split
removed (S read from the Z encoder) -> test_split_has_separate_environment_encoder fails (the low-shot test
still passes: both fine-tuning paths are worse than zero-shot on this data, env-only by less; docs/gcrl.md).
"""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from lightning_vi.data.trajectories import TrajectoryDataModule, goal_trajectories
from lightning_vi.families.causal.gcrl import GCRL, ade_fde, finetune_gcrl, fit_gcrl
from lightning_vi.registry import FAMILIES

SEEDS = (0, 1, 2)


def _run(seed: int) -> dict[str, tuple[float, float]]:
    dm = TrajectoryDataModule(seed=seed, n_per_env=500)
    dm.setup()
    tr, te = dm.splits["train"], dm.splits["test"]
    res, models = {}, {}
    for split in (True, False):
        torch.manual_seed(seed)
        models[split] = fit_gcrl(GCRL(split=split), tr, steps=600, seed=seed)
        res[f"zero_shot_{split}"] = ade_fde(models[split].predict(te["past"]), te["future"])
    shots = dm.shots(10)
    for part in ("env", "all"):
        torch.manual_seed(seed)
        ft = finetune_gcrl(models[True], shots, dm.test_env, part=part, steps=200, lr=2e-3)
        res[f"low_shot_{part}"] = ade_fde(ft.predict(te["past"]), te["future"])
    torch.manual_seed(seed)
    ft = finetune_gcrl(models[False], shots, dm.test_env, part="all", steps=200, lr=2e-3)
    res["low_shot_nosplit"] = ade_fde(ft.predict(te["past"]), te["future"])
    return res


@pytest.fixture(scope="module")
def runs() -> dict[int, dict[str, tuple[float, float]]]:
    torch.set_num_threads(1)
    return {s: _run(s) for s in SEEDS}


def test_low_shot_env_only_beats_full_finetuning(runs):
    for seed, r in runs.items():
        (ade_env, fde_env), (ade_all, fde_all) = r["low_shot_env"], r["low_shot_all"]
        assert ade_env < 0.95 * ade_all, (seed, r)
        assert fde_env < fde_all, (seed, r)
        assert ade_env < r["low_shot_nosplit"][0], (seed, r)


@pytest.mark.xfail(strict=True, reason="measured: zero-shot ADE/FDE of the split model are not lower than the "
                   "ablation's on the unseen environment; re-checked for issue 19 (spurious past nuisance, authors' "
                   "mixture prior; compositional shift, large-style KL pressure, S from the mixture prior): where the "
                   "split wins (compositional shift) a same-size-encoder ablation wins too; fourth attempt, the authors' "
                   "spurious confidence channel: split ahead on 9/12 seeds only, no better than a matched ablation; "
                   "fifth, the authors' two-agent interaction-radius benchmark: split behind on 12/12 (crossing) and 8-9/12 (group) seeds "
                   "(docs/gcrl.md, experiments/p25_gcrl_zero_shot.py, experiments/p25_gcrl_interaction.py)")
def test_zero_shot_split_beats_no_split(runs):
    for seed, r in runs.items():
        assert r["zero_shot_True"][0] < r["zero_shot_False"][0], (seed, r)
        assert r["zero_shot_True"][1] < r["zero_shot_False"][1], (seed, r)


def test_zero_shot_forecasts_beat_constant_velocity(runs):
    """What does hold zero-shot: both models forecast the unseen environment better than extrapolating the
    last observed velocity (an independent baseline computed here)."""
    for seed in SEEDS:
        dm = TrajectoryDataModule(seed=seed, n_per_env=500)
        dm.setup()
        te = dm.splits["test"]
        v = te["past"][:, -1] - te["past"][:, -2]
        steps = torch.arange(1, te["future"].shape[1] + 1, dtype=torch.float32)
        cv = te["past"][:, -1:, :] + steps[None, :, None] * v[:, None, :]
        ade_cv, fde_cv = ade_fde(cv, te["future"])
        for split in (True, False):
            ade, fde = runs[seed][f"zero_shot_{split}"]
            assert ade < ade_cv and fde < fde_cv, (seed, split, ade, ade_cv, fde, fde_cv)


def test_kl_s_uses_the_environment_component():
    """KL(q(S | X) || p(S | E = e)) in the ELBO matches torch.distributions for the batch's own component and
    changes with the environment label (the selection variable)."""
    torch.manual_seed(0)
    model = GCRL(train_envs=[0, 1, 2])
    with torch.no_grad():
        for e in range(3):
            model.prior_mu[str(e)].copy_(torch.tensor([2.0 * e - 2.0, 1.0 - e]))
            model.prior_log_var[str(e)].copy_(torch.tensor([0.3 * e - 0.3, 0.1 * e]))
    batch = goal_trajectories(6, 0.3, 0.0, 0.01, generator=torch.Generator().manual_seed(0))
    mu, log_var = model.posterior(batch["past"])
    q = Normal(mu[:, 2:], (0.5 * log_var[:, 2:]).exp())
    for e in range(3):
        batch["env"] = torch.full((6,), e)
        p = Normal(model.prior_mu[str(e)], (0.5 * model.prior_log_var[str(e)]).exp())
        expected = kl_divergence(q, p).sum(-1).mean()
        assert torch.allclose(model.objective(batch)["kl_s"], expected, atol=1e-5), e
    ref = kl_divergence(Normal(mu[:, :2], (0.5 * log_var[:, :2]).exp()), Normal(0.0, 1.0)).sum(-1).mean()
    assert torch.allclose(model.objective(batch)["kl_z"], ref, atol=1e-5)


def test_split_has_separate_environment_encoder():
    """q(S | X) has its own parameters (the env part); the invariant part does not move in env-only fine-tuning."""
    torch.manual_seed(0)
    model = GCRL(train_envs=[0, 1])
    shots = goal_trajectories(5, 0.5, 0.4, 0.01, env=7, generator=torch.Generator().manual_seed(1))
    ft = finetune_gcrl(model, shots, 7, part="env", steps=5)
    for name, p in model.named_parameters():
        moved = not torch.equal(p, ft.state_dict()[name])
        env_part = name.startswith("enc_s.") or name.endswith(".7")
        assert moved == env_part, name
    mu_z = model.posterior(shots["past"])[0][:, :2]
    assert torch.equal(mu_z, ft.posterior(shots["past"])[0][:, :2])
    assert not torch.equal(model.posterior(shots["past"])[0][:, 2:], ft.posterior(shots["past"])[0][:, 2:])
    assert 7 in ft.known_envs and 7 not in model.known_envs


def test_no_split_ablation_has_no_environment_prior():
    model = GCRL(split=False, z_dim=2, s_dim=3)
    batch = goal_trajectories(4, 0.3, 0.0, 0.01, env=5, generator=torch.Generator().manual_seed(0))
    out = model.objective(batch)
    assert float(out["kl_s"]) == 0.0
    assert model.posterior(batch["past"])[0].shape == (4, 5)
    assert not any("prior" in n for n, _ in model.named_parameters())
    with pytest.raises(ValueError, match="split=True"):
        finetune_gcrl(model, batch, 5, part="env", steps=1)


def test_ade_fde_closed_form():
    future = torch.zeros(2, 3, 2)
    pred = torch.stack([torch.full((2, 3, 2), 3.0), future.clone()])
    pred[1, 0, :, 0] = torch.tensor([0.0, 0.0, 4.0])         # traj 0: sample 1 errs only at the end (ADE 4/3)
    pred[1, 1] = 1.0                                          # traj 1: sample 1 errs sqrt(2) everywhere
    ade, fde = ade_fde(pred, future)
    assert ade == pytest.approx((4 / 3 + 2 ** 0.5) / 2)
    assert fde == pytest.approx((4.0 + 2 ** 0.5) / 2)


@pytest.mark.parametrize("kwargs, match", [
    ({"train_envs": []}, "train_envs=\\[\\] is empty"),
    ({"z_dim": 0}, "z_dim=0"),
    ({"s_dim": 0}, "s_dim=0"),
    ({"train_envs": [1, 1]}, "repeats"),
])
def test_bad_model_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GCRL(**kwargs)


def test_unknown_env_id_is_a_clear_error():
    model = GCRL(train_envs=[0, 1, 2])
    batch = goal_trajectories(4, 0.3, 0.0, 0.01, env=9, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"env ids \[9\].*known environments: \[0, 1, 2\]"):
        model.objective(batch)


@pytest.mark.parametrize("kwargs, match", [
    ({"train_envs": []}, "train_envs=\\[\\] is empty"),
    ({"train_envs": [0, 8]}, "unknown environment ids \\[8\\]"),
    ({"test_env": 1}, "must be unseen"),
    ({"test_env": 6}, "unknown environment ids \\[6\\]"),
    ({"goal_range": (5.0, 3.0)}, "goal_range=\\(5.0, 3.0\\)"),
    ({"goal_range": (0.0, 3.0)}, "goal_range=\\(0.0, 3.0\\)"),
])
def test_bad_data_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrajectoryDataModule(**kwargs)


def test_registered_and_batches_carry_past_future_env():
    assert FAMILIES.get("gcrl") is GCRL
    dm = TrajectoryDataModule(n_per_env=20, batch_size=8)
    batch = next(iter(dm.train_dataloader()))
    assert batch["past"].shape == (8, 8, 2) and batch["future"].shape == (8, 12, 2)
    assert set(batch["env"].tolist()) <= {0, 1, 2}
    assert set(next(iter(dm.test_dataloader()))["env"].tolist()) == {3}


def test_rebuilds_from_hyperparameters():
    torch.manual_seed(0)
    model = GCRL(train_envs=[2, 5], split=True, s_dim=3, hidden_dims=[16])
    clone = GCRL(**model.hparams)
    clone.load_state_dict(model.state_dict())
    past = goal_trajectories(3, 0.3, 0.0, 0.01, generator=torch.Generator().manual_seed(0))["past"]
    assert torch.equal(model(past), clone(past)) and clone.known_envs == [2, 5]


def test_mixture_prior_kl_matches_torch_mixture():
    """s_prior="mixture" (authors' code): kl_s = log q(s | X) - log sum_e pi_e N(s; mu_e, sigma_e^2) at the
    posterior sample s, checked against torch.distributions.MixtureSameFamily with the same sample."""
    from torch.distributions import Categorical, Independent, MixtureSameFamily
    torch.manual_seed(0)
    model = GCRL(train_envs=[0, 1, 2], s_prior="mixture")
    with torch.no_grad():
        model.prior_logits.copy_(torch.tensor([1.5, -1.0, 0.0]))
        for e in range(3):
            model.prior_mu[str(e)].copy_(torch.tensor([1.0 * e - 1.0, 0.5 - 0.5 * e]))
            model.prior_log_var[str(e)].copy_(torch.tensor([0.2 * e - 0.4, -0.1 * e]))
    batch = goal_trajectories(6, 0.3, 0.0, 0.01, generator=torch.Generator().manual_seed(0))
    mu, log_var = model.posterior(batch["past"])
    torch.manual_seed(3)
    kl_s = model.objective(batch)["kl_s"]
    torch.manual_seed(3)
    s = (mu + (0.5 * log_var).exp() * torch.randn_like(mu))[:, 2:]
    q = Independent(Normal(mu[:, 2:], (0.5 * log_var[:, 2:]).exp()), 1)
    comps = Independent(Normal(torch.stack([model.prior_mu[str(e)] for e in range(3)]),
                               torch.stack([(0.5 * model.prior_log_var[str(e)]).exp() for e in range(3)])), 1)
    p = MixtureSameFamily(Categorical(logits=model.prior_logits), comps)
    expected = (q.log_prob(s) - p.log_prob(s)).mean()
    assert torch.allclose(kl_s, expected, atol=1e-5), (float(kl_s), float(expected))
    batch["env"] = torch.full((6,), 2)                          # the loss does not use the environment label
    torch.manual_seed(3)
    assert torch.allclose(model.objective(batch)["kl_s"], kl_s)
    with pytest.raises(ValueError, match="s_prior"):
        GCRL(s_prior="gmm")


def test_goal_range_sets_the_goal_distance():
    """goal_range = (min, max) distance of the goal from the start point (the first observed position)."""
    dm = TrajectoryDataModule(n_per_env=200, goal_range=(8.0, 12.0))
    dm.setup()
    tr = dm.splits["train"]
    dist = (tr["goal"] - tr["past"][:, 0]).norm(dim=-1)
    assert dist.min() >= 8.0 and dist.max() <= 12.0 and dist.max() - dist.min() > 3.0
    default = goal_trajectories(200, 0.3, 0.0, 0.0, generator=torch.Generator().manual_seed(0))
    d0 = (default["goal"] - default["past"][:, 0]).norm(dim=-1)
    assert d0.min() >= 3.0 and d0.max() <= 5.0
