"""The job queue on SQLite (stdlib): jobs, each input's state, finished video segments.

A crash or a quit leaves the database consistent, so `resume_job` continues where
the job stopped: inputs already done are not redone, an interrupted input is redone
to the same output names (no duplicates), a video restarts after its last finished
segment. Inputs are inserted in chunks from a generator and read back with a
cursor, so 100,000 inputs never sit in memory at once.
"""
from __future__ import annotations

import json
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import OculaError
from engine.jobs.processes import process_alive  # noqa: F401  (re-exported)
from engine.jobs.spec import JobSpec
from engine.media.inputs import InputItem
from engine.media.remote import is_url

ITEM_STATES = ("pending", "running", "done", "failed")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    task TEXT NOT NULL,
    model TEXT NOT NULL,
    output_dir TEXT NOT NULL,
    state TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    expanded INTEGER NOT NULL DEFAULT 0,
    pid INTEGER,
    elapsed_s REAL NOT NULL DEFAULT 0,
    message TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS items (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    path TEXT NOT NULL,
    out_key TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    error TEXT,
    outputs TEXT,
    info TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    started REAL,
    finished REAL,
    PRIMARY KEY (job_id, seq)
);
CREATE UNIQUE INDEX IF NOT EXISTS items_path ON items (job_id, path);
CREATE UNIQUE INDEX IF NOT EXISTS items_key ON items (job_id, out_key COLLATE NOCASE)
    WHERE kind != 'error';
