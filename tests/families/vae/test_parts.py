"""The composed VAE family (issue 13): injected parts, one Gaussian KL, renamed arguments, old checkpoints.

Old checkpoints in ``old_checkpoints/`` were written by the code before the refactor (main at 9092eb7, by
``old_checkpoints/make_old.py``) together with the outputs of each model on fixed inputs.
"""

from __future__ import annotations

import inspect
import math
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from torch.distributions import Normal, kl_divergence

from helpers import ROOT, run_lvi
from lightning_vi.core.distributions import GaussianLikelihood, gaussian_kl
from lightning_vi.core.objectives import VariationalObjective
from lightning_vi.families.vae import CEVAE, CVAE, HVAE, VAE, VQVAE
from lightning_vi.nn import ConditionalEncoder, LinearGaussianEncoder

OLD = Path(__file__).parent / "old_checkpoints"
CLASSES = {"vae": VAE, "cvae": CVAE, "hvae": HVAE, "vqvae": VQVAE, "cevae": CEVAE}
OLD_NAMES = ["vae_linear", "vae_mlp_iwae", "cvae_linear", "cvae_conv", "hvae_linear", "hvae_conv", "vqvae", "cevae"]


def _load_quiet(cls, path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the old hparams use beta / k / conv_channels
        return cls.load_from_checkpoint(path, map_location="cpu", **kw)


def _out(model, x):
    model.eval()
    with torch.no_grad():
        return model(x, torch.arange(x.shape[0]) % 3) if isinstance(model, CVAE) else model(x)


# -- one Gaussian KL -------------------------------------------------------------------------------
def test_gaussian_kl_matches_torch_distributions():
    """The one closed form against torch.distributions' own KL (an independent implementation)."""
    g = torch.Generator().manual_seed(0)
    mq, lq, mp, lp = (torch.randn(5, 4, generator=g) for _ in range(4))
    want = kl_divergence(Normal(mq, (0.5 * lq).exp()), Normal(mp, (0.5 * lp).exp()))
    assert torch.allclose(gaussian_kl(mq, lq, mp, lp), want, atol=1e-5)
    std_normal = kl_divergence(Normal(mq, (0.5 * lq).exp()), Normal(0.0, 1.0))
    assert torch.allclose(gaussian_kl(mq, lq), std_normal, atol=1e-5)
    # a float prior (Bayesian layers: N(0, prior_std^2))
    prior_std = 0.3
    want_f = kl_divergence(Normal(mq, (0.5 * lq).exp()), Normal(0.0, prior_std))
    assert torch.allclose(gaussian_kl(mq, lq, 0.0, 2 * math.log(prior_std)), want_f, atol=1e-5)


def test_no_family_keeps_a_private_gaussian_kl():
    src = ROOT / "lightning_vi" / "families"
    for rel in ("vae/cvae.py", "sequence/pvrnn.py", "bayes/layers.py", "vae/cevae.py"):
        text = (src / rel).read_text()
        assert "def gaussian_kl" not in text and "def _kl(" not in text and "def _gauss_kl" not in text, rel


def test_cvae_kl_term_is_the_kl_to_its_learned_prior():
    """The CVAE's ``kl`` term (through the VAE's objective) equals KL(q(z|x,c) || p(z|c)) computed by
    torch.distributions from its own encoder and prior network."""
    torch.manual_seed(0)
    m = CVAE(input_shape=[1, 8, 8], latent_dim=3, condition_dim=4, hidden_dims=[16], prior="learned")
    with torch.no_grad():
        for p in m.prior_net.parameters():
            p.add_(torch.randn_like(p))  # a prior far from N(0, I)
    x, y = torch.rand(6, 1, 8, 8), torch.arange(6) % 4
    c = m.condition_vector(y)
    mu, lv = m.encode(x, c)
    pm, plv = m.prior(mu, c)
    want = kl_divergence(Normal(mu, (0.5 * lv).exp()), Normal(pm, (0.5 * plv).exp())).sum(-1).mean()
    got = m.objective({"x": x, "y": y})["kl"]
    assert torch.allclose(got, want, atol=1e-5), (got, want)
    assert not torch.allclose(want, gaussian_kl(mu, lv).sum(-1).mean(), atol=1e-2)  # the prior matters


# -- parts -----------------------------------------------------------------------------------------
def test_subfamilies_reuse_the_vae_and_cevae_adds_only_its_own_arguments():
    for cls in (CVAE, HVAE, CEVAE):
        assert issubclass(cls, VAE)
    own = set(inspect.signature(CEVAE.__init__).parameters) - {"self", "kwargs"}
    assert own == {"input_shape", "latent_dim", "hidden_dims", "likelihood", "ce_weight", "patch_size", "n_patches",
                   "map_method"}, own
    for cls in (VAE, CVAE, HVAE, CEVAE, VQVAE):  # shared VIModule arguments are not repeated
        params = inspect.signature(cls.__init__).parameters
        assert not {"plugins", "optimizer", "lr_scheduler", "lr", "check_finite"} & set(params), cls
    c = CVAE(input_shape=[6], latent_dim=2, architecture="linear", condition_dim=3)
    assert isinstance(c.encoder, ConditionalEncoder) and isinstance(c.encoder.head, LinearGaussianEncoder)


def test_python_parts_are_used_and_a_python_built_encoder_must_be_passed_again(tmp_path):
    from tests.families.vae.custom_parts import TinyEncoder

    torch.manual_seed(0)
    enc = TinyEncoder([1, 8, 8], 3)
    m = VAE(input_shape=[1, 8, 8], latent_dim=3, hidden_dims=[16], encoder=enc,
            likelihood=GaussianLikelihood(obs_std=0.5),
            objective=VariationalObjective("iwae", num_samples=4, kl_weight=1.0))
    assert m.encoder is enc and not m.analytic and m.term_weights == {"neg_bound": 1.0, "baseline": 1.0}
    x = torch.rand(5, 1, 8, 8)
    loss, terms = m.compute_loss({"x": x}, "train")
    assert int(enc.calls) == 1 and loss.isfinite()
    # likelihood 0.5-std Gaussian: recon is -sum log N(x | mean, 0.5^2) over 64 pixels
    from lightning.pytorch import Trainer

    trainer = Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu")
    trainer.strategy.connect(m)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    with pytest.raises(ValueError, match=r"encoder=tests.families.vae.custom_parts.TinyEncoder was built in Python.*"
                                         r"load_from_checkpoint\(path, encoder=TinyEncoder\(\.\.\.\)\)"):
        VAE.load_from_checkpoint(tmp_path / "m.ckpt")
    again = VAE.load_from_checkpoint(tmp_path / "m.ckpt", encoder=TinyEncoder([1, 8, 8], 3))
    assert isinstance(again.likelihood, GaussianLikelihood) and float(again.likelihood.log_std.exp()) == pytest.approx(0.5)
    assert again.vi_objective.objective == "iwae" and again.vi_objective.num_samples == 4
    assert torch.equal(_out(m, x), _out(again, x))


def test_custom_encoder_by_class_path_trains_through_lvi_fit(tmp_path):
    """A user's own encoder nn.Module, given by class_path in YAML, trains through `lvi fit`, with the
    objective and likelihood parts also given by class_path; the checkpoint rebuilds all three."""
    cfg = yaml.safe_load((ROOT / "configs" / "vae" / "vae_iwae.yaml").read_text())
    cfg["trainer"] = {"max_epochs": 1, "limit_train_batches": 3, "limit_val_batches": 1, "accelerator": "cpu",
                      "logger": False, "enable_progress_bar": False, "default_root_dir": str(tmp_path),
                      "callbacks": [{"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                                     "init_args": {"dirpath": str(tmp_path / "ckpt"), "save_last": True}}]}
    cfg["model"]["init_args"] = {
        "input_shape": [1, 8, 8], "latent_dim": 3, "likelihood": {"class_path": "GaussianLikelihood",
                                                                 "init_args": {"obs_std": 0.4}},
        "encoder": {"class_path": "tests.families.vae.custom_parts.TinyEncoder",
                    "init_args": {"input_shape": [1, 8, 8], "latent_dim": 3, "width": 12}},
        "objective": {"class_path": "lightning_vi.core.objectives.VariationalObjective",
                      "init_args": {"objective": "iwae", "num_samples": 3}},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    run_lvi("fit", "--config", str(tmp_path / "c.yaml"), cwd=tmp_path)
    m = VAE.load_from_checkpoint(tmp_path / "ckpt" / "last.ckpt")
    assert type(m.encoder).__name__ == "TinyEncoder" and m.encoder.net[1].out_features == 12
    assert int(m.encoder.calls) >= 4  # 3 training steps and the validation batch went through it
    assert m.vi_objective.objective == "iwae" and m.vi_objective.num_samples == 3
    assert float(m.likelihood.log_std.exp()) == pytest.approx(0.4)


# -- renamed arguments -----------------------------------------------------------------------------
@pytest.mark.parametrize("cls, old, new, value, attr", [
    (VAE, "beta", "kl_weight", 0.5, lambda m: m.term_weights["kl"]),
    (VAE, "k", "num_samples", 3, lambda m: m.vi_objective.num_samples),
    (VAE, "conv_channels", "channels", [4, 6], lambda m: [m.encoder.conv[0].out_channels, m.encoder.conv[2].out_channels]),
    (CVAE, "beta", "kl_weight", 0.25, lambda m: m.term_weights["kl"]),
    (CEVAE, "k", "num_samples", 2, lambda m: m.vi_objective.num_samples),
    (HVAE, "beta", "kl_weight", [0.5, 2.0], lambda m: [m.term_weights["kl1"], m.term_weights["kl2"]]),
    (VQVAE, "conv_channels", "channels", [4, 6], lambda m: [m.encoder.conv[0].out_channels, m.encoder.conv[2].out_channels]),
    (VariationalObjective, "beta", "kl_weight", 0.5, lambda m: m.kl_weight),
])
def test_old_argument_names_warn_and_mean_the_new_ones(cls, old, new, value, attr, tmp_path):
    kw = {"input_shape": [1, 8, 8], "hidden_dims": [8]} if cls is not VariationalObjective else {}
    if old == "conv_channels":
        kw["architecture"] = "conv"
    if old == "k":
        kw["objective"] = "iwae"
    with pytest.warns(DeprecationWarning, match=rf"'{old}' is deprecated.*use {new}="):
        m = cls(**kw, **{old: value})
    assert attr(m) == value
    new_m = cls(**kw, **{new: value})
    assert attr(new_m) == value
    if cls is VariationalObjective:
        return
    plain = lambda v: list(v) if isinstance(v, (list, tuple)) else v  # noqa: E731
    assert old not in m.hparams and plain(m.hparams[new]) == value
    # from YAML, Lightning stores the given config as the hparams: the new name replaces the old one there too
    from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters_context

    with pytest.warns(DeprecationWarning), _given_hyperparameters_context(
            hparams={**kw, old: value}, instantiator="lightning.pytorch.cli.instantiate_module"):
        m = cls(**kw, **{old: value})
    assert old not in m.hparams and plain(m.hparams[new]) == value, dict(m.hparams)
    with pytest.raises(ValueError, match=rf"{old}=.* and {new}=.* name the same argument; give only {new}"):
        cls(**kw, **{old: value, new: [9, 9] if isinstance(value, list) else 7})


# -- old checkpoints -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", OLD_NAMES)
def test_checkpoints_written_before_the_refactor_load_to_identical_outputs(name):
    x, want = torch.load(OLD / "old_outputs.pt")[name]
    m = _load_quiet(CLASSES[name.split("_")[0]], OLD / f"old_{name}.ckpt")
    # equal up to float32 rounding (the fixtures were computed with several threads, the tests use one)
    assert torch.allclose(_out(m, x), want, rtol=0, atol=1e-6), (_out(m, x) - want).abs().max()


def _old_format(model) -> dict[str, torch.Tensor]:
    """The model's state dict under the names the code before the refactor used (the inverse renames)."""
    inverse = [("encoder.features.", "encoder_x."), ("encoder.head.log_var", "enc_log_var"),
               ("encoder.head.", "encoder_head."), ("likelihood.log_std", "log_obs_std")]
    if isinstance(model, HVAE):
        inverse = [("encoder.log_var", "enc_log_var1"), ("enc2.log_var", "enc_log_var2"), ("encoder.", "enc1."),
                   ("decoder.", "dec1."), *inverse]
    else:
        inverse.insert(0, ("encoder.log_var", "enc_log_var"))
    out = {}
    for key, v in model.state_dict().items():
        for new, old in inverse:
            if key.startswith(new):
                key = old + key[len(new):]
                break
        out[key] = v
    return out


@pytest.mark.parametrize("make", [
    lambda: VAE(input_shape=[5], latent_dim=2, architecture="linear"),
    lambda: CVAE(input_shape=[5], latent_dim=2, architecture="linear", condition_dim=3, prior="learned",
                 likelihood="gaussian"),
    lambda: CVAE(input_shape=[1, 8, 8], latent_dim=2, architecture="conv", channels=[4], hidden_dims=[8], condition_dim=3),
    lambda: HVAE(input_shape=[5], latent_dims=[3, 2], architecture="linear"),
])
def test_old_format_state_dict_is_renamed_on_load(make, tmp_path):
    torch.manual_seed(0)
    src = make()
    with torch.no_grad():  # non-default values everywhere, so a wrong rename cannot pass
        for p in src.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    old = _old_format(src)
    assert set(old) != set(src.state_dict())  # the fixture really is in the old format
    torch.manual_seed(1)
    dst = make()
    ckpt = {"state_dict": dict(old)}
    dst.on_load_checkpoint(ckpt)
    dst.load_state_dict(ckpt["state_dict"], strict=True)
    x = torch.rand(4, *src.input_shape)
    assert torch.equal(_out(src, x), _out(dst, x))


def test_an_unknown_old_key_still_fails_loudly():
    m = VAE(input_shape=[5], latent_dim=2, architecture="linear")
    ckpt = {"state_dict": {**_old_format(m), "enc_mystery": torch.zeros(2)}}
    m.on_load_checkpoint(ckpt)
    with pytest.raises(RuntimeError, match="enc_mystery"):
        m.load_state_dict(ckpt["state_dict"], strict=True)


def test_resuming_a_pre_refactor_fit_gives_each_parameter_its_own_optimizer_moments(tmp_path):
    """old_hvae_linear_resume.ckpt: 3 Adam steps of a linear HVAE with the code before the refactor, whose
    parameters were registered in another order (enc_log_var1, enc_log_var2, log_obs_std, enc1, enc2, dec2,
    dec1). After the renames each new parameter must carry the moments of its old self, and fit resumes."""
    import lightning as L

    from lightning_vi.data import PPCADataModule

    path = OLD / "old_hvae_linear_resume.ckpt"
    raw = torch.load(path, weights_only=False)
    old_names = ["enc_log_var1", "enc_log_var2", "log_obs_std", "enc1.0.weight", "enc1.0.bias", "enc2.0.weight",
                 "enc2.0.bias", "dec2.0.weight", "dec2.0.bias", "dec1.0.0.weight", "dec1.0.0.bias"]
    old_moments = {n: raw["optimizer_states"][0]["state"][i]["exp_avg"] for i, n in enumerate(old_names)}
    new_of = {"enc_log_var1": "encoder.log_var", "enc_log_var2": "enc2.log_var", "log_obs_std": "likelihood.log_std"}
    m = HVAE(input_shape=[6], latent_dims=[2, 2], architecture="linear", likelihood="gaussian", lr=0.01)
    ckpt = torch.load(path, weights_only=False)
    m.on_load_checkpoint(ckpt)
    m.load_state_dict(ckpt["state_dict"])
    opt = m.configure_optimizers()
    opt.load_state_dict(ckpt["optimizer_states"][0])
    params = dict(m.named_parameters())
    for old, moment in old_moments.items():
        new = new_of.get(old, old.replace("enc1.", "encoder.").replace("dec1.", "decoder."))
        assert torch.equal(opt.state[params[new]]["exp_avg"], moment), (old, new)
    dm = PPCADataModule(n=200, dim=6, scales=[2.0, 1.0], sigma=0.5, batch_size=100)
    trainer = L.Trainer(max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, accelerator="cpu", default_root_dir=tmp_path)
    fresh = HVAE(input_shape=[6], latent_dims=[2, 2], architecture="linear", likelihood="gaussian", lr=0.01)
    trainer.fit(fresh, dm, ckpt_path=path)
    assert trainer.global_step == 4
