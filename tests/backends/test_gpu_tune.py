"""Measuring the triton backend on the machine it runs on (``GATEDRNN_TRITON_TUNE=1``).

The timing is faked (there is no GPU here) but everything else is real: the kernels run in
Triton's interpreter against torch's own layers, the results are compared, the table is written,
read back and used by ``auto`` and by the launches."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

import gatedrnn
from gatedrnn.backends import get_backend, gpu, gpu_tune

CUDA = torch.cuda.is_available()
if not CUDA and not gpu.interpreting():
    pytest.skip("no GPU and TRITON_INTERPRET is not set", allow_module_level=True)
pytestmark = pytest.mark.skipif(CUDA, reason="the timings are faked: for the CPU")


@pytest.fixture
def local(tmp_path, monkeypatch):
    """Tuning on, this machine's table in a temporary file, a GPU model named "Test GPU", no
    size tried yet; the shipped table left as it is. (The gpu-tune command's tests use the
    same fixture: the CLI is the other way into the same table.)"""
    path = tmp_path / "gpu_table.json"
    monkeypatch.setenv("GATEDRNN_TRITON_TUNE", "1")
    monkeypatch.setenv("GATEDRNN_TRITON_TABLE", str(path))
    monkeypatch.setattr(gpu, "_device_name", lambda device: "Test GPU")
    monkeypatch.setattr(gpu, "TUNING", {})
    monkeypatch.setattr(gpu_tune, "_tried", set())
    monkeypatch.setattr(gpu, "_tunings", {})
    gpu.table_changed()
    yield path
    gpu.table_changed()


def _fake_times(monkeypatch, by_variant: dict, cudnn: float):
    """_time answers from ``by_variant`` (the variant in effect, as JSON) or ``cudnn`` (no
    variant set: the reference runs outside them)."""

    def fake(fn, params):
        fn()  # the run itself, so that its kernels are exercised
        variant = {k: v for k, v in gpu.TUNING.items() if k != "table"}
        return by_variant[json.dumps(variant, sort_keys=True)] if gpu.TUNING else cudnn

    monkeypatch.setattr(gpu_tune, "_time", fake)


def test_tune_takes_the_fastest_variant_that_agrees(local, monkeypatch):
    monkeypatch.setattr(gpu_tune, "STEPS", 6)
    monkeypatch.setattr(
        gpu_tune,
        "CANDIDATES",
        ({}, {"fold": 2}, {"chunks": 4}, {"fold": 2, "chunks": 4}, {"split": 2}, {"resident": 0}),
    )
    _fake_times(
        monkeypatch,
        {"{}": 4.0, '{"fold": 2}': 1.0, '{"chunks": 4}': 3.0, '{"chunks": 4, "fold": 2}': 2.5,
         '{"resident": 0}': 6.0},
        cudnn=10.0,
    )  # fmt: skip
    real = gpu_tune.disagreement

    def folded_is_wrong(*args):
        off = real(*args)
        assert off < 1e-4  # every variant's kernels agree with torch's own layer here
        return 1.0 if gpu.TUNING.get("fold") == 2 and "chunks" not in gpu.TUNING else off

    monkeypatch.setattr(gpu_tune, "disagreement", folded_is_wrong)
    state = torch.get_rng_state()
    row = gpu_tune.tune("lstm", torch.float32, True, 12, 3, torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random stream untouched
    assert row["ratio"] == 0.25 and row["tuning"] == {"chunks": 4, "fold": 2}
    measured = row["measured"]
    assert measured["cudnn"] == 10.0 and measured['{"fold": 2}'] == "results off by 1"
    assert measured["{}"] == 4.0 and measured['{"resident": 0}'] == 6.0
    assert '{"split": 2}' not in measured  # its pairs cannot run at once here: not tried
    assert gpu.TUNING == {}  # restored


def test_variants_that_launch_alike_are_timed_once(monkeypatch):
    """Under the interpreter's one program the batch tile follows B: at H = 8, B = 2 one chunk
    or eight of a 128-wide K are different launches, fold 1 is the default's."""
    monkeypatch.setattr(gpu, "TUNING", {})
    monkeypatch.setattr(gpu_tune, "CANDIDATES", ({}, {"fold": 1}, {"chunks": 8}, {"resident": 0}))
    cpu = torch.device("cpu")
    assert gpu_tune._variants("gru", torch.float32, True, 8, 2, cpu) == [
        {}, {"chunks": 8}, {"resident": 0}
    ]  # fmt: skip
    # forward only: the backward's chunks change nothing
    assert gpu_tune._variants("gru", torch.float32, False, 8, 2, cpu) == [{}, {"resident": 0}]
    # a float16 product is a float32 layer's variant; a float16 layer computes in float16 anyway
    monkeypatch.setattr(gpu_tune, "CANDIDATES", ({}, {"f16": 1}, {"f16": 2}))
    levels = [{}, {"f16": 1}, {"f16": 2}]
    assert gpu_tune._variants("lstm", torch.float32, True, 8, 2, cpu) == levels
    # forward only: level 2 changes only the backward
    assert gpu_tune._variants("lstm", torch.float32, False, 8, 2, cpu) == [{}, {"f16": 1}]
    assert gpu_tune._variants("lstm", torch.float16, True, 8, 2, cpu) == [{}]
    # the plain RNN's kernels are streamed ones whatever the variant: one launch to time
    monkeypatch.setattr(gpu_tune, "CANDIDATES", ({}, {"fold": 2}, {"f16": 1}, {"resident": 0}))
    assert gpu_tune._variants("rnn", torch.float32, True, 8, 2, cpu) == [{}]


