"""The study report: ``report.md`` and a self-contained ``report.html`` (figures embedded), built
only from the study's database, never by training.

``verdicts.json`` beside them holds the same verdicts with their numbers, for scripts. Another
pair than GRU against LSTM gets its own three files (``report-rnn-vs-lstm.md`` …).
Contents: the verdict table first; every claim's measurement per task and width; per task the
results table (mean and 95% interval over seeds per cell and width), learning curves against
updates and against seconds, test metric against training fraction; published anchors; the
environment; trials that diverged or failed.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import json
import math
import re
import statistics
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, NamedTuple

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np

from gatedrnn.atomic import write_atomic
from gatedrnn.claims import evaluate_claims, mean_ci, overall, rounds_advice, seeds_advice
from gatedrnn.study.store import StudyStore, check_study_file
from gatedrnn.tasks import TASKS
from gatedrnn.train.loop import validations

__all__ = ["ANCHORS", "Report", "build_report"]

# Published test results to read ours against (different encodings and training budgets).
_CHUNG = (
    " (~20K-parameter models; the NLL is per time step, summed over the 88 keys, as ours, which"
    " studies/chung2014-jsb.toml confirmed on JSB)"
)
ANCHORS = {
    "jsb": "Chung et al. 2014, Table 2, JSB Chorales test NLL: tanh-RNN 9.10, GRU 8.54, LSTM 8.67 "
    "(~20K-parameter models trained to early stopping; the NLL is per time step, summed over the "
    "88 keys, as ours: studies/chung2014-jsb.toml, their setting and training, gave GRU 8.49, "
    "LSTM 8.45, tanh-RNN 8.60)",
    "nottingham": "Chung et al. 2014, Table 2, Nottingham test NLL: tanh-RNN 3.13, GRU 3.23, "
    "LSTM 3.20" + _CHUNG,
    "musedata": "Chung et al. 2014, Table 2, MuseData test NLL: tanh-RNN 6.23, GRU 5.99, LSTM 6.23"
    + _CHUNG,
    "pianomidi": "Chung et al. 2014, Table 2, Piano-midi test NLL: tanh-RNN 9.03, GRU 8.82, "
    "LSTM 9.03" + _CHUNG,
    "adding": "Solving the task means a test MSE well below 1/6 ≈ 0.167, the MSE of predicting 1 "
    "(Hochreiter & Schmidhuber 1997; Arjovsky et al. 2016)",
    "copy": "Remembering nothing scores a recall cross-entropy of log 8 ≈ 2.079 and accuracy 1/8 "
    "(Arjovsky et al. 2016)",
    "ptb": "Zaremba et al. 2014, PTB word-level perplexity, LSTM: small (2×200, no dropout) "
    "valid 120.7 / test 114.5; medium (2×650, dropout 0.5) 86.2 / 82.7 (their training ran "
    "13 and 39 epochs: --preset zaremba-small|zaremba-medium)",
}


def _figure_png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _validations(trial: dict, rows: list[dict]) -> list[dict]:
    """Every validation of a trial in order, each with its epoch: the probes within epochs
    (``train.probes``) and the epochs' ends, from its result; a trial without one (running,
    interrupted) has its ``rows`` from the epochs table, the ends alone."""
    history = (trial.get("result") or {}).get("history")
    return validations(history) if history else rows


def _curves(task: str, rows: list[dict], epochs: dict[str, list[dict]], x_key: str) -> bytes:
    metric = TASKS[task].metrics[0].name
    widths = sorted({r["width"] for r in rows})
    fig, axes = plt.subplots(1, len(widths), figsize=(5.2 * len(widths), 3.6), squeeze=False)
    full = max(r["fraction"] for r in rows)
    for ax, width in zip(axes[0], widths, strict=True):
        by_cell: dict[str, list[list[dict]]] = defaultdict(list)
        for r in rows:
            if r["width"] == width and r["fraction"] == full and epochs.get(r["key"]):
                by_cell[r["cell"]].append(epochs[r["key"]])
        later: list[float] = []  # values from the second epoch on
        for cell, runs in sorted(by_cell.items()):
            # each seed to its own end, thin; the mean where every seed still runs, thick (a
            # mean cut at the shortest run hid the seeds that went on and improved)
            n = min(len(e) for e in runs)
            xs = np.mean([[e[i][x_key] for i in range(n)] for e in runs], axis=0)
            ys = np.array([[e[i]["valid"][metric] for i in range(n)] for e in runs])
            (line,) = ax.plot(xs, ys.mean(0), label=f"{cell} (n={len(runs)})")
            for e in runs:
                values = [r["valid"][metric] for r in e]
                later += [
                    float(v) for r, v in zip(e, values, strict=True)
                    if r["epoch"] > 1 and np.isfinite(v)
                ]  # fmt: skip
                if len(runs) > 1:
                    ax.plot([r[x_key] for r in e], values, color=line.get_color(), alpha=0.3,
                            lw=0.8)  # fmt: skip
        if later and max(later) > min(later):
            # the first epoch's value can be far off (an untrained model): framing it would
            # flatten the part of the curves where the cells differ; it runs off the axis
            pad = 0.05 * (max(later) - min(later))
            ax.set_ylim(min(later) - pad, max(later) + pad)
        ax.set_title(f"{task}, {width.replace('_', ' ')}")
        ax.set_xlabel("updates" if x_key == "updates" else "training seconds")
        ax.set_ylabel(f"validation {metric}")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # nothing completed: no lines
            ax.legend()
    return _figure_png(fig)


def _fractions(task: str, rows: list[dict]) -> bytes | None:
    fractions = sorted({r["fraction"] for r in rows})
    if len(fractions) < 2:
        return None
    metric = TASKS[task].metrics[0].name
    widths = sorted({r["width"] for r in rows})
    fig, axes = plt.subplots(1, len(widths), figsize=(5.2 * len(widths), 3.6), squeeze=False)
    for ax, width in zip(axes[0], widths, strict=True):
        for cell in sorted({r["cell"] for r in rows}):
            means, lows, highs = [], [], []
            for f in fractions:
                values = [
                    r["result"]["test"][metric]
                    for r in rows
                    if r["cell"] == cell and r["width"] == width and r["fraction"] == f
                    and r["status"] == "completed"
                ]  # fmt: skip
                ci = mean_ci(values)
                means.append(ci.estimate)
                lows.append(ci.low if ci.defined else ci.estimate)
                highs.append(ci.high if ci.defined else ci.estimate)
            ax.errorbar(
                fractions,
                means,
                yerr=[np.subtract(means, lows), np.subtract(highs, means)],
                marker="o",
                capsize=3,
                label=cell,
            )
        ax.set_xscale("log")
        ax.set_title(f"{task}, {width.replace('_', ' ')}")
        ax.set_xlabel("fraction of the training set")
        ax.set_ylabel(f"test {metric}")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # nothing completed: no lines
            ax.legend()
    return _figure_png(fig)


def _results_table(
    task: str, rows: list[dict], timings: dict[tuple[str, str], dict[str, list[float]]]
) -> list[list[str]]:
    metric = TASKS[task].metrics[0].name
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["width"], r["fraction"], r["cell"])].append(r)
    largest = max(r["fraction"] for r in rows)  # the arm the timing ran at
    table = []
    for (width, fraction, cell), members in sorted(groups.items()):
        done = [r["result"] for r in members if r["status"] == "completed"]
        if not done:
            table.append(
                [
                    width,
                    f"{fraction:g}",
                    cell,
                    str(members[0]["hidden_size"]),
                    "",
                    "",
                    "",
                    f"{len(members)} not completed",
                ]
            )
            continue
        test = mean_ci([d["test"][metric] for d in done])
        train = mean_ci([d["train"][metric] for d in done])
        seconds = mean_ci([d["seconds_per_epoch"] for d in done])
        speed = f"{seconds.estimate:.3f} s/epoch, n={len(done)}"
        step = timings.get((task, width), {}).get(cell)
        if step and fraction == largest:
            speed += f"; {statistics.median(step) * 1e3:.3g} ms/step interleaved"
        table.append(
            [
                width,
                f"{fraction:g}",
                cell,
                str(members[0]["hidden_size"]),
                f"{done[0]['parameters']:,}",
                str(test),
                str(train),
                speed,
            ]
        )
    return table


class Report(NamedTuple):
    markdown: Path
    html: Path
    summary: dict[str, tuple[str, str]]  # claim → (verdict, scope counts)
    advice: str | None  # how many seeds would decide the inconclusive scopes (seeds_advice)
    rounds_advice: str | None = None  # and how many timing rounds the speed ones (rounds_advice)


def build_report(
    db_path: str | Path,
    out_dir: str | Path | None = None,
    candidate: str = "gru",
    baseline: str = "lstm",
) -> Report:
    """Write report.md (with PNG files beside it), report.html and verdicts.json (every verdict
    with its numbers, for scripts); returns the first two paths, the overall verdicts and the
    seed and timing-round advice. A pair other than gru against lstm gets its own files,
    ``report-rnn-vs-lstm.md`` and so on."""
    db_path = Path(db_path)
    check_study_file(db_path)  # before anything is written, there or beside it
    out = Path(out_dir) if out_dir else db_path.parent
    out.mkdir(parents=True, exist_ok=True)
    store = StudyStore(db_path)
    trials = store.trials()
    epochs = {t["key"]: _validations(t, store.epochs(t["key"])) for t in trials}
    spec, env = store.get_meta("spec") or {}, store.get_meta("environment") or {}
    timings, waits = store.timings(), store.timing_waits()
    store.close()
    verdicts = evaluate_claims(trials, candidate, baseline, timings, waits)
    summary = overall(verdicts)
    advice = seeds_advice(verdicts)
    more_rounds = rounds_advice(verdicts)

    sections: list[tuple[str, Any]] = []  # (kind, payload): "h", "p", "table", "figure"
    title = f"gatedrnn study {spec.get('name', db_path.parent.name)!r}: {candidate} vs {baseline}"
    sections.append(("h1", title))
    statuses = Counter(t["status"] for t in trials)
    unfinished = ""
    if set(statuses) - {"completed"}:  # a run stopped part way, or trials that failed
        counts = ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
        unfinished = f" ({counts}: the verdicts read the completed ones)"
    sections.append(
        (
            "p",
            f"{len(trials)} trials{unfinished}; tasks {', '.join(spec.get('tasks', []))}; "
            f"cells {', '.join(sorted({t['cell'] for t in trials}))}; "
            f"{spec.get('seeds', '?')} seeds.",
        )
    )
    sections.append(("h2", "Verdicts"))
    sections.append(
        ("table", (["claim", "verdict", "scopes"], [[c, v, n] for c, (v, n) in summary.items()]))
    )
    sections.append(
        (
            "p",
            "supported / contradicted need every scope to agree; intervals are "
            "95% t intervals over seeds, paired by seed; ratios must clear a 5% "
            "margin, and epochs under 10 ms are too short to time against each other; "
            "'comparable' is a TOST against ±2% of the baseline; '~N seeds (interleaved "
            "rounds) would decide it' assumes the per-seed (per-round) mean and spread hold (a "
            "planning estimate).",
        )
    )
    for sentence in (advice, more_rounds):
        if sentence:
            sections.append(("p", sentence))
    sections.append(("h2", "Measurements"))
    sections.append(
        (
            "table",
            (
                ["claim", "scope", "verdict", "measurement"],
                [[v.claim, v.scope, v.verdict, v.measurement] for v in verdicts],
            ),
        )
    )
    figures: dict[str, bytes] = {}
    for task in spec.get("tasks", sorted({t["task"] for t in trials})):
        rows = [t for t in trials if t["task"] == task]
        metric = TASKS[task].metrics[0]
        direction = "higher" if metric.higher_is_better else "lower"
        sections.append(("h2", f"Task {task}"))
        sections.append(
            (
                "p",
                f"{TASKS[task].description}. Test {metric.name}, {direction} is "
                "better; mean [95% interval] over seeds at the best epoch.",
            )
        )
        sections.append(
            (
                "table",
                (
                    [
                        "width",
                        "fraction",
                        "cell",
                        "hidden",
                        "params",
                        f"test {metric.name}",
                        f"train {metric.name}",
                        "speed",
                    ],
                    _results_table(task, rows, timings),
                ),
            )
        )
        for name, png in (
            (f"{task}_curves_updates.png", _curves(task, rows, epochs, "updates")),
            (f"{task}_curves_seconds.png", _curves(task, rows, epochs, "elapsed")),
            (f"{task}_fractions.png", _fractions(task, rows)),
        ):
            if png is not None:
                figures[name] = png
                sections.append(("figure", name))
        if task in ANCHORS:
            sections.append(("p", "Published anchor: " + ANCHORS[task]))
    bad = [t for t in trials if t["status"] != "completed"]
    if bad:
        sections.append(("h2", "Trials that did not complete"))
        sections.append(
            (
                "table",
                (
                    ["task", "cell", "width", "seed", "status", "error"],
                    [
                        [
                            t["task"],
                            t["cell"],
                            t["width"],
                            str(t["seed"]),
                            t["status"],
                            (t["error"] or "")[:200],
                        ]
                        for t in bad
                    ],
                ),
            )
        )
    if trials:
        sections.append(("h2", "Training"))
        sections.append(("table", (["setting", "value"], _training_rows(trials))))
    sections.append(("h2", "Environment"))
    sections.append(("table", (["key", "value"], [[k, str(v)] for k, v in sorted(env.items())])))

    for name, png in figures.items():
        (out / name).write_bytes(png)
    suffix = _pair_suffix(candidate, baseline)
    md_path, html_path = out / f"report{suffix}.md", out / f"report{suffix}.html"
    write_atomic(md_path, lambda tmp: tmp.write_text(_markdown(sections)))
    write_atomic(html_path, lambda tmp: tmp.write_text(_html(title, sections, figures)))
    document = {
        "study": spec.get("name", db_path.parent.name),
        "candidate": candidate,
        "baseline": baseline,
        "overall": {c: {"verdict": v, "scopes": n} for c, (v, n) in summary.items()},
        "verdicts": [dataclasses.asdict(v) for v in verdicts],
        "environment": env,
    }
    text = json.dumps(_finite(document), indent=1, allow_nan=False)
    write_atomic(out / f"verdicts{suffix}.json", lambda tmp: tmp.write_text(text + "\n"))
    return Report(md_path, html_path, summary, advice, more_rounds)


_PER_TRIAL = ("task", "cell", "hidden_size", "seed", "fraction")  # in the tasks' tables


def _training_rows(trials: list[dict]) -> list[list[str]]:
    """How the trials were trained, from their stored configurations: each setting with its one
    value, or its values where the trials differ (a cell's options, say); what the tasks' tables
    show per trial is left out."""
    rows = []
    for key in trials[0]["config"]:
        if key in _PER_TRIAL:
            continue
        values = sorted({json.dumps(t["config"].get(key), sort_keys=True) for t in trials})
        rows.append([key, "; ".join(json.loads(v) if v[0] == '"' else v for v in values)])
    return rows


def _pair_suffix(candidate: str, baseline: str) -> str:
    """ "" for the claims' own pair, GRU against LSTM; else "-rnn-vs-lstm" (a variant's label made
    safe for a file name), so that another pair's report does not replace that one."""
    if (candidate, baseline) == ("gru", "lstm"):
        return ""
    safe = [re.sub(r"[^A-Za-z0-9._-]+", "_", label) for label in (candidate, baseline)]
    return f"-{safe[0]}-vs-{safe[1]}"


