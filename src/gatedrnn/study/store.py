"""The results store: one SQLite database per study (WAL), committed per epoch.

Tables: ``meta`` (the study spec and environment, JSON), ``trials`` (one row per trial, keyed by
its configuration hash, with status, error, attempts and the final result as JSON) and ``epochs``
(one row per finished epoch), ``timings`` (the interleaved timing of each task and width arm's
cells after the trials: seconds per training step, per round). Reports read only this database.

A study's spec may change its number of seeds between runs (and its timing rounds and executor,
nothing else): the trials of seeds beyond the current number stay in the database, unread
(:meth:`StudyStore.trials` and :meth:`StudyStore.counts` stop at the spec's seeds), for a later
run with more seeds to reuse.
"""

from __future__ import annotations

import contextlib
import functools
import json
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["DONE", "StudyStore", "check_study_file"]

DONE = ("completed", "diverged")  # statuses a re-run skips

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trials (
    key TEXT PRIMARY KEY,
    task TEXT NOT NULL, cell TEXT NOT NULL, width TEXT NOT NULL, seed INTEGER NOT NULL,
    fraction REAL NOT NULL, hidden_size INTEGER NOT NULL, config TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending', error TEXT, attempts INTEGER NOT NULL DEFAULT 0,
    started REAL, finished REAL, result TEXT
);
CREATE TABLE IF NOT EXISTS epochs (
    trial TEXT NOT NULL REFERENCES trials(key), epoch INTEGER NOT NULL, updates INTEGER NOT NULL,
    seconds REAL NOT NULL, elapsed REAL NOT NULL, train_loss REAL NOT NULL, valid TEXT NOT NULL,
    lr REAL NOT NULL, units_per_second REAL NOT NULL,
    PRIMARY KEY (trial, epoch)
);
CREATE TABLE IF NOT EXISTS timings (
    task TEXT NOT NULL, width TEXT NOT NULL, cell TEXT NOT NULL, round INTEGER NOT NULL,
    seconds_per_step REAL NOT NULL, steps INTEGER NOT NULL, waited REAL,
    PRIMARY KEY (task, width, cell, round)
);
"""


def check_study_file(path: str | Path) -> None:
    """Raise ``ValueError`` unless ``path`` is a study's database (read without writing to
    it, so that another program's file is left as it was)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no study database")
    try:
        with contextlib.closing(
            sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        ) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    except sqlite3.DatabaseError as error:
        raise ValueError(f"{path}: not a study database ({error})") from None
    if not {"meta", "trials", "epochs"} <= tables:
        raise ValueError(
            f"{path}: not a study database (its tables: {', '.join(sorted(tables)) or 'none'})"
        )


