"""Running studies: the store, resuming after SIGKILL with nothing lost or repeated, divergence,
the process pool."""

from __future__ import annotations

import gzip
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import torch

from gatedrnn.data.registry import CorruptDataError, DataMissingError
from gatedrnn.study import StudyStore, load_study, run_study

KILLABLE = """
name = "kill"
tasks = ["jsb"]
cells = ["lstm", "gru"]
hidden_size = 16
seeds = 2
[train]
epochs = 4
batch_size = 16
patience = 0
lr = 0.01
"""


def _final(db):
    store = StudyStore(db)
    rows = {t["key"]: t for t in store.trials()}
    epochs = {key: store.epochs(key) for key in rows}
    store.close()
    return rows, epochs


def _epoch_rows(db) -> int:
    try:
        with sqlite3.connect(db, timeout=1) as connection:
            return connection.execute("SELECT COUNT(*) FROM epochs").fetchone()[0]
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_sigkill_then_rerun_loses_nothing_and_repeats_nothing(tmp_path):
    study = tmp_path / "kill.toml"
    study.write_text(KILLABLE)
    reference_db = run_study(load_study(study), tmp_path / "whole", workers=1)

    out = tmp_path / "killed"
    db = out / "kill" / "study.sqlite"
    command = [sys.executable, "-m", "gatedrnn.cli", "study", "run", str(study), "--out", str(out),
               "--workers", "1"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while _epoch_rows(db) < 6 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, "the study finished before it could be killed"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    statuses = {t["status"] for t in StudyStore(db).trials()}
    assert "completed" not in statuses or "running" in statuses or "pending" in statuses

    assert subprocess.run(command, capture_output=True, check=False, timeout=600).returncode == 0
    rows, epochs = _final(db)
    whole_rows, whole_epochs = _final(reference_db)
    assert all(r["status"] == "completed" and r["finished"] for r in rows.values())
    assert rows.keys() == whole_rows.keys()
    for key, row in rows.items():
        assert [e["epoch"] for e in epochs[key]] == [1, 2, 3, 4]  # each epoch once
        assert row["result"]["test"] == whole_rows[key]["result"]["test"]  # as if never killed
        assert [e["valid"] for e in epochs[key]] == [e["valid"] for e in whole_epochs[key]]


@pytest.mark.slow
def test_ctrl_c_stops_the_pool_cleanly_and_the_study_resumes(tmp_path):
    """A Ctrl-C (SIGINT to the whole process group, as a terminal sends it) during a pool run:
    one line, exit 130, the running trials recorded as interrupted, no process left, and the
    same command finishes the study."""
    study = tmp_path / "kill.toml"
    study.write_text(KILLABLE)
    out = tmp_path / "runs"
    db = out / "kill" / "study.sqlite"
    command = [sys.executable, "-m", "gatedrnn.cli", "study", "run", str(study), "--out", str(out),
               "--workers", "2"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while _epoch_rows(db) < 2 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert process.poll() is None, "the study finished before it could be interrupted"
    os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, (stdout, stderr)
    assert "interrupted: finished trials and epochs are kept" in stderr, (stdout, stderr)
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    deadline = time.monotonic() + 10  # the workers and the manager are gone (once reaped)
    while time.monotonic() < deadline:
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("processes of the study outlived it")
    statuses = [t["status"] for t in StudyStore(db).trials()]
    assert "running" not in statuses and "failed" in statuses
    assert subprocess.run(command, capture_output=True, check=False, timeout=600).returncode == 0
    assert {t["status"] for t in StudyStore(db).trials()} == {"completed"}


def test_rerun_skips_finished_trials(tmp_path):
    study = tmp_path / "s.toml"
    study.write_text('tasks = ["adding"]\ncells = ["gru"]\nseeds = 2\nhidden_size = 8\n'
                     "[train]\nepochs = 1\nsmoke = true\n")  # fmt: skip
    db = run_study(load_study(study), tmp_path, workers=1)
    # the store is closed when the study returns: the database file alone holds everything
    assert not db.with_name(db.name + "-wal").exists()
    first = {t["key"]: t["finished"] for t in StudyStore(db).trials()}
    run_study(load_study(study), tmp_path, workers=1)
    assert {t["key"]: t["finished"] for t in StudyStore(db).trials()} == first


def test_a_diverging_trial_is_recorded_and_the_study_completes(tmp_path):
    study = tmp_path / "d.toml"
    study.write_text('tasks = ["adding"]\ncells = ["rnn", { cell = "gru", label = "hot" }]\n'
                     "seeds = 1\nhidden_size = 8\n[train]\nepochs = 2\nsmoke = true\n"
                     'optimizer = "sgd"\nlr = 1e12\nclip_norm = 0.0\n')  # fmt: skip
    db = run_study(load_study(study), tmp_path, workers=1)
    statuses = {t["cell"]: (t["status"], t["error"]) for t in StudyStore(db).trials()}
    assert all(status == "diverged" and error for status, error in statuses.values())
    assert StudyStore(db).timings() == {}  # diverges when timed too: left to the epoch times


def test_each_arm_is_timed_once_interleaved(tmp_path):
    """After the trials, each task and width arm's cells are timed against each other (the
    speed claim's measurement), once: a re-run keeps the rows; a study without them (an
    earlier version's) gets them on its next run."""
    study = tmp_path / "t.toml"
    study.write_text('tasks = ["adding"]\ncells = ["lstm", "gru"]\nseeds = 2\nhidden_size = 8\n'
                     'widths = ["equal_hidden", "equal_params"]\nbudget = 800\n'
                     "fractions = [0.5, 1.0]\n[train]\nepochs = 1\nsmoke = true\n")  # fmt: skip
    db = run_study(load_study(study), tmp_path, workers=1)
    timings = StudyStore(db).timings()
    assert set(timings) == {("adding", "equal_hidden"), ("adding", "equal_params")}
    for cells in timings.values():
        assert set(cells) == {"lstm", "gru"} and all(len(v) == 7 for v in cells.values())
    run_study(load_study(study), tmp_path, workers=1)
    assert StudyStore(db).timings() == timings
    with sqlite3.connect(db) as connection:
        connection.execute("DROP TABLE timings")
    run_study(load_study(study), tmp_path, workers=1)
    again = StudyStore(db).timings()
    assert set(again) == set(timings) and again != timings  # measured anew


def test_process_pool_gives_the_same_results_as_one_process(tmp_path):
    study = tmp_path / "p.toml"
    study.write_text('tasks = ["adding"]\ncells = ["lstm", "gru"]\nseeds = 2\nhidden_size = 8\n'
                     "[train]\nepochs = 2\nsmoke = true\n")  # fmt: skip
    spec = load_study(study)
    one, _ = _final(run_study(spec, tmp_path / "one", workers=1))
    pool, pool_epochs = _final(run_study(spec, tmp_path / "pool", workers=2))
    assert {k: r["result"]["test"] for k, r in one.items()} == {
        k: r["result"]["test"] for k, r in pool.items()
    }
    assert all(len(e) == 2 for e in pool_epochs.values())  # epochs arrived through the queue


def test_another_study_in_the_same_place_is_refused(tmp_path):
    study = tmp_path / "s.toml"
    study.write_text('tasks = ["adding"]\ncells = ["gru"]\nseeds = 1\nhidden_size = 8\n'
                     "[train]\nepochs = 1\nsmoke = true\n")  # fmt: skip
    run_study(load_study(study), tmp_path, workers=1)
    study.write_text(study.read_text().replace("hidden_size = 8", "hidden_size = 9"))
    with pytest.raises(ValueError, match="holds another study named 's'") as refused:
        run_study(load_study(study), tmp_path, workers=1)
    assert "(hidden_size: 8 stored, 9 now)" in str(refused.value)  # what differs


def test_a_refused_study_says_what_differs():
    from gatedrnn.study.runner import _differences

    stored = {"name": "s", "seeds": 3, "train": {"epochs": 15, "lr": 0.003}, "cells": ["gru"]}
    current = {"name": "s", "seeds": 5, "train": {"epochs": 15, "lr": 0.001, "probes": 1},
               "cells": ["gru", "lstm"]}  # fmt: skip
    assert _differences(stored, current) == (
        "cells: ['gru'] stored, ['gru', 'lstm'] now; train.lr: 0.003 stored, 0.001 now; "
        "train.probes: absent stored, 1 now"
    )  # the seeds may change: not listed
    assert _differences(stored, current, most=1).endswith(" and 2 more")


def test_more_seeds_reuse_the_trials_done_and_fewer_hide_the_rest(tmp_path, capsys, monkeypatch):
    """A study run again with more seeds runs only the new seeds' trials; with fewer, nothing
    runs and the study (its trials, counts, report) is the first seeds', the others kept for a
    later run with more; another executor changes nothing; anything else changed is still
    another study."""
    from gatedrnn.cli import main
    from gatedrnn.report import build_report

    monkeypatch.setenv("COLUMNS", "160")
    study = tmp_path / "s.toml"
    text = ('name = "s"\ntasks = ["adding"]\ncells = ["lstm", "gru"]\nseeds = {seeds}\n'
            "hidden_size = 8\n[train]\nepochs = 1\nsmoke = true\n")  # fmt: skip
    out = tmp_path / "runs"

    def run(seeds: int) -> dict[str, float]:
        study.write_text(text.format(seeds=seeds))
        assert main(["study", "run", str(study), "--out", str(out), "--workers", "1"]) == 0
        return {t["key"]: (t["seed"], t["finished"]) for t in StudyStore(db).trials()}

    db = out / "s" / "study.sqlite"
    one = run(1)
    assert "study 's': 2 trials →" in capsys.readouterr().out  # nothing done before
    three = run(3)
    printed = " ".join(capsys.readouterr().out.split())
    assert (
        "6 trials (2 done before; from 1 to 3 seeds)" in printed and "done: 6 completed" in printed
    )
    assert len(three) == 6 and {three[k] for k in one} == set(one.values())  # not run again
    assert sorted(seed for seed, _ in three.values()) == [0, 0, 1, 1, 2, 2]
    report = build_report(db)
    assert "6 trials" in report.markdown.read_text()

    two = run(2)  # fewer: nothing runs, and the third seed is not read
    printed = " ".join(capsys.readouterr().out.split())
    assert (
        "4 trials (4 done before; from 3 to 2 seeds)" in printed and "done: 4 completed" in printed
    )
    assert two == {k: v for k, v in three.items() if v[0] < 2}
    store = StudyStore(db)
    assert store.counts() == {"completed": 4} and len(store.statuses()) == 6
    store.close()
    assert "4 trials; tasks adding" in build_report(db).markdown.read_text()
    assert main(["study", "status", str(db.parent)]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "4 trials: 4 completed" in printed
    assert "2 trials of seeds beyond the 2 planned are in the database" in printed
    assert run(3) == three  # all three again, none run anew
    capsys.readouterr()

    # another executor is the same study too (resumed on Ray, say): nothing runs again
    study.write_text(text.format(seeds=3) + "[executor]\nworkers = 1\n")
    run_study(load_study(study), out)
    assert {t["key"]: (t["seed"], t["finished"]) for t in StudyStore(db).trials()} == three

    study.write_text(text.format(seeds=3).replace("hidden_size = 8", "hidden_size = 9"))
    with pytest.raises(
        ValueError, match="may change only its number of seeds, its timing rounds and its executor"
    ):
        run_study(load_study(study), out, workers=1)


def test_more_timing_rounds_time_the_arms_again_and_nothing_else(tmp_path, capsys, monkeypatch):
    """A study run again with more timing rounds re-times its arms with that many, trains
    nothing; with fewer, the longer timing is kept."""
    from gatedrnn.cli import main

    monkeypatch.setenv("COLUMNS", "160")
    study = tmp_path / "r.toml"
    text = ('name = "r"\ntasks = ["adding"]\ncells = ["lstm", "gru"]\nseeds = 1\n'
            "timing_rounds = {rounds}\nhidden_size = 8\n"
            "[train]\nepochs = 1\nsmoke = true\n")  # fmt: skip
    out = tmp_path / "runs"
    db = out / "r" / "study.sqlite"

    def run(rounds: int):
        study.write_text(text.format(rounds=rounds))
        assert main(["study", "run", str(study), "--out", str(out), "--workers", "1"]) == 0
        store = StudyStore(db)
        finished = {t["key"]: t["finished"] for t in store.trials()}
        timings = store.timings()[("adding", "equal_hidden")]
        store.close()
        return finished, timings

    finished, timings = run(3)
    assert {len(v) for v in timings.values()} == {3}
    capsys.readouterr()
    again, longer = run(5)
    printed = " ".join(capsys.readouterr().out.split())
    assert "2 trials (2 done before; timing from 3 to 5 rounds)" in printed
    assert again == finished and {len(v) for v in longer.values()} == {5}
    assert run(3)[1] == longer  # fewer: the five rounds are kept


@pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="the refusal is for machines without CUDA"
)
def test_a_cuda_study_without_a_gpu_is_refused_before_anything_runs(tmp_path):
    study = tmp_path / "s.toml"
    study.write_text('tasks = ["adding"]\ncells = ["gru"]\nseeds = 1\n[train]\ndevice = "cuda"\n')
    with pytest.raises(ValueError, match=r"train\.device: 'cuda', but this machine has no CUDA"):
        run_study(load_study(study), tmp_path / "runs", workers=1)
    assert not (tmp_path / "runs").exists()


def test_a_backend_that_cannot_run_a_cell_is_refused_before_anything_runs(tmp_path):
    """The GRU would have trained first, then every minGRU trial failed the same way."""
    study = tmp_path / "s.toml"
    study.write_text(
        'tasks = ["adding"]\ncells = ["gru", {cell = "mingru", label = "min"}]\n'
        'seeds = 1\n[train]\nbackend = "cudnn"\nsmoke = true\n'
    )
    with pytest.raises(ValueError, match=r"train\.backend: 'cudnn' cannot run mingru.*'min'"):
        run_study(load_study(study), tmp_path / "runs", workers=1)
    assert not (tmp_path / "runs").exists()


DATASET_STUDY = 'tasks = ["jsb", "ptb"]\ncells = ["gru"]\nseeds = 1\n[train]\nsmoke = true\n'


def test_a_missing_dataset_is_refused_before_anything_runs(tmp_path, monkeypatch):
    """Every trial of ptb would fail on the same missing files, after jsb's had run; jsb's
    embedded copy needs no files."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("GATEDRNN_DATA", raising=False)
    study = tmp_path / "s.toml"
    study.write_text(DATASET_STUDY)
    with pytest.raises(DataMissingError, match=r"dataset 'ptb' is not present.*data fetch ptb"):
        run_study(load_study(study), tmp_path / "runs", workers=1, data_dir=tmp_path / "data")
    assert not (tmp_path / "runs").exists()


def test_a_corrupt_dataset_is_refused_before_anything_runs(tmp_path, monkeypatch):
    monkeypatch.delenv("GATEDRNN_DATA", raising=False)
    folder = tmp_path / "data" / "ptb"
    folder.mkdir(parents=True)
    for split in ("train", "valid", "test"):
        with gzip.open(folder / f"ptb.{split}.txt.gz", "wt") as f:
            f.write("not the registered file\n")
    study = tmp_path / "s.toml"
    study.write_text(DATASET_STUDY)
    with pytest.raises(CorruptDataError, match=r"ptb\.train\.txt\.gz: \d+ bytes, expected"):
        run_study(load_study(study), tmp_path / "runs", workers=1, data_dir=tmp_path / "data")
    assert not (tmp_path / "runs").exists()


def test_study_status_reads_progress_from_a_file_or_a_folder(tmp_path, capsys, monkeypatch):
    from gatedrnn.cli import main
    from gatedrnn.study import stored_study

    monkeypatch.setenv("COLUMNS", "160")
    study = tmp_path / "s.toml"
    text = (
        'name = "s"\ntasks = ["adding"]\ncells = ["lstm", {{ cell = "gru", reset = "before" }}]\n'
    )
    text += "seeds = {seeds}\nhidden_size = 8\n[train]\nepochs = 2\nsmoke = true\n"
    study.write_text(text.format(seeds=1))
    out = tmp_path / "runs"
    assert main(["study", "status", str(study), "--out", str(out)]) == 0
    assert "not started (2 trials" in capsys.readouterr().out
    db = run_study(load_study(study), out, workers=1)
    store = StudyStore(db)
    assert stored_study(store.get_meta("spec")) == load_study(study)  # the spec round-trips
    store.close()
    study.write_text(text.format(seeds=2))  # two more trials planned, not run
    assert main(["study", "status", str(study), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "4 trials: 2 completed, 2 pending" in printed
    rows = [line.split() for line in printed.splitlines() if line.strip().startswith("adding")]
    # task, width, cell, completed, pending, epochs
    assert sorted(r[2:] for r in rows) == [
        ["gru-reset=before", "1", "1", "2"],
        ["lstm", "1", "1", "2"],
    ]
    before = db.read_bytes()
    assert main(["study", "status", str(db.parent)]) == 0  # the folder: its stored spec
    assert "2 trials: 2 completed" in capsys.readouterr().out
    assert db.read_bytes() == before  # nothing written
    assert main(["study", "status", str(tmp_path / "nothing")]) == 2
    assert "no such study file or folder" in capsys.readouterr().err


def test_local_workers_default_per_device(monkeypatch):
    """The local executor's processes: what was asked for (at most one per trial), else all
    cores on the CPU, one per visible GPU for device 'cuda', one for a GPU named by index."""
    from gatedrnn.study import runner

    monkeypatch.setattr(runner, "available_cores", lambda: 16)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert runner.local_workers(0, cpu, 100) == 16
    assert runner.local_workers(0, cuda, 100) == 3
    assert runner.local_workers(0, torch.device("cuda", 1), 100) == 1
    assert runner.local_workers(5, cuda, 100) == 5 and runner.local_workers(5, cuda, 2) == 2
    assert runner.local_workers(0, cuda, 0) == 1
    assert runner._visible_gpus() == ["0", "1", "2"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4, 6,7")
    assert runner._visible_gpus() == ["4", "6", "7"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert runner._visible_gpus() == [] and runner.local_workers(0, cuda, 9) == 1


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity here")
def test_the_cores_counted_are_those_the_process_may_run_on():
    """A process pinned to one core (taskset, a container's cpuset) counts one, where
    ``os.cpu_count()`` counts the machine's."""
    code = (
        "import os; os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]}); "
        "from gatedrnn.study.runner import available_cores; print(available_cores())"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"


def test_pool_workers_take_the_gpus_in_turn(monkeypatch):
    """Each worker the pool starts takes the next GPU as its only visible one, before CUDA is
    initialised; without GPUs to give, the environment is left alone."""
    import multiprocessing

    from gatedrnn.study import runner

    counter = multiprocessing.get_context("spawn").Value("i", 0)
    monkeypatch.setattr(signal, "signal", lambda *args: None)
    seen = []
    for _ in range(5):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
        runner._start_worker(counter, ["4", "6"])
        seen.append(os.environ["CUDA_VISIBLE_DEVICES"])
    assert seen == ["4", "6", "4", "6", "4"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "untouched")
    runner._start_worker(counter, [])
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "untouched"


def test_timings_keep_how_long_the_threads_waited_and_old_studies_open(tmp_path):
    """Each timing round's wait for a core is stored beside its times; a database written
    before it was measured gains the column when opened, its rounds' waits unknown."""
    db = tmp_path / "old.sqlite"
    with sqlite3.connect(db) as old:  # the timings table as it was
        old.executescript(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
            "CREATE TABLE timings (task TEXT NOT NULL, width TEXT NOT NULL, cell TEXT NOT NULL,"
            " round INTEGER NOT NULL, seconds_per_step REAL NOT NULL, steps INTEGER NOT NULL,"
            " PRIMARY KEY (task, width, cell, round));"
            "INSERT INTO timings VALUES ('jsb', 'equal_hidden', 'gru', 0, 0.01, 4);"
        )
    old.close()
    store = StudyStore(db)
    try:
        assert store.timings() == {("jsb", "equal_hidden"): {"gru": [0.01]}}
        assert store.timing_waits() == {}
        seconds = {"gru": [0.01, 0.02], "lstm": [0.03, 0.04]}
        store.record_timings("adding", "equal_params", seconds, 8, [0.05, None])
        assert store.timing_waits() == {("adding", "equal_params"): [0.05]}
        assert store.timings()[("adding", "equal_params")] == seconds
    finally:
        store.close()


def test_an_arm_timed_on_a_busy_machine_is_timed_again(tmp_path):
    """Running a study again re-times the arms whose timing waited for a core too long on
    average (and only those): the verdict said to run it again when the machine is quiet."""
    from gatedrnn.study.runner import time_arms
    from gatedrnn.study.spec import parse_study

    spec = parse_study({"name": "s", "tasks": ["adding"], "cells": ["gru", "lstm"], "seeds": 1,
                        "widths": ["equal_hidden", "equal_params"], "hidden_size": 8,
                        "budget": 500, "train": {"epochs": 1, "smoke": True}})  # fmt: skip
    store = StudyStore(tmp_path / "s.sqlite")
    try:
        seconds = {"gru": [0.01] * 7, "lstm": [0.02] * 7}
        store.record_timings("adding", "equal_hidden", seconds, 8, [0.4] * 7)  # busy
        store.record_timings("adding", "equal_params", seconds, 8, [0.01] * 7)  # quiet
        timed = []

        def fake(configs):
            timed.append(sorted(configs))
            return {label: [0.01] * 7 for label in configs}, 8, [0.0] * 7

        time_arms(store, spec.trials(), fake, None, 7)
        assert timed == [["gru", "lstm"]]  # the busy arm alone
        assert store.timing_waits()[("adding", "equal_hidden")] == [0.0] * 7
        time_arms(store, spec.trials(), fake, None, 7)
        assert len(timed) == 1  # quiet now: nothing to time again
    finally:
        store.close()
