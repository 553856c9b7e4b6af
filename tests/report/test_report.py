"""The report is built from the database alone, is self-contained, and `gatedrnn compare` runs
end to end at its smoke scale."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
import subprocess

import pytest

from gatedrnn.cli import main
from gatedrnn.report import build_report

# Written into a copy of the report: after load, the title says how many images decoded.
PROBE = """<script>
window.addEventListener("error", e => { document.title = "ERROR " + e.message; });
window.addEventListener("load", () => {
  const images = [...document.images];
  const broken = images.filter(i => !i.complete || i.naturalWidth === 0).length;
  if (!document.title.startsWith("ERROR")) {
    document.title = "IMAGES " + images.length + " BROKEN " + broken;
  }
});
</script></body>"""


@pytest.fixture(scope="module")
def smoke_study(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["compare", "--scale", "smoke", "--out", str(root)]) == 0
    assert "gru vs lstm: the claims" in printed.getvalue() and "simpler" in printed.getvalue()
    # the seeds it left open, and how to add them
    said = " ".join(printed.getvalue().split())
    assert "Of the " in said and "`gatedrnn compare --seeds N` with the same other options" in said
    return root / "compare-smoke"


def test_the_timing_round_advice_reaches_the_report_and_the_command_line(
    smoke_study, tmp_path, capsys, monkeypatch
):
    """Where speed scopes are open, the report says how many timing rounds would settle them,
    and the command line how to run them (``rounds_advice`` fixed here: a smoke study's speed
    verdicts depend on the machine)."""
    import argparse

    from gatedrnn import cli
    from gatedrnn.report import build

    sentence = "Of the inconclusive speed scopes timed in interleaved rounds, … 12 rounds decide 1."
    monkeypatch.setattr(build, "rounds_advice", lambda verdicts: sentence)
    report = build_report(smoke_study / "study.sqlite", tmp_path)
    assert report.rounds_advice == sentence
    assert sentence in (tmp_path / "report.md").read_text()
    for command, again in [
        ("compare", "Run `gatedrnn compare --timing-rounds N` with the same other options"),
        ("report", "Run the study with timing_rounds = N"),
    ]:
        args = argparse.Namespace(command=command, candidate="gru", baseline="lstm")
        cli._print_verdicts(report, args, cli.Console(width=200))
        said = " ".join(capsys.readouterr().out.split())
        assert f"{sentence} {again}: only the timing runs again." in said


def test_report_reads_well_in_a_browser(smoke_study, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Chromium is not installed (Debian package chromium)")
    page = tmp_path / "probe.html"
    page.write_text((smoke_study / "report.html").read_text().replace("</body>", PROBE))
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=5000",
        "--dump-dom",
    ]
    result = subprocess.run(
        [browser, *flags, page.as_uri()], capture_output=True, text=True, timeout=120, check=False
    )
    title = re.search(r"<title>(.*?)</title>", result.stdout)
    assert title, result.stderr[-2000:]
    counts = re.fullmatch(r"IMAGES (\d+) BROKEN (\d+)", title.group(1))
    assert counts, f"the page reported {title.group(1)!r}"
    assert int(counts.group(1)) >= 4 and int(counts.group(2)) == 0
    console_errors = [
        line
        for line in result.stderr.splitlines()
        if "CONSOLE" in line and ("Uncaught" in line or "Error" in line)
    ]
    assert not console_errors, console_errors


def test_compare_smoke_end_to_end_and_report_rebuild(smoke_study, tmp_path, capsys):
    folder = smoke_study
    page = (folder / "report.html").read_text()
    markdown = (folder / "report.md").read_text()
    assert markdown.startswith("# gatedrnn study") and "## Verdicts" in markdown
    # how the trials were trained: settings they share with their value, the rest per trial
    training = markdown.split("## Training")[1].split("## Environment")[0]
    assert "| optimizer | adam |" in training and "| weight_noise | 0.0 |" in training
    assert "| cell |" not in training and "| seed |" not in training
    images = re.findall(r"<img [^>]*src='([^']+)'", page)
    assert images and all(src.startswith("data:image/png;base64,") for src in images)
    assert not re.search(r"(src|href)=['\"]https?:", page)  # nothing from the network
    for name in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown):
        assert (folder / name).is_file()

    # the report is rebuilt from the database alone: delete the checkpoints, same verdicts
    for checkpoint in (folder / "checkpoints").iterdir():
        checkpoint.unlink()
    before = (folder / "report.md").read_text()
    assert main(["report", str(folder)]) == 0
    assert (folder / "report.md").read_text() == before
    said = " ".join(capsys.readouterr().out.split())
    assert "Run the study with seeds = N: the seeds done are reused." in said
    report = build_report(folder / "study.sqlite", tmp_path / "elsewhere")
    assert (tmp_path / "elsewhere" / "report.html").is_file() and "simpler" in report.summary
    # two seeds leave scopes open: the report says how many seeds would settle them
    assert report.advice and report.advice.startswith("Of the ")
    assert report.advice in (tmp_path / "elsewhere" / "report.md").read_text()

    # another pair gets its own files; the GRU/LSTM report stays as it was
    assert main(["report", str(folder), "--candidate", "rnn", "--baseline", "lstm"]) == 0
    assert (folder / "report.md").read_text() == before
    other = (folder / "report-rnn-vs-lstm.md").read_text()
    assert other.startswith("# gatedrnn study") and "rnn vs lstm" in other.splitlines()[0]
    assert (folder / "report-rnn-vs-lstm.html").is_file()
    assert json.loads((folder / "verdicts-rnn-vs-lstm.json").read_text())["candidate"] == "rnn"


def test_verdicts_json_is_strict_and_matches_the_report(smoke_study):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    document = json.loads((smoke_study / "verdicts.json").read_text(), parse_constant=refuse)
    assert document["study"] == "compare-smoke"
    assert (document["candidate"], document["baseline"]) == ("gru", "lstm")
    markdown = (smoke_study / "report.md").read_text()
    for claim, entry in document["overall"].items():
        assert f"| {claim} | {entry['verdict']} | {entry['scopes']} |" in markdown
    for verdict in document["verdicts"]:
        assert set(verdict) == {"claim", "scope", "verdict", "measurement", "details"}
        assert f"| {verdict['claim']} | {verdict['scope']} | {verdict['verdict']} |" in markdown
    speed = [v for v in document["verdicts"] if v["claim"] == "faster training"]
    assert speed and all("interleaved rounds" in v["measurement"] for v in speed)
    assert all(set(v["details"]["ratio"]) == {"estimate", "low", "high", "n"} for v in speed)


def test_report_of_a_missing_study(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no study database" in capsys.readouterr().err.replace("\n", " ")


def test_report_of_a_file_that_is_not_a_study(tmp_path, capsys):
    """Not SQLite, or another program's SQLite file: a clear error, and the file untouched
    (opening it as a study used to create the study's tables in it)."""
    import sqlite3

    from gatedrnn.study import StudyStore

    garbage = tmp_path / "garbage" / "study.sqlite"
    garbage.parent.mkdir()
    garbage.write_text("not a database")
    assert main(["report", str(garbage.parent)]) == 2
    out = " ".join(capsys.readouterr().err.split())
    assert "study.sqlite: not a study database (file is not a database)" in out
    with pytest.raises(ValueError, match="not a study database"):
        StudyStore(garbage)

    foreign = tmp_path / "foreign.sqlite"
    with contextlib.closing(sqlite3.connect(foreign)) as connection, connection:
        connection.execute("CREATE TABLE notes (text)")
    before = foreign.read_bytes()
    assert main(["report", str(foreign)]) == 2
    assert "not a study database (its tables: notes)" in " ".join(capsys.readouterr().err.split())
    assert foreign.read_bytes() == before
    assert not (tmp_path / "report.md").exists()


def test_published_anchors_cover_the_music_sets_and_ptb():
    """Chung et al. 2014 Table 2 for each of the four music sets, Zaremba et al. 2014 for PTB,
    each naming all three cells where the paper has them."""
    from gatedrnn.report.build import ANCHORS

    for task in ("jsb", "nottingham", "musedata", "pianomidi"):
        assert "Chung et al. 2014, Table 2" in ANCHORS[task]
        assert all(cell in ANCHORS[task] for cell in ("tanh-RNN", "GRU", "LSTM"))
    assert "Zaremba et al. 2014" in ANCHORS["ptb"]


def test_report_of_a_study_whose_trials_all_failed(smoke_study, tmp_path):
    """Every trial failed (a CUDA study on a machine without one, say): the report still builds,
    judges nothing it has no results for, and lists each failure with its error."""
    import sqlite3

    db = tmp_path / "study.sqlite"
    with (
        contextlib.closing(sqlite3.connect(smoke_study / "study.sqlite")) as source,
        contextlib.closing(sqlite3.connect(db)) as copy,
    ):
        source.backup(copy)  # with whatever a write-ahead log still holds
    with contextlib.closing(sqlite3.connect(db)) as connection, connection:
        connection.execute(
            "UPDATE trials SET status = 'failed', result = NULL, error = 'RuntimeError: no GPU'"
        )
    report = build_report(db, tmp_path / "report")
    md, summary = report.markdown, report.summary
    assert summary["simpler"][0] == "supported"  # from the cell definitions alone
    assert {v for c, (v, _) in summary.items() if c != "simpler"} == {"inconclusive"}
    text = md.read_text()
    assert text.count("RuntimeError: no GPU") > 0
    # the headline says so, not only the table at the end
    trials = text.split(" trials")[0].rsplit("\n", 1)[-1]
    assert f"{trials} trials ({trials} failed: the verdicts read the completed ones)" in text


def test_undefined_numbers_become_null():
    from gatedrnn.report.build import _finite

    value = {"ratio": {"estimate": 1.0, "low": float("nan"), "high": float("inf")}, "n": (1, 2.5)}
    assert _finite(value) == {"ratio": {"estimate": 1.0, "low": None, "high": None}, "n": [1, 2.5]}


def test_the_curves_draw_the_probes_between_the_epochs_ends(smoke_study):
    """The compare study validates mid-epoch (probes = 1): the curves read every validation of
    a finished trial from its result, in order; a trial without a result keeps its epochs."""
    from gatedrnn.report.build import _validations
    from gatedrnn.study.store import StudyStore

    store = StudyStore(smoke_study / "study.sqlite")
    try:
        trial = store.trials()[0]
        rows = store.epochs(trial["key"])
    finally:
        store.close()
    points = _validations(trial, rows)
    assert len(points) == 2 * len(rows)  # one probe per epoch, then its end
    assert [p["epoch"] for p in points] == [r["epoch"] for r in rows for _ in (0, 1)]
    updates = [p["updates"] for p in points]
    assert updates == sorted(set(updates))
    assert [p["valid"] for p in points[1::2]] == [r["valid"] for r in rows]
    assert _validations({**trial, "result": None}, rows) is rows