class StudyStore:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self.db.row_factory = sqlite3.Row
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.executescript(_SCHEMA)
            columns = {row["name"] for row in self.db.execute("PRAGMA table_info(timings)")}
            if "waited" not in columns:  # a study stored before the timing measured it
                self.db.execute("ALTER TABLE timings ADD COLUMN waited REAL")
        except sqlite3.DatabaseError as error:
            self.db.close()
            raise ValueError(f"{self.path}: not a study database ({error})") from None

    def close(self) -> None:
        self.db.close()

    def get_meta(self, key: str) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row["value"])

    def set_meta(self, key: str, value: Any) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, json.dumps(value))
        )
        if key == "spec":
            self.__dict__.pop("_seed_limit", None)  # read again from the new spec

    def add_trials(self, trials: Iterable) -> None:
        with self.db:
            self.db.execute("BEGIN")
            for t in trials:
                self.db.execute(
                    "INSERT OR IGNORE INTO trials (key, task, cell, width, seed, fraction, "
                    "hidden_size, config) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        t.key,
                        t.task,
                        t.cell.label,
                        t.width,
                        t.seed,
                        t.fraction,
                        t.config.hidden_size,
                        json.dumps(t.config.to_dict()),
                    ),
                )

    def status(self, key: str) -> str:
        return self.db.execute("SELECT status FROM trials WHERE key = ?", (key,)).fetchone()[0]

    def mark_running(self, key: str) -> None:
        self.db.execute(
            "UPDATE trials SET status = 'running', attempts = attempts + 1, started = ? "
            "WHERE key = ?",
            (time.time(), key),
        )

    def record_epoch(self, key: str, record: dict[str, Any]) -> None:
        # a resumed trial redoes the epochs after its last checkpoint: the newer row wins
        self.db.execute(
            "INSERT OR REPLACE INTO epochs (trial, epoch, updates, seconds, elapsed, train_loss, "
            "valid, lr, units_per_second) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                key,
                record["epoch"],
                record["updates"],
                record["seconds"],
                record["elapsed"],
                record["train_loss"],
                json.dumps(record["valid"]),
                record["lr"],
                record["units_per_second"],
            ),
        )

    def finish(self, key: str, result: dict[str, Any]) -> None:
        with self.db:
            self.db.execute("BEGIN")
            # The epochs were committed as they ran; the result's history is authoritative (a
            # resumed trial may have redone epochs), so the rows are made to match it exactly.
            for record in result["history"]:
                self.record_epoch(key, record)
            self.db.execute(
                "UPDATE trials SET status = ?, error = ?, finished = ?, result = ? WHERE key = ?",
                (
                    result["status"],
                    result["reason"] if result["status"] == "diverged" else None,
                    time.time(),
                    json.dumps(result),
                    key,
                ),
            )

    def fail(self, key: str, error: str) -> None:
        self.db.execute(
            "UPDATE trials SET status = 'failed', error = ? WHERE key = ?", (error, key)
        )

    def seeds(self) -> int | None:
        """The stored spec's number of seeds (None before a spec is stored): the trials of
        higher seeds are kept but not read."""
        spec = self.get_meta("spec")
        return spec.get("seeds") if isinstance(spec, dict) else None

    @functools.cached_property
    def _seed_limit(self) -> int:
        """The seeds read stop below it: read once (``counts`` runs at every epoch's progress
        update), again after :meth:`set_meta` stores a spec."""
        seeds = self.seeds()
        return seeds if isinstance(seeds, int) else 2**62

    def trials(self) -> list[dict[str, Any]]:
        """The study's trials (those of its spec's seeds), ordered by task, cell, width,
        fraction and seed, with their configuration and result parsed."""
        rows = self.db.execute(
            "SELECT * FROM trials WHERE seed < ? ORDER BY task, cell, width, fraction, seed",
            (self._seed_limit,),
        )
        out = []
        for row in rows:
            item = dict(row)
            item["config"] = json.loads(item["config"])
            item["result"] = json.loads(item["result"]) if item["result"] else None
            out.append(item)
        return out

    def epochs(self, key: str) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT * FROM epochs WHERE trial = ? ORDER BY epoch", (key,))
        return [dict(row) | {"valid": json.loads(row["valid"])} for row in rows]

    def record_timings(
        self,
        task: str,
        width: str,
        seconds: dict[str, list[float]],
        steps: int,
        waited: list[float | None] | None = None,
    ) -> None:
        """One arm's interleaved timing (cell label → seconds per step, per round; and per
        round the share of its time the threads waited for a core, where known), in one
        transaction."""
        shares = list(waited) if waited is not None else []
        rows = [
            (task, width, cell, r, value, steps, shares[r] if r < len(shares) else None)
            for cell, values in seconds.items()
            for r, value in enumerate(values)
        ]
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("DELETE FROM timings WHERE task = ? AND width = ?", (task, width))
            self.db.executemany(
                "INSERT INTO timings (task, width, cell, round, seconds_per_step, steps, "
                "waited) VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )

    def timings(self) -> dict[tuple[str, str], dict[str, list[float]]]:
        """(task, width) → cell label → seconds per step, by round."""
        out: dict[tuple[str, str], dict[str, list[float]]] = {}
        rows = self.db.execute(
            "SELECT task, width, cell, seconds_per_step FROM timings ORDER BY task, width, cell, "
            "round"
        )
        for row in rows:
            out.setdefault((row["task"], row["width"]), {}).setdefault(row["cell"], []).append(
                row["seconds_per_step"]
            )
        return out

    def timing_waits(self) -> dict[tuple[str, str], list[float]]:
        """(task, width) → per round, the share of its time the timing's threads waited for a
        core (rounds of a study timed before this was measured, or where the system does not
        tell it, are left out)."""
        out: dict[tuple[str, str], list[float]] = {}
        rows = self.db.execute(
            "SELECT task, width, round, MAX(waited) AS waited FROM timings "
            "WHERE waited IS NOT NULL GROUP BY task, width, round ORDER BY task, width, round"
        )
        for row in rows:
            out.setdefault((row["task"], row["width"]), []).append(row["waited"])
        return out

    def statuses(self) -> dict[str, str]:
        """Trial key → status, of every trial held (the seeds beyond the spec's too)."""
        return dict(self.db.execute("SELECT key, status FROM trials"))

    def trial_seeds(self) -> dict[str, int]:
        """Trial key → seed, of every trial held."""
        return dict(self.db.execute("SELECT key, seed FROM trials"))

    def epoch_counts(self) -> dict[str, int]:
        """Trial key → epochs recorded (trials with none are absent)."""
        rows = self.db.execute("SELECT trial, COUNT(*) FROM epochs GROUP BY trial")
        return dict(rows)

    def counts(self) -> dict[str, int]:
        """Status → how many of the study's trials (those of its spec's seeds) have it."""
        rows = self.db.execute(
            "SELECT status, COUNT(*) FROM trials WHERE seed < ? GROUP BY status",
            (self._seed_limit,),
        )
        return {status: n for status, n in rows}
