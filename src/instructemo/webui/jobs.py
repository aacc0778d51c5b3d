"""The webui's jobs: CLI verbs run one at a time, each in its own process, the rest queued.

A job is exactly a command line (`instructemo sft CONFIG.yaml`), so what the
page starts the CLI reproduces. Its output goes to a log file; a failed job
reports the CLI's own one-line error. Each job is its own process group. Stop
sends that group SIGINT (the CLI, and the training processes torchrun started
for it), which the CLI turns into a clean exit (the run stays incomplete and
resumable), then SIGKILL if the group has not ended in time.
"""

from __future__ import annotations

import atexit
import itertools
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from instructemo.run.directory import LIVE_LOG_FILE

log = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 30
ERROR_PREFIX = "instructemo: error: "


@dataclass
class Job:
    id: int
    verb: str
    args: list[str]
    log_path: Path
    output_dir: Path | None = None  # the run it trains into: where its live progress is
    state: str = "queued"  # queued, running, stopping, then done, failed or stopped
    returncode: int | None = None
    submitted: float = field(default_factory=time.time)
    started: float | None = None
    ended: float | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)
    failure: str | None = None  # why the queue could not run it (its log may not exist)

    @property
    def command(self) -> str:
        return " ".join(["instructemo", self.verb, *self.args])

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "stopped")

    def error(self) -> str | None:
        """The CLI's one-line error for a failed job (else the log's last line)."""
        if self.state != "failed":
            return None
        if self.failure:
            return self.failure
        lines = self.log_path.read_text(errors="replace").splitlines() if self.log_path.is_file() else []
        errors = [line[len(ERROR_PREFIX) :] for line in lines if line.startswith(ERROR_PREFIX)]
        if errors:
            return errors[-1]
        return lines[-1] if lines else f"exited with code {self.returncode}"

    def summary(self) -> dict:
        took = (self.ended or time.time()) - self.started if self.started else None
        return {
            "job": self.id,
            "state": self.state,
            "command": self.command,
            "minutes": round(took / 60, 1) if took is not None else None,
            "error": self.error() or "",
        }


class JobQueue:
    """Runs submitted jobs in order, one at a time, on a worker thread."""

    def __init__(self, log_dir: Path, cwd: Path | None = None):
        self.log_dir = Path(log_dir)
        self.cwd = cwd
        self.jobs: list[Job] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        threading.Thread(target=self._work, name="instructemo-webui-jobs", daemon=True).start()
        atexit.register(self.stop_all)  # a job outlives the page only as a run marked incomplete

    def submit(self, verb: str, args: list[str], output_dir: Path | None = None) -> Job:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with self._lock:
            job_id = next(self._ids)
            job = Job(job_id, verb, list(args), self.log_dir / f"job-{job_id}-{verb}.log", output_dir)
            self.jobs.append(job)
        self._wake.set()
        return job

    def get(self, job_id: int) -> Job | None:
        return next((job for job in self.jobs if job.id == job_id), None)

    def stop(self, job_id: int) -> Job | None:
        """A queued job is dropped; a running one gets SIGINT, then SIGKILL after STOP_GRACE_SECONDS."""
        job = self.get(job_id)
        if job is None or job.finished:
            return job
        with self._lock:
            if job.state == "queued":
                job.state, job.ended = "stopped", time.time()
                return job
            job.state = "stopping"  # "stopped" once the process has ended
        if job.process is not None and job.process.poll() is None:
            _signal_group(job.process, signal.SIGINT)
            threading.Thread(target=self._kill_later, args=(job,), daemon=True).start()
        return job

    def stop_all(self) -> None:
        for job in list(self.jobs):
            if job.process is not None and job.process.poll() is None:
                _signal_group(job.process, signal.SIGINT)

    def wait_started(self, job: Job, timeout: float = 30.0) -> Job:
        """Until the job's process exists (or it ended first)."""
        deadline = time.monotonic() + timeout
        while job.process is None and not job.finished and time.monotonic() < deadline:
            time.sleep(0.05)
        return job

    def wait(self, job: Job, timeout: float | None = None) -> Job:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not job.finished and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.2)
        return job

    def _kill_later(self, job: Job) -> None:
        try:
            job.process.wait(STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            _signal_group(job.process, signal.SIGKILL)

    def _next(self) -> Job | None:
        with self._lock:
            job = next((j for j in self.jobs if j.state == "queued"), None)
            if job is not None:
                job.state, job.started = "running", time.time()
            return job

    def _work(self) -> None:
        while True:
            job = self._next()
            if job is None:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            try:
                self._run(job)
            except Exception as exc:  # noqa: BLE001 - one job that cannot start never stalls the jobs behind it
                log.exception("webui job %d (%s) could not run", job.id, job.command)
                job.failure = f"the job could not run: {type(exc).__name__}: {exc}"
                job.ended, job.state = time.time(), "failed"

    def command_line(self, job: Job) -> list[str]:
        return [sys.executable, "-m", "instructemo.cli", job.verb, *job.args]  # the `instructemo` command

    def _run(self, job: Job) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(job.log_path, "w", encoding="utf-8") as output:
            output.write(f"$ {job.command}\n")
            output.flush()
            job.process = subprocess.Popen(
                self.command_line(job),
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.cwd,
                env=env,
                start_new_session=True,  # its own process group: Stop reaches every process the job starts
            )
            if job.state == "stopping":  # Stop came between the queue and the start
                _signal_group(job.process, signal.SIGINT)
            job.returncode = job.process.wait()
        job.ended = time.time()
        job.state = "stopped" if job.state == "stopping" else "done" if job.returncode == 0 else "failed"


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:
        pass  # it ended meanwhile


def live_progress(output_dir: Path | None) -> dict:
    """A training run's progress so far, from its live log: the step, of how many, ETA, and the loss points."""
    path = Path(output_dir) / LIVE_LOG_FILE if output_dir else None
    points = []
    if path is not None and path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").split("\n"):
            try:
                points.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # the line being written
    if not points:
        return {"step": 0, "max_steps": None, "eta_seconds": None, "points": []}
    last = points[-1]
    done = last["step"] / last["max_steps"] if last.get("max_steps") else None
    eta = last["train_seconds"] * (1 - done) / done if done else None
    return {
        "step": last["step"],
        "max_steps": last.get("max_steps"),
        "eta_seconds": round(eta) if eta is not None else None,
        "points": points,
    }
