"""The command line: the tables, `bench`, the data commands, errors as one clear line, and what
`compare` says when its trials fail (the end-to-end run is in tests/report)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from gatedrnn.cli import main


def test_cells_table(capsys):
    assert main(["cells", "--budget", "20000"]) == 0
    out = capsys.readouterr().out
    for name in ("rnn", "lstm(peepholes)", "lstm(coupled)", "gru(reset=before)", "mgu", "mingru"):
        assert name in out
    assert "57000" in out  # the GRU at 88 → 100


def test_cells_budget_too_small_is_a_clear_error(capsys):
    assert main(["cells", "--budget", "10"]) == 2
    assert "more than the budget of 10" in capsys.readouterr().err


def test_console_script_runs():
    result = subprocess.run(
        [sys.executable, "-m", "gatedrnn.cli", "cells"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "gru" in result.stdout


def test_bench_smoke_writes_json(tmp_path, capsys):
    import json

    out = tmp_path / "bench.json"
    assert main(["bench", "--smoke", "--cells", "gru,lstm", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["environment"]["threads"] >= 1
    impls = {(r["cell"], r["mode"], r["impl"]) for r in data["results"]}
    assert ("gru", "forward+backward", "gatedrnn:cpu") in impls
    assert ("lstm", "forward", "torch.nn") in impls
    assert all(r["median_ms"] > 0 for r in data["results"])
    if sys.platform != "win32":  # counted per call; a count, never negative
        assert all(r["minor_faults"] >= 0 for r in data["results"])
    assert "GRU time / LSTM time" in capsys.readouterr().out
    assert data["environment"]["device"] == "cpu"
    assert data["environment"]["cpu_gemm"] in ("blas", "ours")


def test_bench_times_variants_against_their_familys_torch_layer(tmp_path, capsys, monkeypatch):
    """A cell torch.nn lacks runs against torch.nn's standard cell of its family, named in the
    table and the JSON; a torch.nn cell against its own. Piped (here: captured), the table is
    printed whole, not cut to 80 columns."""
    import json

    monkeypatch.delenv("COLUMNS", raising=False)
    out = tmp_path / "bench.json"
    cells = "gru,lstm:peepholes=true:forget_bias=1,mgu,lstm:proj_size=3"
    assert main(["bench", "--smoke", "--cells", cells, "--out", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    against = {r["cell"]: r["against"] for r in results}
    assert against == {
        "gru": "torch.nn.GRU",
        "lstm:peepholes=true:forget_bias=1": "torch.nn.LSTM",
        "mgu": "torch.nn.GRU",
        "lstm:proj_size=3": "torch.nn.LSTM(proj_size=3)",  # torch.nn takes that option too
    }
    assert all(r["median_ms"] > 0 for r in results)
    printed = capsys.readouterr().out
    assert "lstm:peepholes=true:forget_bias=1" in printed and "against" in printed
    assert "…" not in printed
    for bad, message in [
        (
            "gru:peepholes=true",
            "--cells: 'gru:peepholes=true' at .*unexpected keyword.*'peepholes'",
        ),
        ("gru:reset=middle", "--cells: 'gru:reset=middle' at .*'reset'.*'middle'"),
        ("lstm:proj_size=40", "'lstm:proj_size=40' at hidden size 32: LSTM: proj_size must be"),
        ("gru:reset", "--cells: expected CELL or CELL:KEY=VALUE"),
        ("lstmm", "--cells: unknown cell 'lstmm'; expected one of rnn, lstm, gru, mgu"),
    ]:
        assert main(["bench", "--smoke", "--cells", bad]) == 2
        assert re.search(message, " ".join(capsys.readouterr().err.split())), bad


def test_bench_times_both_sides_in_the_dtype_asked_for(tmp_path, capsys):
    """``--dtype bfloat16``: torch.nn's layer and ours built and fed in it (the ``cpu`` loops
    compute it in float32), named in the title and the JSON's environment."""
    import json

    out = tmp_path / "bench.json"
    argv = ["bench", "--smoke", "--dtype", "bfloat16", "--cells", "gru,mgu", "--backends",
            "cpu,reference", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    data = json.loads(out.read_text())
    assert data["environment"]["dtype"] == "bfloat16"
    assert all(r["median_ms"] > 0 for r in data["results"])
    assert "threads, bfloat16)" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit):
        main(["bench", "--dtype", "int8"])
    assert "invalid choice: 'int8'" in capsys.readouterr().err