CREATE INDEX IF NOT EXISTS items_state ON items (job_id, state, seq);
CREATE TABLE IF NOT EXISTS segments (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    idx INTEGER NOT NULL,
    path TEXT NOT NULL,
    first_frame INTEGER NOT NULL,
    next_frame INTEGER NOT NULL,
    end_pts INTEGER,
    frames INTEGER NOT NULL,
    state TEXT,
    PRIMARY KEY (job_id, seq, idx)
);
"""
# Names at the top of the output folder kept for the job's own files.
_RESERVED_PREFIX = "ocula-"


@dataclass
class JobRecord:
    id: str
    task: str
    model: str
    state: str  # queued | running | paused | finished | cancelled | failed | interrupted
    output_dir: str
    created: float
    updated: float
    total: int
    done: int
    failed: int
    pending: int
    elapsed_s: float
    message: str
    pid: int | None = None  # the process that last ran it

    @property
    def spec_summary(self) -> str:
        return f"{self.task} · {self.model}"


@dataclass
class ItemRecord:
    job_id: str
    seq: int
    path: str
    out_key: str
    kind: str
    state: str
    error: str | None
    outputs: list[str]
    info: dict[str, Any]
    attempts: int
    started: float | None
    finished: float | None

    @property
    def duration_s(self) -> float | None:
        if self.started is None or self.finished is None:
            return None
        return self.finished - self.started


@dataclass
class SegmentRecord:
    idx: int
    path: str
    first_frame: int
    next_frame: int  # index of the first frame NOT in this segment
    end_pts: int | None  # pts of the last frame written, in the input's time base
    frames: int
    state: dict[str, Any]  # e.g. the tracker, to continue identities after a resume


def default_store_path() -> Path:
    from engine.paths import app_home

    return app_home() / "jobs.sqlite"


class JobStoreError(OculaError):
    """The job store cannot be opened (a folder that cannot be written, a locked file)."""


class JobStoreDamaged(JobStoreError):
    """The job store file is not an SQLite database (or is damaged). Nothing is moved on
    its own: `ocula jobs reset-store` moves it aside (see `move_store_aside`)."""

    def __init__(self, path: Path, detail: str) -> None:
        super().__init__(
            f"the job store {path} is damaged ({detail}). Move it aside with `ocula jobs "
            f"reset-store` (it is kept as {path.name}.corrupt-<time>, and a new, empty job "
            f"store starts; the jobs it held cannot be resumed).")
        self.path = path


def store_error(path: Path, exc: sqlite3.DatabaseError) -> JobStoreError:
    """The message for an SQLite error on the job store: damaged, or cannot be used."""
    if _is_damage(exc):
        return JobStoreDamaged(path, str(exc))
    return JobStoreError(f"the job store {path} cannot be used ({exc}). Check that its "
                         f"folder can be written, or set OCULA_HOME to another folder.")


def _is_damage(exc: sqlite3.DatabaseError) -> bool:
    """A damaged file (not a database, malformed), as opposed to a locked or unopenable one."""
    return not isinstance(exc, sqlite3.OperationalError) or "malformed" in str(exc)


def store_problem(path: str | os.PathLike | None = None) -> str | None:
    """What is wrong with the job store file (None: it is fine, or it does not exist yet)."""
    path = Path(path) if path is not None else default_store_path()
    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
        try:
            row = conn.execute("PRAGMA quick_check").fetchone()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        return str(exc) if _is_damage(exc) else None
    return None if row and row[0] == "ok" else str(row[0] if row else "no answer")


def move_store_aside(path: str | os.PathLike | None = None) -> Path | None:
    """Rename the job store (and its -wal/-shm files) to `jobs.sqlite.corrupt-<time>`;
    return the new name (None when there was no store file)."""
    path = Path(path) if path is not None else default_store_path()
    if not path.exists():
        return None
    target = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
    n = 2
    while target.exists():
        target = target.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}-{n}")
        n += 1
    for suffix in ("-wal", "-shm"):
        extra = path.with_name(path.name + suffix)
        if extra.exists():
            os.replace(extra, target.with_name(target.name + suffix))
    os.replace(path, target)
    return target


class JobStore:
    """SQLite job queue; safe to use from several threads (one connection per thread)."""

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = Path(path) if path is not None else default_store_path()
        self._local = threading.local()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._conn() as conn:
                conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            self.close()
            raise store_error(self.path, exc) from exc
        except OSError as exc:
            raise JobStoreError(f"the job store's folder {self.path.parent} cannot be created "
                                f"({exc.strerror}). Set OCULA_HOME to a folder you can "
                                f"write to.") from exc

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30.0)
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a power cut may lose the last commits but never
            # corrupts; a lost "done" only means that item is redone to the same names.
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- jobs ---------------------------------------------------------------------------
    def create_job(self, spec: JobSpec, *, job_id: str | None = None) -> str:
        spec = _absolute(spec.validate())
        job_id = job_id or new_job_id()
        now = time.time()
        with self._conn() as conn:
            try:
                conn.execute(
                    "INSERT INTO jobs (id, spec, task, model, output_dir, state, created, updated)"
                    " VALUES (?, ?, ?, ?, ?, 'queued', ?, ?)",
                    (job_id, spec.to_toml(), spec.task, spec.model, spec.output_dir, now, now))
            except sqlite3.IntegrityError as exc:
                raise ValueError(f"job id '{job_id}' already exists in {self.path}.") from exc
        return job_id

    def spec(self, job_id: str) -> JobSpec:
        row = self._conn().execute("SELECT spec FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise KeyError(job_id)
        return JobSpec.from_toml(row[0])

    def has_job(self, job_id: str) -> bool:
        return self._conn().execute("SELECT 1 FROM jobs WHERE id = ?",
                                    (job_id,)).fetchone() is not None

    def set_state(self, job_id: str, state: str, *, message: str | None = None,
                  pid: int | None = None, elapsed_s: float | None = None) -> None:
        sets, args = ["state = ?", "updated = ?"], [state, time.time()]
        if message is not None:
            sets.append("message = ?")
            args.append(message)
        if pid is not None:
            sets.append("pid = ?")
            args.append(pid)
        if elapsed_s is not None:
            sets.append("elapsed_s = ?")
            args.append(elapsed_s)
        with self._conn() as conn:
            conn.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id = ?", (*args, job_id))

    def job_row(self, job_id: str) -> dict[str, Any]:
        cur = self._conn().execute("SELECT * FROM jobs WHERE id = ?", (job_id,))
        row = cur.fetchone()
        if row is None:
            raise KeyError(job_id)
        return dict(zip([c[0] for c in cur.description], row))

    def mark_expanded(self, job_id: str) -> None:
        with self._conn() as conn:
            conn.execute("UPDATE jobs SET expanded = 1 WHERE id = ?", (job_id,))

    def list_jobs(self) -> list[JobRecord]:
        """Every job, newest first. A job stored as running or paused whose process is
        gone (killed, crashed, the machine restarted) is listed as "interrupted"."""
        return self._records(None)

    def job_record(self, job_id: str) -> JobRecord:
        records = self._records(job_id)
        if not records:
            raise KeyError(job_id)
        return records[0]

    def _records(self, job_id: str | None) -> list[JobRecord]:
        conn = self._conn()
        where, args = ("WHERE id = ?", (job_id,)) if job_id is not None else ("", ())
        counts: dict[str, dict[str, int]] = {}
        for jid, state, n in conn.execute(
                "SELECT job_id, state, COUNT(*) FROM items "
                + ("WHERE job_id = ? " if job_id is not None else "")
                + "GROUP BY job_id, state", args):
            counts.setdefault(jid, {})[state] = n
        records = []
        for row in conn.execute("SELECT id, task, model, state, output_dir, created, updated, "
                                f"elapsed_s, message, pid FROM jobs {where} "
                                "ORDER BY created DESC", args):
            c = counts.get(row[0], {})
            state = row[3]
            if state in ("running", "paused") and not process_alive(row[9]):
                state = "interrupted"
            records.append(JobRecord(
                id=row[0], task=row[1], model=row[2], state=state, output_dir=row[4],
                created=row[5], updated=row[6], total=sum(c.values()), done=c.get("done", 0),
                failed=c.get("failed", 0), pending=c.get("pending", 0) + c.get("running", 0),
                elapsed_s=row[7], message=row[8], pid=row[9]))
        return records

    def find_unfinished(self, spec: JobSpec) -> str | None:
        """The newest job with exactly this spec (task, model, inputs, output folder,
        options, device, precision; paths compared as absolute paths) when it is not
        finished, else None; `live_pid` says whether a process still runs it. A newer
        finished job with the same spec hides older unfinished ones: running the command
        again then starts anew."""
        wanted = _absolute(spec.validate()).to_dict()
        rows = self._conn().execute(
            "SELECT id, spec, state FROM jobs WHERE task = ? AND output_dir = ? "
            "ORDER BY created DESC", (spec.task, wanted["job"]["output_dir"])).fetchall()
        for job_id, text, state in rows:
            try:
                same = JobSpec.from_toml(text).to_dict() == wanted
            except OculaError:  # a spec this version (or these handlers) cannot read
                continue
            if not same:
                continue
            return None if state == "finished" else job_id
        return None

    def live_pid(self, job_id: str) -> int | None:
        """The process running this job now (None when it runs nowhere)."""
        row = self._conn().execute("SELECT state, pid FROM jobs WHERE id = ?",
                                   (job_id,)).fetchone()
        if row and row[0] in ("running", "paused") and process_alive(row[1]):
            return row[1]
        return None

    def mark_unexpanded(self, job_id: str) -> None:
        """Expand the job's inputs again on its next run: inputs added since are queued,
        those already queued keep their state (an input path is queued once)."""
        with self._conn() as conn:
            conn.execute("UPDATE jobs SET expanded = 0 WHERE id = ?", (job_id,))

    def delete_job(self, job_id: str) -> None:
        with self._conn() as conn:
            for table, col in (("segments", "job_id"), ("items", "job_id"), ("jobs", "id")):
                conn.execute(f"DELETE FROM {table} WHERE {col} = ?", (job_id,))

    # -- items --------------------------------------------------------------------------
    def add_items(self, job_id: str, items: Iterable[InputItem], *, chunk: int = 2000) -> int:
        """Queue inputs (a generator is fine), committing every `chunk`; return how many
        were added. The same path twice is queued once. Output keys are reserved here."""
        conn = self._conn()
        added = 0
        buffer: list[InputItem] = []
        for item in items:
            buffer.append(item)
            if len(buffer) >= chunk:
                added += self._add_chunk(conn, job_id, buffer)
                buffer = []
        if buffer:
            added += self._add_chunk(conn, job_id, buffer)
        return added

    def _add_chunk(self, conn: sqlite3.Connection, job_id: str, chunk: list[InputItem]) -> int:
        # IMMEDIATE takes the write lock before the next free seq is read, so two
        # writers (a GUI thread and a worker) never hand out the same numbers.
        conn.execute("BEGIN IMMEDIATE")
        try:
            seq = conn.execute("SELECT COALESCE(MAX(seq), -1) FROM items WHERE job_id = ?",
                               (job_id,)).fetchone()[0] + 1
            before = conn.total_changes
            now = time.time()
            rows = []
            for n, item in enumerate(chunk):
                path = input_identity(item.path)
                if item.kind == "error":
                    rows.append((job_id, seq + n, path, "", "error", "failed", item.error, now))
                else:
                    rows.append((job_id, seq + n, path, _first_key(item.rel), item.kind,
                                 "pending", None, None))
            conn.execute("SAVEPOINT chunk")
            try:
                # Fast path: no output-name collisions in this chunk (seq gaps left by
                # duplicate paths are harmless: seq only orders the queue).
                conn.executemany(_INSERT, rows)
                conn.execute("RELEASE chunk")
            except sqlite3.IntegrityError as exc:
                if "out_key" not in str(exc):
                    raise
                conn.execute("ROLLBACK TO chunk")
                conn.execute("RELEASE chunk")
                before = conn.total_changes  # it counted the rolled-back rows too
                for row, item in zip(rows, chunk):
                    self._insert_one(conn, row, item)
            added = conn.total_changes - before
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return added

    @staticmethod
    def _insert_one(conn: sqlite3.Connection, row: tuple, item: InputItem) -> None:
        if row[4] == "error":
            conn.execute(_INSERT, row)
            return
        for attempt, key in enumerate(_key_candidates(item.rel)):
            try:
                conn.execute(_INSERT, row[:3] + (key,) + row[4:])
                return
            except sqlite3.IntegrityError as exc:
                if "out_key" not in str(exc) or attempt > 100_000:
                    raise
                # this output name is taken by another input: try the next

    def pending_items(self, job_id: str, *, batch: int = 256) -> Iterator[ItemRecord]:
        """Pending and interrupted ("running") items in queue order, read in batches."""
        last = -1
        conn = self._conn()
        while True:
            rows = conn.execute(
                f"SELECT {_ITEM_COLS} FROM items WHERE job_id = ? AND seq > ? "
                "AND state IN ('pending', 'running') ORDER BY seq LIMIT ?",
                (job_id, last, batch)).fetchall()
            if not rows:
                return
            for row in rows:
                yield _item(row)
            last = rows[-1][1]

    def job_items(self, job_id: str, state: str | None = None, *,
                  batch: int = 1000) -> Iterator[ItemRecord]:
        """Every item of a job (or those in `state`) in queue order, streamed."""
        if state is not None and state not in ITEM_STATES:
            raise ValueError(f"item state must be one of {', '.join(ITEM_STATES)}.")
        last = -1
        conn = self._conn()
        where = "job_id = ? AND seq > ?" + (" AND state = ?" if state else "")
        while True:
            args: tuple = (job_id, last, state, batch) if state else (job_id, last, batch)
            rows = conn.execute(f"SELECT {_ITEM_COLS} FROM items WHERE {where} "
                                "ORDER BY seq LIMIT ?", args).fetchall()
            if not rows:
                return
            for row in rows:
                yield _item(row)
            last = rows[-1][1]

    def counts(self, job_id: str) -> dict[str, int]:
        out = {s: 0 for s in ITEM_STATES}
        for state, n in self._conn().execute(
                "SELECT state, COUNT(*) FROM items WHERE job_id = ? GROUP BY state", (job_id,)):
            out[state] = n
        return out

    def is_input(self, job_id: str, path: str | os.PathLike) -> bool:
        return self._conn().execute(
            "SELECT 1 FROM items WHERE job_id = ? AND path = ?",
            (job_id, input_identity(path))).fetchone() is not None

    def has_key(self, job_id: str, out_key: str) -> bool:
        """Whether `out_key` is one of this job's output names (as the folder lock's
        clean-up of stale temporaries asks: only this job's files are removed)."""
        return self._conn().execute(
            "SELECT 1 FROM items WHERE job_id = ? AND out_key = ? COLLATE NOCASE "
            "AND kind != 'error' LIMIT 1", (job_id, out_key)).fetchone() is not None

    def mark_running(self, job_id: str, seqs: list[int]) -> None:
        self.commit_batch(job_id, [], seqs)

    def record(self, job_id: str, results: list[tuple[int, str, str | None, list[str],
                                                        dict[str, Any], float]]) -> None:
        """Store outcomes in one transaction: (seq, state, error, outputs, info, finished)."""
        self.commit_batch(job_id, results, [])

    def commit_batch(self, job_id: str, results: list[tuple[int, str, str | None, list[str],
                                                             dict[str, Any], float]],
                     running: list[int]) -> None:
        """The last batch's outcomes and the next batch's "running" mark in ONE transaction
        (one commit per batch: the queue's cost per input stays well under a millisecond)."""
        if not results and not running:
            return
        now = time.time()
        with self._conn() as conn:
            if results:
                conn.executemany(
                    "UPDATE items SET state = ?, error = ?, outputs = ?, info = ?, finished = ? "
                    "WHERE job_id = ? AND seq = ?",
                    [(state, error, json.dumps(outputs), json.dumps(info, default=str),
                      finished, job_id, seq)
                     for seq, state, error, outputs, info, finished in results])
            if running:
                conn.executemany("UPDATE items SET state = 'running', attempts = attempts + 1, "
                                 "started = ? WHERE job_id = ? AND seq = ?",
                                 [(now, job_id, s) for s in running])

    def durations(self, job_id: str) -> list[float]:
        return [r[0] for r in self._conn().execute(
            "SELECT finished - started FROM items WHERE job_id = ? AND state = 'done' "
            "AND started IS NOT NULL", (job_id,))]

    # -- video segments -----------------------------------------------------------------
    def add_segment(self, job_id: str, seq: int, segment: SegmentRecord) -> None:
        with self._conn() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO segments (job_id, seq, idx, path, first_frame, "
                "next_frame, end_pts, frames, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, seq, segment.idx, segment.path, segment.first_frame,
                 segment.next_frame, segment.end_pts, segment.frames,
                 json.dumps(segment.state)))

    def segments(self, job_id: str, seq: int) -> list[SegmentRecord]:
        rows = self._conn().execute(
            "SELECT idx, path, first_frame, next_frame, end_pts, frames, state FROM segments "
            "WHERE job_id = ? AND seq = ? ORDER BY idx", (job_id, seq)).fetchall()
        return [SegmentRecord(r[0], r[1], r[2], r[3], r[4], r[5], json.loads(r[6] or "{}"))
                for r in rows]

    def clear_segments(self, job_id: str, seq: int) -> None:
        with self._conn() as conn:
            conn.execute("DELETE FROM segments WHERE job_id = ? AND seq = ?", (job_id, seq))


