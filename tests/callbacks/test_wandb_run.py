"""W&B runs through `lvi` tell the truth: exit codes, resumed run ids, best-value summaries, group/job type,
checkpoint artifacts and a clean debug log. Everything is read back from what the real wandb client wrote in
its offline run folder (the ``run-<id>.wandb`` record log, decoded here with wandb's own protobuf messages)."""

from __future__ import annotations

import contextlib
import json
import re
import struct
from pathlib import Path

import pytest
import torch
from wandb.sdk.lib.asyncio_manager import AlreadyJoinedError

from helpers import ROOT, run_lvi
from lightning_vi.callbacks.wandb_run import RUN_ID_KEY, WandbRunRecord, summary_mode
from lightning_vi.cli import main

QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
TINY = ["--config", QUICKSTART, "--smoke", "false", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
NO_MEDIA = ["--trainer.callbacks", "[{class_path: lightning.pytorch.callbacks.ModelCheckpoint, init_args: "
            "{dirpath: outputs/quickstart/checkpoints, monitor: val/loss, save_last: true}}]"]
NAN_PLUGIN = '''
import torch
from lightning_vi.plugins.base import Plugin


class NaNAfter(Plugin):
    """Adds a NaN loss term from global step ``step`` on."""

    def __init__(self, step: int = 3) -> None:
        self.step = step

    def extra_terms(self, outputs, batch, module):
        return {"poison": torch.tensor(float("nan") if module.global_step >= self.step else 0.0)}
'''


def records(path: Path) -> list:
    """Decode a ``.wandb`` file: a 7-byte ``:W&B`` header, then LevelDB-log blocks of 32 KiB whose chunks
    (crc32, uint16 length, type FULL=1/FIRST=2/MIDDLE=3/LAST=4) carry serialized ``Record`` protobufs."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B", data[:7]
    pos, chunk, out = 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        pos += 7
        chunk += data[pos:pos + n]
        pos += n
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(chunk)
            out.append(rec)
            chunk = b""
    return out


class Run:
    """What one offline run folder says: run record, history rows, final summary, exit code, artifacts."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        recs = records(next(folder.glob("run-*.wandb")))
        kinds = [r.WhichOneof("record_type") for r in recs]
        self.info = next(r.run for r, k in zip(recs, kinds) if k == "run")
        self.history = [{i.nested_key[0] if i.nested_key else i.key: json.loads(i.value_json) for i in r.history.item}
                        for r, k in zip(recs, kinds) if k == "history"]
        self.summary: dict = {}
        for r, k in zip(recs, kinds):
            if k == "summary":
                for u in r.summary.update:
                    self.summary[u.nested_key[0] if u.nested_key else u.key] = json.loads(u.value_json)
        exits = [r.exit for r, k in zip(recs, kinds) if k == "exit"]
        self.exit_code = exits[-1].exit_code if exits else None
        self.artifacts = [r.artifact for r, k in zip(recs, kinds) if k == "artifact"]
        self.debug_log = (folder / "logs" / "debug.log").read_text()

    def values(self, key: str) -> list[float]:
        return [row[key] for row in self.history if key in row]


def wandb_runs(root: Path) -> list[Run]:
    """The runs under the quickstart's save_dir; first shuts wandb's service down so that it has flushed its
    record logs (an in-process `finish` returns before the service's writer closes the file)."""
    import wandb

    wandb.teardown()
    return [Run(f) for f in sorted((root / "outputs/quickstart/wandb").glob("offline-run-*"))]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """A tmp cwd for in-process `lvi` calls; whatever happens, no wandb run outlives the test."""
    import wandb

    monkeypatch.chdir(tmp_path)
    yield tmp_path
    # a run left open (the bug these tests catch) cannot be finished after `wandb_runs` tore the service down
    with contextlib.suppress(AlreadyJoinedError):
        wandb.finish()


def test_summary_mode_by_monitor_and_name():
    assert summary_mode("val/loss") == "min" and summary_mode("train/loss_epoch") == "min"
    assert summary_mode("val/acc") == "max" and summary_mode("test/accuracy") == "max"
    assert summary_mode("val/elbo") == "max" and summary_mode("val/nll") == "min"
    assert summary_mode("val/recon") is None and summary_mode("epoch") is None
    assert summary_mode("val/recon", {"val/recon": "max"}) == "max"
    with pytest.raises(ValueError, match=r"summary modes \{'val/loss': 'lowest'\}.*\('min', 'max'\)"):
        WandbRunRecord(summary={"val/loss": "lowest"})


def test_lvi_success_exits_zero_with_best_summary_group_job_type_and_clean_log(tmp_path):
    """A 4-epoch quickstart in a real `lvi` process; lr 0.02 makes val/loss go up and down (seed 0: 171.0, 181.2,
    177.6, 172.3), so the best value is neither the first, nor the last, nor the largest."""
    run_lvi("fit", *TINY, *NO_MEDIA, "--trainer.max_epochs", "4", "--model.init_args.optimizer.init_args.lr", "0.02",
            cwd=tmp_path)
    (run,) = wandb_runs(tmp_path)
    assert run.exit_code == 0 and "got exitcode: 0" in run.debug_log
    assert "HandleAbandonedError" not in run.debug_log and "abandoning" not in run.debug_log
    assert (run.info.run_group, run.info.job_type) == ("quickstart-vae", "fit")
    history = run.values("val/loss")
    assert len(history) == 4 and min(history) != history[-1], history
    assert run.summary["val/loss"] == {"min": min(history), "last": history[-1]}
    elbo = run.values("val/elbo")  # higher is better: the summary keeps the maximum
    assert run.summary["val/elbo"] == {"max": max(elbo), "last": elbo[-1]}
    train = run.values("train/loss_epoch")
    assert run.summary["train/loss_epoch"]["min"] == min(train)
    # ModelCheckpoint (monitor val/loss, mode min) is an independent record of the best value
    ckpt = torch.load(tmp_path / "outputs/quickstart/checkpoints/last.ckpt", weights_only=True)
    best = next(v["best_model_score"] for k, v in ckpt["callbacks"].items() if k.startswith("ModelCheckpoint"))
    assert run.summary["val/loss"]["min"] == pytest.approx(float(best), rel=1e-6)
    assert ckpt[RUN_ID_KEY] == run.info.run_id


def test_nan_loss_run_is_marked_failed_and_keeps_what_was_saved(in_tmp, monkeypatch):
    (in_tmp / "nan_after.py").write_text(NAN_PLUGIN)
    monkeypatch.syspath_prepend(str(in_tmp))
    plugins = "[{class_path: nan_after.NaNAfter, init_args: {step: 3}}]"
    with pytest.raises(SystemExit) as exc:
        main(["fit", *TINY, *NO_MEDIA, "--trainer.max_epochs", "3", "--model.init_args.plugins", plugins,
              "--trainer.logger.init_args.log_model", "true"])
    assert exc.value.code not in (0, None)
    (run,) = wandb_runs(in_tmp)
    assert run.exit_code == 1
    assert run.summary["lvi/error"].startswith("NonFiniteLossError: Non-finite training loss at global step 3")
    assert len(run.values("val/loss")) == 1  # epoch 0 was logged before the NaN in epoch 1
    last = torch.load(in_tmp / "outputs/quickstart/checkpoints/last.ckpt", weights_only=True)
    assert last["global_step"] == 2 and last[RUN_ID_KEY] == run.info.run_id
    # log_model=True: the checkpoints saved before the failure are logged although the run failed
    names = {json.loads(a.metadata)["original_filename"] for a in run.artifacts}
    assert names == {"last.ckpt", "epoch=0-step=2.ckpt"}, names


def test_resumed_fit_continues_the_same_run_and_test_joins_its_group(in_tmp):
    main(["fit", *TINY, *NO_MEDIA, "--trainer.max_epochs", "1"])
    last = in_tmp / "outputs/quickstart/checkpoints/last.ckpt"
    main(["fit", *TINY, *NO_MEDIA, "--trainer.max_epochs", "2", "--ckpt_path", str(last)])
    main(["test", *TINY, *NO_MEDIA, "--trainer.limit_test_batches", "1", "--ckpt_path", str(last)])
    first, resumed, tested = sorted(wandb_runs(in_tmp), key=lambda r: r.info.start_time.ToNanoseconds())
    assert resumed.info.run_id == first.info.run_id and resumed.folder != first.folder
    # wandb names a folder offline-run-<second>-<id>, adding "-1" when a run of that id started in the same second
    same_id = re.compile(rf"^offline-run-\d{{8}}_\d{{6}}-{first.info.run_id}(-\d+)?$")
    assert same_id.match(resumed.folder.name) and same_id.match(first.folder.name), (first.folder, resumed.folder)
    assert torch.load(last, weights_only=True)[RUN_ID_KEY] == first.info.run_id
    assert [r.exit_code for r in (first, resumed, tested)] == [0, 0, 0]
    steps = [r.values("trainer/global_step") for r in (first, resumed)]  # continued training, not restarted
    assert min(steps[1]) > max(steps[0]), steps
    assert tested.info.run_id != first.info.run_id
    assert [(r.info.run_group, r.info.job_type) for r in (first, resumed, tested)] == [
        ("quickstart-vae", "fit"), ("quickstart-vae", "fit"), ("quickstart-vae", "test")]


def test_user_group_job_type_monitor_mode_and_log_model_artifacts(in_tmp):
    """The user's group/job type win; a monitor with no name rule (val/recon) gets its ModelCheckpoint's mode;
    log_model=True logs the best and the last checkpoint as `model` artifacts."""
    callbacks = ("[{class_path: lightning.pytorch.callbacks.ModelCheckpoint, init_args: "
                 "{dirpath: outputs/quickstart/checkpoints, monitor: val/recon, mode: min, save_last: true}}]")
    main(["fit", *TINY, "--trainer.callbacks", callbacks, "--trainer.max_epochs", "3",
          "--model.init_args.optimizer.init_args.lr", "0.02", "--trainer.logger.init_args.group", "sweep-7",
          "--trainer.logger.init_args.job_type", "ablation", "--trainer.logger.init_args.log_model", "true"])
    (run,) = wandb_runs(in_tmp)
    assert (run.info.run_group, run.info.job_type) == ("sweep-7", "ablation")
    assert run.exit_code == 0
    recon = run.values("val/recon")
    assert run.summary["val/recon"] == {"min": min(recon), "last": recon[-1]}, recon
    ckpt = torch.load(in_tmp / "outputs/quickstart/checkpoints/last.ckpt", weights_only=True)
    state = next(v for k, v in ckpt["callbacks"].items() if k.startswith("ModelCheckpoint"))
    models = [a for a in run.artifacts if a.type == "model"]
    names = {json.loads(a.metadata)["original_filename"] for a in models}
    assert names == {"last.ckpt", Path(state["best_model_path"]).name}, names
    best = next(a for a in models if "best" in a.aliases)
    assert json.loads(best.metadata)["original_filename"] == Path(state["best_model_path"]).name
    assert json.loads(best.metadata)["ModelCheckpoint"]["monitor"] == "val/recon"