def test_bench_times_stacks_of_bidirectional_layers(tmp_path, capsys):
    """``--layers 2 --bidirectional``: both sides' layers built so (sharing weights where the
    cell is torch.nn's), named in the title and the JSON's environment."""
    import json

    out = tmp_path / "bench.json"
    argv = ["bench", "--smoke", "--layers", "2", "--bidirectional", "--cells", "gru,mingru",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    data = json.loads(out.read_text())
    assert data["environment"]["layers"] == 2 and data["environment"]["bidirectional"] is True
    assert all(r["median_ms"] > 0 for r in data["results"])
    assert {r["impl"] for r in data["results"]} == {"torch.nn", "gatedrnn:cpu"}
    assert "threads, 2 layers, bidirectional)" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(SystemExit):
        main(["bench", "--layers", "0"])


def test_bench_shows_the_cases_a_backend_cannot_run(tmp_path, capsys):
    """The triton kernels have no minimal cells (and, without a GPU or the interpreter, run
    nothing): a dash and the reason, the other backends timed as usual; the JSON has the case
    with no time."""
    import json

    out = tmp_path / "bench.json"
    argv = ["bench", "--smoke", "--backends", "cpu,triton", "--cells", "mingru", "--out", str(out)]
    assert main(argv) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "—: backend 'triton' cannot run mingru: it has kernels for the RNN, the GRU," in printed
    results = json.loads(out.read_text())["results"]
    mingru = {r["impl"]: r for r in results if r["cell"] == "mingru" and r["mode"] == "forward"}
    assert mingru["gatedrnn:cpu"]["median_ms"] > 0 and mingru["gatedrnn:cpu"]["skipped"] is None
    assert mingru["gatedrnn:triton"]["median_ms"] is None
    assert "the LSTM and the MGU only, not mingru" in mingru["gatedrnn:triton"]["skipped"]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="for machines without CUDA")
def test_bench_on_a_gpu_this_machine_lacks(capsys):
    assert main(["bench", "--smoke", "--device", "cuda"]) == 2
    assert "this machine has no CUDA GPU" in " ".join(capsys.readouterr().err.split())


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_bench_on_the_gpu(tmp_path, capsys):
    """torch.nn (cuDNN) against the triton kernels by default, synchronized timings."""
    import json

    out = tmp_path / "bench.json"
    assert main(["bench", "--smoke", "--device", "cuda", "--cells", "gru,lstm", "--out",
                 str(out)]) == 0  # fmt: skip
    data = json.loads(out.read_text())
    assert data["environment"]["device"] == "cuda" and data["environment"]["gpu"]
    assert {r["impl"] for r in data["results"]} == {"torch.nn", "gatedrnn:triton"}
    assert all(r["median_ms"] > 0 for r in data["results"])
    assert "torch.nn on cuDNN" in " ".join(capsys.readouterr().out.split())


def test_saved_bytes_counts_what_backward_keeps():
    import torch

    import gatedrnn
    from gatedrnn.bench import saved_bytes

    T, B, H = 20, 3, 8
    gru = gatedrnn.GRU(H, H, backend="cpu")
    x = torch.randn(T, B, H)
    nbytes = saved_bytes(lambda: gru(x)[0])
    # at least the r|z|n activations, the recurrent term and the outputs, all float32
    assert nbytes >= 4 * T * B * (3 * H + H + H)
    with torch.no_grad():
        assert saved_bytes(lambda: gru(x)[0]) == 0


