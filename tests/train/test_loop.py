"""The training loop: smoke runs, exact resume from a checkpoint, divergence, early stopping,
configuration errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from gatedrnn.cli import main
from gatedrnn.data.registry import DataMissingError, locate
from gatedrnn.train import TrainConfig, train
from gatedrnn.train.loop import _build_model, _build_task

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
SMOKE = dict(smoke=True, hidden_size=16, epochs=4, lr=1e-2, batch_size=8)


@pytest.mark.parametrize("task", ["jsb", "adding"])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_smoke_run_completes_and_records(task, cell):
    result = train(TrainConfig(task=task, cell=cell, **SMOKE))
    assert result.status == "completed"
    assert [r.epoch for r in result.history] == [1, 2, 3, 4]
    assert result.history[-1].updates == 4 * result.history[0].updates
    assert result.history[-1].train_loss < result.history[0].train_loss
    metric = "nll" if task == "jsb" else "mse"
    assert set(result.test) == {metric} and set(result.train) == {metric}
    assert result.best_valid == result.history[result.best_epoch - 1].valid
    assert result.saved_bytes > 0 and result.parameters > 0
    assert result.seconds_per_epoch > 0


class _StopAfter:
    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def __call__(self, record) -> None:
        if record.epoch == self.epochs:
            raise KeyboardInterrupt  # as Ctrl-C would, just after the epoch's checkpoint


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_resume_equals_an_uninterrupted_run(tmp_path, cell):
    # batch 16: forward-only, auto would take torch's LSTM there (the backend record below)
    options = {**SMOKE, "batch_size": 16}
    config = TrainConfig(task="jsb", cell=cell, num_layers=2, dropout=0.3, **options)
    whole = train(config)
    path = tmp_path / "run.pt"
    first = train(config, checkpoint=path, on_epoch=_StopAfter(3))
    assert first.status == "interrupted" and first.test is not None  # still tests its best
    resumed = train(config, checkpoint=path)
    assert resumed.status == "completed"
    assert [r.valid for r in resumed.history] == [r.valid for r in whole.history]
    assert resumed.test == whole.test
    assert resumed.backend == whole.backend  # what trained, not what a forward-only call picks
    saved = torch.load(path, weights_only=True)  # loadable without pickle
    assert saved["state"]["epoch"] == 4 and saved["config"] == config.to_dict()


def test_a_checkpoint_from_before_the_cuda_peak_resumes(tmp_path):
    config = TrainConfig(task="adding", cell="gru", **SMOKE)
    path = tmp_path / "run.pt"
    train(config, checkpoint=path, on_epoch=_StopAfter(2))
    saved = torch.load(path, weights_only=True)
    assert saved["state"].pop("peak_cuda_bytes") is None  # on the CPU
    torch.save(saved, path)  # as an earlier version wrote it
    resumed = train(config, checkpoint=path)
    assert resumed.status == "completed" and len(resumed.history) == 4
    assert resumed.peak_cuda_bytes is None


def test_a_kernel_fault_fails_the_run_before_its_epoch_is_kept(tmp_path, monkeypatch):
    """The triton kernels' barrier faults surface one call late; the loop looks for one before
    each epoch's checkpoint, so the epoch in which it happened is not kept: a run stopped by it
    resumes from the epoch before and ends as an unfaulted one."""
    pytest.importorskip("triton")
    from gatedrnn.backends import gpu

    config = TrainConfig(task="adding", cell="gru", **SMOKE)
    whole = train(config)
    epochs = []

    def fault_in_epoch_3() -> None:
        epochs.append(len(epochs) + 1)
        if len(epochs) == 3:
            raise RuntimeError("a grid barrier of the triton backend timed out")

    monkeypatch.setattr(gpu, "raise_pending_faults", fault_in_epoch_3)
    path = tmp_path / "run.pt"
    with pytest.raises(RuntimeError, match="grid barrier"):
        train(config, checkpoint=path)
    assert torch.load(path, weights_only=True)["state"]["epoch"] == 2
    monkeypatch.undo()
    resumed = train(config, checkpoint=path)
    assert [r.valid for r in resumed.history] == [r.valid for r in whole.history]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_peak_is_this_runs_own(tmp_path):
    """Each run's CUDA peak is its own (not the largest of the process's earlier runs) and
    survives a resume."""
    options = {**SMOKE, "device": "cuda", "epochs": 2}
    large = train(TrainConfig(task="adding", cell="lstm", **{**options, "hidden_size": 512}))
    small = train(TrainConfig(task="adding", cell="gru", **options))
    assert 0 < small.peak_cuda_bytes < large.peak_cuda_bytes
    config = TrainConfig(task="adding", cell="lstm", **{**options, "hidden_size": 512})
    path = tmp_path / "run.pt"
    train(config, checkpoint=path, on_epoch=_StopAfter(2))  # every epoch done
    train(TrainConfig(task="adding", cell="gru", **options))  # resets the device's peak
    resumed = train(config, checkpoint=path)  # evaluates only
    assert resumed.peak_cuda_bytes >= 0.9 * large.peak_cuda_bytes


def test_checkpoint_of_another_configuration_is_refused(tmp_path):
    path = tmp_path / "run.pt"
    train(TrainConfig(task="adding", epochs=1, smoke=True, hidden_size=8), checkpoint=path)
    with pytest.raises(ValueError, match="holds a run of another configuration"):
        train(TrainConfig(task="adding", epochs=1, smoke=True, hidden_size=9), checkpoint=path)


def test_a_diverging_run_is_recorded_as_diverged():
    config = TrainConfig(task="adding", cell="rnn", optimizer="sgd", lr=1e12, clip_norm=0,
                         smoke=True, hidden_size=16, epochs=3)  # fmt: skip
    result = train(config)
    assert result.status == "diverged"
    assert "at update" in result.reason or "validation" in result.reason


def test_early_stopping_on_a_flat_validation_metric():
    # an lr far below float32 resolution leaves the weights unchanged: no epoch improves
    config = TrainConfig(task="adding", lr=1e-30, patience=2, epochs=10, smoke=True, hidden_size=8)
    result = train(config)
    assert result.status == "completed"
    assert len(result.history) == 3 and result.best_epoch == 1
    assert result.reason == "early stopping after 3 epochs"


def test_step_schedule_follows_zaremba():
    config = TrainConfig(task="adding", optimizer="sgd", lr=1.0, schedule="step", lr_decay=0.5,
                         decay_start=2, epochs=4, smoke=True, hidden_size=8)  # fmt: skip
    assert [r.lr for r in train(config).history] == [1.0, 1.0, 0.5, 0.25]


@pytest.mark.parametrize(
    "values, message",
    [
        ({"hiden_size": 3}, "hiden_size: unknown key; expected one of: .*hidden_size"),
        ({"hidden_size": "big"}, "hidden_size: expected int, got str 'big'"),
        ({"hidden_size": True}, "hidden_size: expected int, got bool"),
        ({"lr": -1}, r"lr: expected a number > 0, got -1.0"),
        ({"optimizer": "lbfgs"}, "optimizer: expected one of .*adam"),
        ({"fraction": 0}, r"fraction: expected a number in \(0, 1\], got 0.0"),
        ({"backend": "fastest"}, "backend: expected 'auto' or one of .*'cudnn'.*got 'fastest'"),
        ({"device": "gpu0"}, "device: expected a torch device such as 'cpu'.*got 'gpu0'"),
        ({"task": "mnist"}, "task: expected one of .*'jsb'.*got 'mnist'"),
        ({"cell": "lstn"}, "cell: expected one of .*'lstm'.*got 'lstn'"),
        # batch_first would make the model read time as the batch: refused, not run wrongly
        (
            {"cell": "lstm", "cell_options": {"batch_first": True}},
            "cell_options: unknown option 'batch_first' for cell 'lstm'; expected one of: "
            "peepholes, coupled, bias, init, forget_bias",
        ),
        (
            {"cell": "gru", "cell_options": {"forget_bias": 1.0}},
            "cell_options: unknown option 'forget_bias'",
        ),
        ({"cell": "gru", "cell_options": {"reset": "mid"}}, "cell_options: option 'reset' of cell"),
        (
            {"cell": "lstm", "cell_options": {"bias": False, "forget_bias": 1.0}},
            "cell_options: forget_bias=1.0 cannot be applied: bias=False",
        ),
        ({"cell": "rnn", "cell_options": {"bias": 1}}, "cell_options: option 'bias' of cell"),
        (
            {"cell": "rnn", "cell_options": {"init": "xavier"}},
            "cell_options: unknown init 'xavier'",
        ),
        (
            {"task": "jsb", "task_options": {"steps": 3}},
            "task_options: unknown option 'steps' for task 'jsb'; expected one of: chunk",
        ),
        (
            {"task": "copy", "task_options": {"steps": 2.5}},
            "task_options: option 'steps' of task 'copy': expected int | None, got float 2.5",
        ),
        (
            {"task": "sst2", "task_options": {"dropout": 1}},
            r"task_options: option 'dropout' of task 'sst2': expected a number in \[0, 1\)",
        ),
        (
            {"task": "fsdd", "task_options": {"n_mfcc": True}},
            "task_options: option 'n_mfcc' of task 'fsdd': expected int",
        ),
        ({"weight_noise": -0.1}, r"weight_noise: expected a number >= 0 \(0: none\), got -0.1"),
    ],
)
def test_bad_configuration_names_the_key(values, message):
    with pytest.raises(ValueError, match=f"trial.{message}"):
        TrainConfig.from_dict(values, where="trial")


def test_the_layer_options_a_run_accepts_reach_the_layer():
    config = TrainConfig(
        task="adding",
        cell="lstm",
        hidden_size=8,
        smoke=True,
        epochs=1,
        cell_options={"bias": False, "init": "orthogonal", "peepholes": True},
    )
    task = _build_task(config, None)
    model, _ = _build_model(config, task, torch.device("cpu"))
    layer = model.rnn
    assert (layer.bias, layer.init, layer.peepholes) == (False, "orthogonal", True)


def test_every_setting_is_explained_in_the_train_help(capsys):
    from gatedrnn.train.config import HELP

    assert set(HELP) == set(TrainConfig.__dataclass_fields__)
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--weight-noise WEIGHT_NOISE std of Gaussian noise on every parameter" in text


def test_config_key_is_stable_and_distinguishes():
    assert TrainConfig().key == TrainConfig().key
    assert TrainConfig(seed=1).key != TrainConfig(seed=2).key
    # the keys of studies stored before weight_noise existed: they still resume
    assert TrainConfig().key == "f5c197cddab9cf58"
    assert TrainConfig(task="adding", cell="lstm", seed=3).key == "fa7c2182f024235a"
    assert TrainConfig(weight_noise=0.075).key != TrainConfig().key
    assert TrainConfig(probes=3).key != TrainConfig().key


def _probed_and_plain(task: str, data_dir=None, **options):
    plain = train(TrainConfig(task=task, cell="gru", **options), data_dir=data_dir)
    probed = train(TrainConfig(task=task, cell="gru", probes=3, **options), data_dir=data_dir)
    assert [r.valid for r in probed.history] == [r.valid for r in plain.history]
    assert [r.train_loss for r in probed.history] == [r.train_loss for r in plain.history]
    assert probed.test == plain.test and probed.best_epoch == plain.best_epoch
    assert all(r.probes == [] for r in plain.history)
    return probed, plain


def test_probes_validate_within_epochs_and_leave_the_training_as_it_was():
    """Probes add validations at evenly spaced updates of each epoch, for the convergence
    claim; the run is the same update for update, and the model is still chosen at epoch
    ends."""
    probed, plain = _probed_and_plain("jsb", **{**SMOKE, "batch_size": 4})
    per_epoch = plain.history[0].updates
    assert per_epoch >= 4  # else the probes below would coincide
    for record in probed.history:
        start = record.updates - per_epoch
        updates = [p["updates"] - start for p in record.probes]
        assert updates == [round(per_epoch * k / 4) for k in (1, 2, 3)]
        elapsed = [p["elapsed"] for p in record.probes]
        assert elapsed == sorted(elapsed) and elapsed[-1] <= record.elapsed
        assert all(set(p["valid"]) == set(record.valid) for p in record.probes)
    values = {p["valid"]["nll"] for r in probed.history for p in r.probes}
    assert len(values) == 3 * len(probed.history)  # each probe measured its own model


@pytest.mark.realdata
def test_probes_leave_a_language_models_carried_state_alone():
    """Validation resets the state a language model carries between training windows; a probe
    evaluates a copy, so the training that follows it is the same."""
    try:
        locate("ptb", SHARED, verify=False)
    except DataMissingError:
        pytest.skip("../shared/data holds no ptb")
    probed, _ = _probed_and_plain("ptb", SHARED, **{**SMOKE, "epochs": 2, "batch_size": 4})
    assert all(len(r.probes) == 3 for r in probed.history)


def test_a_checkpoint_written_before_probes_existed_resumes(tmp_path):
    config = TrainConfig(task="adding", cell="gru", **SMOKE)
    path = tmp_path / "run.pt"
    train(config, checkpoint=path, on_epoch=_StopAfter(2))
    saved = torch.load(path, weights_only=True)
    del saved["config"]["probes"]  # as an earlier version wrote it
    for record in saved["state"]["history"]:
        del record["probes"]
    torch.save(saved, path)
    resumed = train(config, checkpoint=path)
    assert resumed.status == "completed" and len(resumed.history) == 4
    assert resumed.history[0].probes == []


def test_weight_noise_perturbs_each_update_and_leaves_clean_weights(monkeypatch):
    """Each update's forward and backward see every parameter plus N(0, std²) noise, and the
    optimizer updates the clean values: with a vanishing learning rate each update starts from
    the weights the previous one started from, not from the noisy ones."""
    from gatedrnn.train import loop

    seen = []  # per update: (noisy, clean) parameters
    original = loop._add_weight_noise

    def spy(model, std):
        clean = original(model, std)
        seen.append(([p.detach().clone() for p in model.parameters()], clean))
        return clean

    monkeypatch.setattr(loop, "_add_weight_noise", spy)
    options = {**SMOKE, "epochs": 1, "lr": 1e-9, "optimizer": "sgd", "weight_noise": 0.1}
    result = train(TrainConfig(task="adding", cell="gru", **options))
    assert result.status == "completed" and len(seen) == result.history[0].updates > 1
    noisy, clean = seen[0]
    noise = torch.cat([(a - b).flatten() for a, b in zip(noisy, clean, strict=True)])
    assert abs(noise.std().item() - 0.1) < 0.02 and abs(noise.mean().item()) < 0.02
    for a, b in zip(seen[1][1], clean, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_weight_noise_changes_training_and_is_reproducible():
    base = dict(task="jsb", cell="gru", **SMOKE)
    plain = train(TrainConfig(**base))
    noisy = train(TrainConfig(**base, weight_noise=0.05))
    again = train(TrainConfig(**base, weight_noise=0.05))
    assert noisy.history[0].train_loss != plain.history[0].train_loss
    assert [r.valid for r in noisy.history] == [r.valid for r in again.history]


def test_train_command_writes_its_result(tmp_path, capsys):
    out = tmp_path / "result.json"
    code = main(["train", "--task", "adding", "--cell", "gru", "--hidden-size", "8", "--epochs",
                 "2", "--smoke", "--out", str(out)])  # fmt: skip
    assert code == 0
    result = json.loads(out.read_text())
    assert result["status"] == "completed" and len(result["history"]) == 2
    printed = capsys.readouterr().out
    assert "epoch  train loss" in printed
    assert f"test mse {result['test']['mse']:.4f}" in printed


def test_train_command_checks_data_and_device_before_it_starts(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GATEDRNN_DATA", str(tmp_path))
    assert main(["train", "--task", "ptb", "--smoke"]) == 2
    assert "dataset 'ptb' is not present" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["train", "--device", "cuda", "--smoke"]) == 2
    printed = capsys.readouterr()
    assert "this machine has no CUDA GPU" in printed.err and "epoch" not in printed.out
    with pytest.raises(ValueError, match="device: 'cuda', but this machine has no CUDA GPU"):
        train(TrainConfig(task="adding", device="cuda", smoke=True))
    # a named backend that cannot run the cell: before the header, not at the first batch
    monkeypatch.undo()
    assert main(["train", "--cell", "gru", "--cell-option", "reset=before", "--backend",
                 "cudnn", "--smoke"]) == 2  # fmt: skip
    printed = capsys.readouterr()
    assert "backend: 'cudnn' cannot run gru(reset=before) on cpu" in printed.err
    assert printed.out == ""
    with pytest.raises(ValueError, match=r"'cudnn' cannot run mingru.*no fused kernel.*use 'auto'"):
        train(TrainConfig(cell="mingru", backend="cudnn"))


def test_mixed_precision_run_completes_and_layers_compute_in_bfloat16():
    import gatedrnn

    gru = gatedrnn.GRU(3, 5, backend="reference")
    x = torch.randn(4, 2, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, h = gru(x, torch.zeros(1, 2, 5))
    assert out.dtype == torch.bfloat16 and h.dtype == torch.bfloat16
    out.float().sum().backward()
    assert gru.weight_hh_l0.grad is not None and gru.weight_hh_l0.grad.dtype == torch.float32
    config = TrainConfig.from_dict({"task": "jsb", "cell": "gru", "hidden_size": 8, "epochs": 1,
                                    "smoke": True, "amp": True})  # fmt: skip
    result = train(config)
    assert result.status == "completed" and math.isfinite(result.test["nll"])


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not a checkpoint", "torch.load with weights only refused it"),
        ("truncated", "PytorchStreamReader failed reading zip archive"),
        ({"model": {}}, r"expected the keys \['best_model', 'config'.*found \['model'\]"),
    ],
)
def test_a_file_that_is_not_a_checkpoint_is_named(tmp_path, content, message):
    """A corrupt or foreign file at the checkpoint path: what it is and what to do, not torch's
    unpickling traceback (a study's trial would fail the same way at every re-run)."""
    path = tmp_path / "run.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content == "truncated":
        torch.save({"model": torch.zeros(100)}, path)
        path.write_bytes(path.read_bytes()[:100])
    else:
        torch.save(content, path)
    config = TrainConfig(task="adding", epochs=1, smoke=True, hidden_size=8)
    with pytest.raises(
        ValueError, match=f"run.pt: not a checkpoint of this training loop .*{message}"
    ):
        train(config, checkpoint=path)