_INSERT = ("INSERT INTO items (job_id, seq, path, out_key, kind, state, error, finished) "
           "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (job_id, path) DO NOTHING")
_ITEM_COLS = ("job_id, seq, path, out_key, kind, state, error, outputs, info, attempts, "
              "started, finished")


def _item(row: tuple) -> ItemRecord:
    return ItemRecord(job_id=row[0], seq=row[1], path=row[2], out_key=row[3], kind=row[4],
                      state=row[5], error=row[6], outputs=json.loads(row[7]) if row[7] else [],
                      info=json.loads(row[8]) if row[8] else {}, attempts=row[9],
                      started=row[10],
                      finished=row[11])


def _first_key(rel: str | os.PathLike) -> str:
    """The output key of an input: its relative path without the extension, `a/photo`."""
    rel = os.fspath(rel).replace("\\", "/")
    parent, _, name = rel.rpartition("/")
    stem, dot, _ = name.rpartition(".")
    if not dot or not stem:  # no extension, or a dot-file
        stem = name or "input"
    if not parent and stem.startswith(_RESERVED_PREFIX):
        stem = "_" + stem  # the output root's "ocula-*" names belong to the job itself
    return f"{parent}/{stem}" if parent and parent != "." else stem


def _key_candidates(rel: str | os.PathLike) -> Iterator[str]:
    """`a/photo` first, then `a/photo_png`, then `a/photo_png-2`, -3…"""
    base = _first_key(rel)
    yield base
    name = os.fspath(rel).replace("\\", "/").rpartition("/")[2]
    stem, dot, ext = name.rpartition(".")
    with_ext = f"{base}_{ext.lower()}" if dot and stem else f"{base}_"
    yield with_ext
    n = 2
    while True:
        yield f"{with_ext}-{n}"
        n += 1


def input_identity(path: str | os.PathLike) -> str:
    """How an input is keyed: a local path made absolute (resume works from any folder),
    a URL as given (an object store's, engine.media.remote)."""
    text = os.fspath(path)
    return text if is_url(text) else os.path.abspath(text)


def _absolute(spec: JobSpec) -> JobSpec:
    """Absolute paths in the stored spec, so resuming from another folder works."""
    def absolute(p: str) -> str:
        return p if is_url(p) else os.path.abspath(os.path.expanduser(p))

    return JobSpec(task=spec.task, model=spec.model, inputs=[absolute(p) for p in spec.inputs],
                   output_dir=absolute(spec.output_dir), options=spec.options,
                   device=spec.device, precision=spec.precision)


def new_job_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)
