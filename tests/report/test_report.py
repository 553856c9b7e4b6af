"""The report is built from the database alone, is self-contained, and `gatedrnn compare` runs
end to end at its smoke scale."""

from __future__ import annotations

import re

from gatedrnn.cli import main
from gatedrnn.report import build_report


def test_compare_smoke_end_to_end_and_report_rebuild(tmp_path, capsys):
    assert main(["compare", "--scale", "smoke", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "gru vs lstm: the claims" in out and "simpler" in out
    folder = tmp_path / "compare-smoke"
    page = (folder / "report.html").read_text()
    markdown = (folder / "report.md").read_text()
    assert markdown.startswith("# gatedrnn study") and "## Verdicts" in markdown
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
    _, _, summary = build_report(folder / "study.sqlite", tmp_path / "elsewhere")
    assert (tmp_path / "elsewhere" / "report.html").is_file() and "simpler" in summary


def test_report_of_a_missing_study(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no study database" in capsys.readouterr().out.replace("\n", " ")