def _finite(value: Any) -> Any:
    """``value`` with every non-finite float (an undefined interval's bounds) as None, so that
    the file is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _markdown(sections) -> str:
    lines = []
    for kind, payload in sections:
        if kind == "h1":
            lines += [f"# {payload}", ""]
        elif kind == "h2":
            lines += [f"## {payload}", ""]
        elif kind == "p":
            lines += [payload, ""]
        elif kind == "figure":
            lines += [f"![{payload}]({payload})", ""]
        else:
            header, rows = payload
            lines.append("| " + " | ".join(header) + " |")
            lines.append("|" + "---|" * len(header))
            lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
            lines.append("")
    return "\n".join(lines)


_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
td.supported { background: #e3f4e3; } td.contradicted { background: #fbe3e3; }
td.inconclusive { background: #f6f6e6; }
img { max-width: 100%; }
"""


def _html(title: str, sections, figures: dict[str, bytes]) -> str:
    parts = [
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
    ]
    for kind, payload in sections:
        if kind in ("h1", "h2"):
            parts.append(f"<{kind}>{html.escape(payload)}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{html.escape(payload)}</p>")
        elif kind == "figure":
            data = base64.b64encode(figures[payload]).decode()
            parts.append(
                f"<p><img alt='{html.escape(payload)}' src='data:image/png;base64,{data}'></p>"
            )
        else:
            header, rows = payload
            parts.append(
                "<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
            )
            for row in rows:
                cells = "".join(
                    f"<td class='{c}'>{html.escape(c)}</td>"
                    if c in ("supported", "contradicted", "inconclusive")
                    else f"<td>{html.escape(c)}</td>"
                    for c in row
                )
                parts.append(f"<tr>{cells}</tr>")
            parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)
