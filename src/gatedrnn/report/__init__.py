"""Reports built only from a study's database: markdown and self-contained HTML."""

from gatedrnn.report.build import ANCHORS, Report, build_report

__all__ = ["ANCHORS", "Report", "build_report"]
