"""The Ray executor on a local Ray instance: every trial completes once with the same results as
the local executor (CPU, deterministic), epochs reach the driver's database, a failing trial is
recorded and the study completes, and re-running skips what is done."""

from __future__ import annotations

import pytest

from gatedrnn.study import StudyStore, load_study, run_study

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray

STUDY = """
name = "ray"
tasks = ["adding"]
cells = ["gru", "lstm"]
hidden_size = 8
seeds = 2
[task_options.adding]
steps = 10
train_size = 128
[train]
epochs = 2
batch_size = 32
patience = 0
[executor]
kind = "{kind}"
workers = 2
"""


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield
    ray.shutdown()


def _results(db):
    store = StudyStore(db)
    trials = {t["key"]: t for t in store.trials()}
    epochs = {k: [e["epoch"] for e in store.epochs(k)] for k in trials}
    store.close()
    return trials, epochs


def test_ray_matches_the_local_executor(tmp_path, local_ray):
    for kind in ("local", "ray"):
        (tmp_path / f"{kind}.toml").write_text(STUDY.format(kind=kind))
    local_db = run_study(load_study(tmp_path / "local.toml"), tmp_path / "local", workers=1)
    ray_db = run_study(load_study(tmp_path / "ray.toml"), tmp_path / "ray")
    local, _ = _results(local_db)
    remote, epochs = _results(ray_db)
    assert local.keys() == remote.keys() and len(remote) == 4
    for key, trial in remote.items():
        assert trial["status"] == "completed"
        assert epochs[key] == [1, 2]  # every epoch reached the driver's database, once
        assert trial["result"]["test"] == local[key]["result"]["test"]
    assert StudyStore(ray_db).get_meta("environment")["executor"] == "ray"
    timings = StudyStore(ray_db).timings()  # the speed claim's timing ran as a Ray task
    assert set(timings) == {("adding", "equal_hidden")}
    assert set(timings["adding", "equal_hidden"]) == {"gru", "lstm"}
    again = run_study(load_study(tmp_path / "ray.toml"), tmp_path / "ray")  # nothing left to do
    assert _results(again)[0] == remote


def test_ray_records_diverged_and_failed_trials_and_finishes(tmp_path, local_ray):
    diverging = STUDY.format(kind="ray").replace(
        "patience = 0", 'patience = 0\noptimizer = "sgd"\nlr = 1e12\nclip_norm = 0.0'
    )
    path = tmp_path / "diverge.toml"
    path.write_text(diverging)
    db = run_study(load_study(path), tmp_path / "diverge")
    assert {t["status"] for t in StudyStore(db).trials()} == {"diverged"}

    missing = STUDY.format(kind="ray").replace('tasks = ["adding"]', 'tasks = ["nottingham"]')
    missing = missing.split("[task_options.adding]")[0] + "[train]" + missing.split("[train]")[1]
    path = tmp_path / "missing.toml"
    path.write_text(missing)
    db = run_study(load_study(path), tmp_path / "missing", data_dir=tmp_path / "no-data")
    trials = StudyStore(db).trials()
    if any(t["status"] == "completed" for t in trials):
        pytest.skip("nottingham is in $GATEDRNN_DATA or ~/.cache/gatedrnn on this machine")
    assert {t["status"] for t in trials} == {"failed"}
    assert all("dataset 'nottingham' is not present" in t["error"] for t in trials)
