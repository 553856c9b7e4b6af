"""The command line: `gatedrnn cells` prints the table; `compare` says honestly it is not built."""

from __future__ import annotations

import subprocess
import sys

from gatedrnn.cli import main


def test_cells_table(capsys):
    assert main(["cells", "--budget", "20000"]) == 0
    out = capsys.readouterr().out
    for name in ("rnn", "lstm(peepholes)", "lstm(coupled)", "gru(reset=before)", "mgu", "mingru"):
        assert name in out
    assert "57000" in out  # the GRU at 88 → 100


def test_cells_budget_too_small_is_a_clear_error(capsys):
    assert main(["cells", "--budget", "10"]) == 2
    assert "more than the budget of 10" in capsys.readouterr().out


def test_compare_says_it_is_not_built(capsys):
    assert main(["compare"]) == 2
    assert "not built yet" in capsys.readouterr().out


def test_console_script_runs():
    result = subprocess.run(
        [sys.executable, "-m", "gatedrnn.cli", "cells"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "gru" in result.stdout
