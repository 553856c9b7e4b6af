"""Study files: the grid they describe, and malformed ones rejected with the key path before
anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from gatedrnn import count_parameters
from gatedrnn.cli import main
from gatedrnn.study import load_study

GOOD = """
name = "s"
tasks = ["adding"]
cells = ["lstm", "gru", { cell = "gru", label = "gru-before", reset = "before" }]
widths = ["equal_hidden", "equal_params"]
hidden_size = 20
budget = 2000
seeds = 2
fractions = [0.5, 1.0]
[train]
epochs = 2
smoke = true
"""


def test_grid_of_a_good_file(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(GOOD + "[task_options.adding]\nsteps = 30\n")
    spec = load_study(path)
    trials = spec.trials()
    assert all(t.config.task_options == {"steps": 30} for t in trials)
    assert len(trials) == 1 * 3 * 2 * 2 * 2
    assert len({t.key for t in trials}) == len(trials)
    before = [t for t in trials if t.cell.label == "gru-before"]
    assert all(t.config.cell_options == {"reset": "before"} for t in before)
    budgeted = {t.cell.label: t.config.hidden_size for t in trials if t.width == "equal_params"}
    for label, hidden in budgeted.items():
        cell = "lstm" if label == "lstm" else "gru"
        assert abs(count_parameters(cell, 2, hidden) - 2000) <= abs(
            count_parameters(cell, 2, hidden + 1) - 2000
        )
    assert budgeted["gru"] > budgeted["lstm"]  # the same budget buys the GRU more units


def test_a_cell_without_biases_gets_its_own_width_for_the_budget(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(
        'tasks = ["adding"]\ncells = ["gru", { cell = "gru", label = "nobias", bias = false, '
        'init = "orthogonal" }]\nwidths = ["equal_params"]\nbudget = 2000\n'
    )
    widths = {t.cell.label: t.config.hidden_size for t in load_study(path).trials()}
    size = count_parameters("gru", 2, widths["nobias"], bias=False)
    assert abs(size - 2000) <= abs(
        count_parameters("gru", 2, widths["nobias"] + 1, bias=False) - 2000
    )
    assert widths["nobias"] > widths["gru"]


BASE = 'tasks = ["adding"]\ncells = ["gru"]\n'
BAD = [
    ("tasks = [", "not valid TOML"),
    (BASE + "epochs = 3", "epochs: unknown key"),
    ('tasks = "adding"\ncells = ["gru"]', "tasks: expected a list of task names, got str"),
    ('tasks = ["chess"]\ncells = ["gru"]', "tasks\\[0\\]: unknown task 'chess'"),
    ('tasks = ["adding"]\ncells = ["rwkv"]', "cells\\[0\\].cell: unknown cell 'rwkv'"),
    ('tasks = ["adding"]\ncells = []', "cells: expected at least one cell"),
    ('tasks = []\ncells = ["gru"]', "tasks: expected at least one task"),
    (BASE + "seeds = -1", "seeds: expected at least 1 seed, got -1"),
    (BASE + "seeds = 2.5", "seeds: expected an integer, got float"),
    (BASE + "timing_rounds = 1", r"timing_rounds: expected at least 2 rounds \(an interval\)"),
    (BASE + 'timing_rounds = "many"', "timing_rounds: expected an integer, got str"),
    ('tasks = ["adding"]\ncells = [{ cell = "gru", reset = "mid" }]', "option 'reset'"),
    ('tasks = ["jsb"]\ncells = ["lstm"]\nwidths = ["equal_params"]\nbudget = 100',
     "budget: a lstm layer with input_size=88 needs .* more than the budget of 100"),
    (BASE + '[train]\nlr = "fast"', "train.lr: expected float, got str"),
    (BASE + "[train]\nseed = 3", "train.seed: is set by the study grid"),
    (BASE + '[train]\nbackend = "fast"', "train.backend: expected 'auto' or one of"),
    ('tasks = ["adding"]\ncells = [{ cell = "gru", backend = "cpu" }]', "option 'backend'"),
    ('tasks = ["adding"]\ncells = [{ cell = "lstm", batch_first = true }]',
     "cells\\[0\\]: unknown option 'batch_first' for cell 'lstm'"),
    ('tasks = ["adding"]\ncells = [{ cell = "gru", init = "xavier" }]', "unknown init 'xavier'"),
    (BASE + 'widths = ["equal_flops"]', "widths\\[0\\]: expected one of"),
    ('tasks = ["adding"]\ncells = ["gru", "gru"]', "cells: labels must differ"),
    (BASE + "fractions = [0]", "fractions\\[0\\]: expected a number in"),
    (BASE + '[executor]\nkind = "slurm"', "executor.kind: expected one of"),
    (BASE + "[task_options.adding]\nlength = 3",
     "task_options.adding: unknown option 'length' for task 'adding'; expected one of: steps"),
    (BASE + "[task_options.adding]\nsteps = 0",
     "task_options.adding: option 'steps' of task 'adding': expected an integer >= 1, got 0"),
    (BASE + "[task_options.jsb]\nsteps = 3", "task_options.jsb: is not one of the study's"),
]  # fmt: skip


@pytest.mark.parametrize("text, message", BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_bad_study_files_are_rejected_before_anything_runs(tmp_path, capsys, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_study(path)
    out = tmp_path / "runs"
    assert main(["study", "run", str(path), "--out", str(out)]) == 2
    assert "bad.toml" in capsys.readouterr().err
    assert not out.exists()  # nothing written


def test_missing_study_file(tmp_path, capsys):
    assert main(["study", "run", str(tmp_path / "none.toml")]) == 2
    assert "no such study file" in capsys.readouterr().err.replace("\n", " ")


def test_compare_presets_build_and_carry_their_task_options():
    from gatedrnn.study.presets import SCALES, compare_study

    for scale in SCALES:
        spec = compare_study(scale)
        assert {t.cell.label for t in spec.trials()} == {"rnn", "lstm", "gru"}
    default = compare_study("default").trials()
    assert len(default) == 2 * 2 * 2 * 3 * 3  # tasks × widths × fractions × seeds × cells
    adding = [t for t in default if t.task == "adding"]
    assert all(t.config.task_options == {"steps": 50, "train_size": 2000} for t in adding)
    with pytest.raises(ValueError, match="scale: expected one of"):
        compare_study("huge")
    pinned = compare_study("smoke", backend="cudnn")  # one backend for every cell: its own study
    assert {t.config.backend for t in pinned.trials()} == {"cudnn"}
    assert pinned.name.endswith("-cudnn") and pinned.name != compare_study("smoke").name
    on = {device: compare_study("smoke", device=device).name for device in ("cpu", "cuda:1")}
    assert on["cpu"].endswith("-cpu") and on["cuda:1"].endswith("-cuda1")  # one folder each
    # more seeds is the same study, in the same folder (its trials are reused)
    assert compare_study("smoke", seeds=7).name == compare_study("smoke").name == "compare-smoke"
    cells = ["lstm", "gru"]
    assert (
        compare_study("smoke", cells=cells, seeds=2).name
        == compare_study("smoke", cells=cells).name
    )


def test_compare_takes_variants_named_as_written():
    from gatedrnn.study.presets import compare_study

    spec = compare_study(
        "smoke", cells=["gru", "gru:reset=before", "lstm:peepholes=true:forget_bias=1"]
    )
    choices = {c.label: (c.cell, c.options) for c in spec.cells}
    assert choices == {
        "gru": ("gru", {}),
        "gru:reset=before": ("gru", {"reset": "before"}),
        "lstm:peepholes=true:forget_bias=1": ("lstm", {"peepholes": True, "forget_bias": 1}),
    }
    assert ":" not in spec.name  # the study's folder
    for bad, message in [
        ("gru:reset", "expected CELL or CELL:KEY=VALUE"),
        ("gru:reset=before:reset=after", "expected CELL or CELL:KEY=VALUE"),
        ("gru:reset=mid", "option 'reset' of cell 'gru' must be one of"),
        ("gru:peepholes=true", "unknown option 'peepholes' for cell 'gru'"),
    ]:
        with pytest.raises(ValueError, match=message):
            compare_study("smoke", cells=[bad])


def test_compare_with_the_users_file(tmp_path):
    import numpy as np

    from gatedrnn.study.presets import compare_study

    path = tmp_path / "mine.npz"
    np.savez(path, features=np.random.rand(40, 5, 3), labels=np.arange(40) % 2)
    spec = compare_study("smoke", data=str(path))
    assert spec.tasks == ("seqcls",) or list(spec.tasks) == ["seqcls"]
    assert spec.task_options["seqcls"]["path"] == str(path.resolve())
    trials = spec.trials()
    assert {t.config.task_options["path"] for t in trials} == {str(path.resolve())}
    assert len({t.config.hidden_size for t in trials if t.width == "equal_params"}) > 1
    with pytest.raises(ValueError, match=r"none of the tasks .* reads a user's file"):
        compare_study("smoke", data=str(path), tasks=["jsb"])


def test_equal_budget_with_an_embedding_as_wide_as_the_state():
    from gatedrnn.nn.counting import count_parameters, hidden_for_budget

    h = hidden_for_budget("gru", 20_000, None)
    assert abs(count_parameters("gru", h, h) - 20_000) <= abs(
        count_parameters("gru", h + 1, h + 1) - 20_000
    )


STUDIES = sorted((Path(__file__).resolve().parents[2] / "studies").glob("*.toml"))


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_the_shipped_study_files_are_valid(path):
    spec = load_study(path)
    assert spec.name == path.stem and spec.trials()


def test_the_studies_folder_is_found():
    assert STUDIES