def test_tasks_table(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "jsb" in out and "adding" in out and "embedded" in out and "generated" in out


def test_data_list_and_a_missing_dataset(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("GATEDRNN_DATA", raising=False)
    assert main(["data", "list"]) == 0
    assert "jsb" in capsys.readouterr().out
    assert main(["data", "verify", "nottingham", "--data-dir", str(tmp_path / "none")]) == 2
    assert "gatedrnn data fetch nottingham" in capsys.readouterr().err.replace("\n", " ")
    # JSB Chorales ships inside the package: that copy is what the tasks read, and is verified
    assert main(["data", "verify", "jsb", "--data-dir", str(tmp_path / "none")]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "jsb: verified the copy inside the package (jsb_chorales.npz)" in printed
    assert "JSB_Chorales.mat is not here (`gatedrnn data fetch jsb`)" in printed


def test_a_damaged_embedded_copy_is_named(capsys, tmp_path, monkeypatch):
    import dataclasses

    from gatedrnn.data import CorruptDataError, piano_rolls, registry

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("GATEDRNN_DATA", raising=False)
    info = dataclasses.replace(registry.DATASETS["jsb"], embedded_sha256="0" * 64)
    monkeypatch.setitem(registry.DATASETS, "jsb", info)
    assert main(["data", "verify", "jsb"]) == 2
    error = " ".join(capsys.readouterr().err.split())
    assert "jsb_chorales.npz: sha256 4166598d" in error and f"expected {'0' * 64}" in error
    assert "the installation of gatedrnn is damaged: reinstall it" in error
    with pytest.raises(CorruptDataError, match="reinstall it"):
        piano_rolls("jsb")


def test_data_verify_reports_every_dataset_and_fails_if_one_does(capsys, monkeypatch):
    import gatedrnn.data
    from gatedrnn.data import CorruptDataError

    def locate(name, data_dir=None):
        if name == "ptb":
            raise CorruptDataError("ptb/ptb.train.txt.gz: checksum mismatch")
        return f"/data/{name}"

    monkeypatch.setattr(gatedrnn.data, "locate", locate)
    assert main(["data", "verify", "jsb", "ptb", "sst2"]) == 2
    printed = capsys.readouterr()
    assert "jsb: verified in /data/jsb" in printed.out and "sst2: verified" in printed.out
    assert "ptb.train.txt.gz: checksum mismatch" in printed.err
    assert "1 of 3 failed: ptb" in printed.err
    assert main(["data", "verify", "jsb", "sst2"]) == 0
    assert main(["data", "verify", "jsb", "imdb"]) == 2
    assert "unknown dataset 'imdb'" in capsys.readouterr().err


def test_errors_are_printed_as_written(capsys, monkeypatch):
    """A message's brackets ("[train] backend", a path) are text, not rich markup."""
    import gatedrnn.cli

    def fail(args, console):
        raise ValueError("give every cell one backend ([train] backend in a study) [x]")

    parser = gatedrnn.cli.build_parser()
    monkeypatch.setattr(gatedrnn.cli, "build_parser", lambda: parser)
    parser.set_defaults(run=fail)
    for action in parser._subparsers._group_actions[0].choices.values():
        action.set_defaults(run=fail)
    assert main(["tasks"]) == 2
    out = capsys.readouterr().err.replace("\n", " ")
    assert "([train] backend in a study) [x]" in out


def test_compare_names_a_missing_dataset_before_running(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("GATEDRNN_DATA", raising=False)
    code = main(["compare", "--scale", "smoke", "--tasks", "ptb", "--out", str(tmp_path / "runs"),
                 "--data-dir", str(tmp_path / "mine")])  # fmt: skip
    assert code == 2
    out = " ".join(capsys.readouterr().err.split())
    assert "dataset 'ptb' is not present" in out and str(tmp_path / "mine") in out
    assert not (tmp_path / "runs").exists()


def test_compare_reports_failed_trials_and_exits_nonzero(capsys, tmp_path, monkeypatch):
    import gatedrnn.study.runner

    real = gatedrnn.study.runner.train

    def train(config, **kwargs):
        if config.cell == "lstm":
            raise RuntimeError("[lstm] broke")
        return real(config, **kwargs)

    monkeypatch.setattr(gatedrnn.study.runner, "train", train)
    code = main(["compare", "--scale", "smoke", "--tasks", "adding", "--cells", "lstm,gru",
                 "--seeds", "2", "--workers", "1", "--out", str(tmp_path)])  # fmt: skip
    assert code == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "8 failed: RuntimeError: [lstm] broke" in out  # 2 seeds, widths, fractions: once
    assert (tmp_path / "compare-smoke-adding-lstm-gru" / "report.html").is_file()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--cells", "gru,rnn"], "--baseline 'lstm' is not one of the study's cells ['gru', 'rn"),
        (["--candidate", "mgu"], "--candidate 'mgu' is not one of the study's cells"),
    ],
)
def test_compare_refuses_a_comparison_its_cells_cannot_make(capsys, tmp_path, extra, message):
    out = str(tmp_path)
    code = main(["compare", "--scale", "smoke", "--tasks", "adding", "--out", out, *extra])
    assert code == 2
    assert message in " ".join(capsys.readouterr().err.split())
    assert not any(tmp_path.iterdir())  # refused before the study ran


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench", "--repeats", "0"], "argument --repeats: expected a number >= 1, got 0"),
        (["bench", "--steps", "ten"], "argument --steps: expected a whole number, got 'ten'"),
        (["bench", "--hidden", "8,-1"], "argument --hidden: expected a comma-separated list: "),
        (["bench", "--batch", ","], "argument --batch: expected a comma-separated list, got ','"),
        (["cells", "--layers", "0"], "argument --layers: expected a number >= 1, got 0"),
        (["cells", "--budget", "-5"], "argument --budget: expected a number >= 0, got -5"),
        (["compare", "--seeds", "0"], "argument --seeds: expected a number >= 1, got 0"),
        (["compare", "--workers", "0"], "argument --workers: expected a number >= 1, got 0"),
        (["study", "run", "s.toml", "--workers", "-1"], "argument --workers: expected a number"),
        (["gpu-tune", "--hidden", "0"], "argument --hidden: expected a comma-separated list: "),
    ],
)
def test_counts_on_the_command_line_are_checked(argv, message, capsys):
    """Zero repeats used to fail with 'no median for empty data', zero layers printed a table
    of zeros, a negative hidden size a table of nonsense."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_bench_names_an_unknown_cell(capsys):
    assert main(["bench", "--cells", "gru,mglu", "--smoke"]) == 2
    out = " ".join(capsys.readouterr().err.split())
    assert "unknown cell 'mglu'; expected one of rnn, lstm, gru, mgu, mingru, minlstm" in out


def test_runs_on_the_cpu_load_the_compiled_loops_before_they_start(monkeypatch, tmp_path):
    """``train``, a study (``compare``) and ``bench`` on the CPU load (the first time: build,
    ~40 seconds) the compiled loops under a status line before anything waits on them silently."""
    import gatedrnn.bench
    import gatedrnn.study
    import gatedrnn.train
    from gatedrnn.backends import compiled

    events = []

    class Started(Exception):
        pass

    def started(*args, **kwargs):
        events.append("run")
        raise Started

    monkeypatch.setattr(compiled, "unavailable_reason", lambda: None)
    monkeypatch.setattr(compiled, "compiled_loops", lambda: events.append("loops"))
    monkeypatch.setattr(gatedrnn.train, "train", started)
    monkeypatch.setattr(gatedrnn.study, "run_study", started)
    monkeypatch.setattr(gatedrnn.bench, "run_benchmark", started)
    for argv in (
        ["train", "--task", "adding", "--smoke", "--out", str(tmp_path / "r.json")],
        ["compare", "--scale", "smoke", "--tasks", "adding", "--out", str(tmp_path)],
        ["bench", "--smoke"],
    ):
        events.clear()
        with pytest.raises(Started):
            main(argv)
        assert events == ["loops", "run"], argv