def test_tune_measures_the_plain_rnn_against_torchs(local, monkeypatch):
    """The RNN's row: its streamed kernels (interpreted here) against torch.nn.RNN with the same
    weights, the results compared, the time ratio over the faked timings."""
    monkeypatch.setattr(gpu_tune, "STEPS", 5)
    _fake_times(monkeypatch, {"{}": 3.0}, cudnn=12.0)
    real = gpu_tune.disagreement
    offs = []

    def recorded(*args):
        offs.append(real(*args))
        return offs[-1]

    monkeypatch.setattr(gpu_tune, "disagreement", recorded)
    row = gpu_tune.tune("rnn", torch.float32, True, 12, 3, torch.device("cpu"))
    assert offs and max(offs) < 1e-5
    assert row["kind"] == "rnn" and row["ratio"] == 0.25 and "tuning" not in row
    assert row["measured"] == {"cudnn": 12.0, "{}": 3.0}


def test_first_use_measures_once_and_the_backend_follows(local, monkeypatch):
    """With tuning on, the first call of a size measures it (once per process, and not again
    in a later one), writes this machine's table, and ``auto`` and the launches follow it."""
    calls = []

    def tune(kind, dtype, grad, H, B, device):
        calls.append((kind, dtype, grad, H, B))
        ratio = 0.5 if grad else None  # forward only: ours failed there
        row = {"kind": kind, "dtype": "float32", "grad": grad, "H": H, "B": B, "ratio": ratio}
        return {**row, "tuning": {"forward_chunks": 2}} if grad else row

    monkeypatch.setattr(gpu_tune, "tune", tune)
    layer = gatedrnn.GRU(3, 20, backend="triton")
    cuda_input = SimpleNamespace(
        device=torch.device("cuda", 0), shape=(5, 7, 3), dtype=torch.float32
    )
    backend = get_backend("triton")
    assert backend.auto_declines(layer.config, cuda_input) is None  # measured: 0.5
    assert backend.auto_declines(layer.config, cuda_input) is None
    with torch.no_grad():
        reason = backend.auto_declines(layer.config, cuda_input)
    assert "at least 5% faster" in reason and "inf" in reason
    assert calls == [("gru", torch.float32, True, 20, 7), ("gru", torch.float32, False, 20, 7)]
    table = json.loads(local.read_text())
    assert table["gatedrnn"] == gatedrnn.__version__ and len(table["devices"]["Test GPU"]) == 2
    cpu = torch.device("cpu")
    assert gpu.launch_tuning("gru", torch.float32, True, 20, 7, cpu) == {"forward_chunks": 2}
    launched = []
    run = gpu._run
    monkeypatch.setattr(
        gpu, "_run", lambda k, launch, *a, **c: launched.append(launch["meta"]["CHUNKS"])
        or run(k, launch, *a, **c)
    )  # fmt: skip
    out, _ = layer(torch.randn(5, 7, 3))
    out.sum().backward()
    assert launched == [2, 1]  # the forward in two chunks, as measured; the backward as always
    # float32 in another precision than the tables' TF32: not measured
    monkeypatch.setattr(gpu, "fp32_precision", lambda: "ieee")
    assert gpu_tune.measure("gru", torch.float32, True, 20, 5, cuda_input.device) is None
    monkeypatch.setattr(gpu, "fp32_precision", lambda: "tf32")
    # another process: the rows are read back, nothing measured again
    monkeypatch.setattr(gpu_tune, "_tried", set())
    gpu.table_changed()
    assert backend.auto_declines(layer.config, cuda_input) is None
    assert len(calls) == 2
    # tuning off: this machine's rows are still used, new sizes are not measured
    monkeypatch.delenv("GATEDRNN_TRITON_TUNE")
    assert backend.auto_declines(layer.config, cuda_input) is None
    other = SimpleNamespace(device=cuda_input.device, shape=(5, 9, 3), dtype=torch.float32)
    assert backend.auto_declines(layer.config, other) is None  # nearest: B = 7
    layer = gatedrnn.GRU(3, 20, backend="triton")
    assert len(calls) == 2


def test_a_corrupt_local_table_is_moved_aside(local):
    local.write_text("{not json")
    with pytest.warns(UserWarning, match="could not be read"):
        assert gpu_tune.read_local() == {"devices": {}}
    assert not local.exists() and local.with_name("gpu_table.json.corrupt").exists()
    local.write_text(json.dumps({"devices": []}))
    with pytest.warns(UserWarning, match="not a table"):
        assert gpu_tune.read_local() == {"devices": {}}
    local.write_text(json.dumps({"devices": {"Test GPU": [{"kind": "gru", "H": "64"}]}}))
    with pytest.warns(UserWarning, match="a row the backend cannot read"):
        assert gpu_tune.read_local() == {"devices": {}}


def test_rows_of_other_versions_are_not_used(local):
    row = {"kind": "gru", "dtype": "float32", "grad": True, "H": 20, "B": 7, "ratio": 0.5}
    gpu_tune._write_row(row, "Test GPU")
    assert gpu_tune.read_local()["devices"]["Test GPU"] == [row]
    table = json.loads(local.read_text())
    table["gatedrnn"] = "0.0.1"
    local.write_text(json.dumps(table))
    assert gpu_tune.read_local() == {"devices": {}}
    assert gpu.measured_ratio("gru", torch.float32, True, 20, 7, None) is None


def test_disagreement_catches_wrong_and_non_finite_results():
    """The check on every timed run (here a layer against torch's own on the CPU): the same
    weights agree; one changed weight, or a NaN, does not."""
    torch.manual_seed(0)
    reference = torch.nn.GRU(8, 8)
    ours = gatedrnn.GRU(8, 8, backend="reference")
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(6, 3, 8, requires_grad=True)
    dy = torch.randn(6, 3, 8)
    for grad in (False, True):
        assert gpu_tune.disagreement(ours, reference, x, dy, grad) < 1e-6
    with torch.no_grad():
        ours.weight_hh_l0[0, 0] += 1.0
    assert gpu_tune.disagreement(ours, reference, x, dy, True) > gpu_tune.AGREEMENT["float32"]
    with torch.no_grad():
        ours.weight_hh_l0[0, 0] = float("nan")
    assert gpu_tune.disagreement(ours, reference, x, dy, False) == float("inf")


def test_gpu_tune_command_measures_the_sizes_asked(local, monkeypatch, capsys):
    """``gatedrnn gpu-tune``: each size not in a table is measured (all with --force) and shown
    with auto's choice; bad names and a machine without a GPU get clear errors."""
    from gatedrnn.cli import main

    monkeypatch.setenv("COLUMNS", "160")
    assert main(["gpu-tune", "--cells", "mgu"]) == 2
    assert "unknown 'mgu': cells are gru, lstm, rnn" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["gpu-tune"]) == 2
    assert "on a CUDA GPU; there is none" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Test GPU")
    measured = []

    def tune(kind, dtype, grad, H, B, device):
        measured.append((kind, grad, H, B))
        ratio = {1: 0.3, 4: 1.4}.get(B)  # B = 2: ours failed
        row = {"kind": kind, "dtype": "bfloat16", "grad": grad, "H": H, "B": B, "ratio": ratio}
        return {**row, "tuning": {"tma": 1}, "measured": {"cudnn": 2.5}} if B == 1 else row

    monkeypatch.setattr(gpu_tune, "tune", tune)
    argv = ["gpu-tune", "--cells", "gru", "--dtypes", "bfloat16", "--hidden", "64"]
    argv += ["--batch", "1,2,4", "--directions", "both"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert measured == [("gru", True, 64, B) for B in (1, 2, 4)]
    lines = [line for line in out.splitlines() if line.lstrip().startswith("gru")]
    assert len(lines) == 3
    assert "2.500" in lines[0] and "0.30" in lines[0] and "tma=1" in lines[0]
    assert lines[0].rstrip().endswith("triton")
    assert "failed" in lines[1] and lines[1].rstrip().endswith("cudnn")
    assert "1.40" in lines[2] and lines[2].rstrip().endswith("cudnn")
    assert len(json.loads(local.read_text())["devices"]["Test GPU"]) == 3
    assert main(argv) == 0  # measured already: nothing again
    assert len(measured) == 3
    assert main([*argv, "--force"]) == 0
    assert len(measured) == 6


def test_a_variant_must_beat_the_launchers_own_choice_by_a_margin():
    assert gpu_tune.fastest({"{}": 10.0, '{"tma": 1}': 9.0, '{"chunks": 8}': 9.5}) == '{"tma": 1}'
    assert gpu_tune.fastest({"{}": 10.0, '{"tma": 1}': 9.8}) == "{}"  # within noise
    assert gpu_tune.fastest({'{"tma": 1}': 9.8, '{"chunks": 8}': 9.9}) == '{"tma": 1}'


def _write_rows(first_h: int) -> None:
    for H in range(first_h, first_h + 25):
        row = {"kind": "gru", "dtype": "bfloat16", "grad": True, "H": H, "B": 1, "ratio": 0.5}
        gpu_tune._write_row(row, "Test GPU")


def test_processes_measuring_at_once_keep_each_others_rows(local):
    """Two processes (ranks of a distributed job, each tuning at its first call) writing rows at
    the same time: every row of both ends up in the table."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_write_rows, args=(first,)) for first in (100, 200)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    rows = json.loads(local.read_text())["devices"]["Test GPU"]
    assert sorted(row["H"] for row in rows) == [*range(100, 125), *range(200, 225)]
