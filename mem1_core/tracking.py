"""MLflow tracking for the pipeline: one parent run per pipeline run, one nested run per step.

Steps never import MLflow; they take the `log(metrics, step)` callable of a `RunHandle`. Every
MLflow call goes through one retry policy (exponential backoff on connection errors and 5xx), so a
flaky server costs a few seconds and a dead one fails with a message naming the URI. Params and
tags are flattened and validated before a run is created, so a bad config never leaves a
half-logged run; a step that raises leaves its run FAILED.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil
import requests
from pydantic import BaseModel

from mem1_core.config import PipelineConfig, TrackingConfig

T = TypeVar("T")

MAX_PARAM_KEY = 250
MAX_PARAM_VALUE = 6000
PARAMS_PER_BATCH = 100
TAG_PIPELINE_RUN = "mem1.pipeline_run_id"
TAG_STEP = "mem1.step"
TAG_PARENT = "mlflow.parentRunId"
# MLflow's own variables: a process that did not create a run logs to it by these (torchrun workers)
TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
RUN_ID_ENV = "MLFLOW_RUN_ID"
# Who owns a RUNNING run, so a run whose process died can be told from a live one (mem1_core.orphan_runs):
# the owner process as host/pid/start-time, and a heartbeat renewed while it runs (for other hosts).
TAG_OWNER = "mem1.owner"
TAG_HEARTBEAT = "mem1.heartbeat"  # unix seconds of the owner's latest beat
OWNER_ENV = "MEM1_RUN_OWNER"  # set by `mem1 pipeline local`: the driver process owns its pipeline's runs
HEARTBEAT_ENV = "MEM1_HEARTBEAT_S"
HEARTBEAT_S = 60.0

# Substrings of errors worth retrying: the server is down, restarting, overloaded, or SQLite is busy.
_TRANSIENT_MARKERS = (
    "connection refused",
    "connection reset",
    "connection aborted",
    "failed to establish a new connection",
    "max retries exceeded",
    "remote end closed connection",
    "timed out",
    "database is locked",
    "error code 500",
    "error code 502",
    "error code 503",
    "error code 504",
    "too many 50",
    "temporarily unavailable",
)


class TrackingError(RuntimeError):
    """MLflow could not be reached or refused the data; the message names the tracking URI."""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff: delays initial, 2*initial, ... capped at max_delay, `attempts` tries in all."""

    attempts: int = 5
    initial_delay: float = 0.5
    max_delay: float = 8.0

    def budget(self) -> float:
        """Seconds slept between the attempts, in all: how long a server may be down and be ridden out."""
        delays = (min(self.initial_delay * 2**i, self.max_delay) for i in range(self.attempts - 1))
        return sum(delays)


# What a pipeline step rides out: a tracking server restarting (pod rescheduled, upgrade, node drain)
# for up to ~2 minutes (budget 127.5 s), then one clear error. A metric batch is built once, timestamp
# included, so a batch retried after a lost answer is stored once (the store drops exact duplicates).
OUTAGE_RETRY = RetryPolicy(attempts=20, initial_delay=0.5, max_delay=8.0)


# A retry budget shorter than this ends in its one error line soon enough to need no notice first
# (`mem1 agent` against a down server prints exactly one line).
ANNOUNCE_WAITS_S = 10.0


def is_transient(exc: BaseException) -> bool:
    """True for errors a retry can fix (connection refused/reset, timeouts, HTTP 5xx, SQLite busy)."""
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
        return True
    text = str(exc).lower()
    return any(marker in text for marker in _TRANSIENT_MARKERS)


def call_with_retry(fn: Callable[[], T], *, what: str, uri: str, policy: RetryPolicy = RetryPolicy()) -> T:
    """Run `fn`, retrying transient failures with backoff; then raise TrackingError naming `uri`."""
    delay = policy.initial_delay
    started = time.monotonic()
    for attempt in range(1, policy.attempts + 1):
        try:
            return fn()
        except Exception as e:
            if not is_transient(e):
                raise
            if attempt == 1 and policy.budget() >= ANNOUNCE_WAITS_S:  # a stalled step says why it waits
                print(
                    f"mlflow: {uri} failed while {what} ({_short(e, 160)}); retrying for up to "
                    f"{policy.budget():.0f}s",
                    file=sys.stderr,
                    flush=True,
                )
            if attempt == policy.attempts:
                waited = time.monotonic() - started
                raise TrackingError(
                    f"MLflow tracking server at {uri} is unreachable or failing while {what}: gave up "
                    f"after {attempt} attempts over {waited:.1f}s. Check MLFLOW_TRACKING_URI and that the "
                    f"server is up. Last error: {_short(e)}"
                ) from e
            time.sleep(delay)
            delay = min(delay * 2, policy.max_delay)
    raise AssertionError("unreachable")  # pragma: no cover


def process_owner(pid: int | None = None) -> str:
    """host/pid/start-time of a process (this one by default): the pid alone could be reused."""
    proc = psutil.Process(pid or os.getpid())
    return f"{socket.gethostname()}/{proc.pid}/{proc.create_time():.2f}"


def run_owner() -> str:
    """The owner of runs this process opens: the process named by MEM1_RUN_OWNER, else this one."""
    return os.environ.get(OWNER_ENV) or process_owner()


class Heartbeat:
    """Renews TAG_HEARTBEAT on a run every `interval` seconds on a daemon thread while the run is open.

    Why: a process on another host (the next pipeline's first step) cannot ask whether a pod's process
    still lives, but it can see the beats stop. Best effort: one call per beat, errors ignored, so a
    tracking server that is down costs a beat, not the step.
    """

    def __init__(self, client: Any, run_id: str, interval: float | None = None) -> None:
        self.client, self.run_id = client, run_id
        self.interval = interval or float(os.environ.get(HEARTBEAT_ENV) or HEARTBEAT_S)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-{run_id[:8]}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            with suppress(Exception):
                self.client.set_tag(self.run_id, TAG_HEARTBEAT, str(int(time.time())))


def _short(e: BaseException, limit: int = 400) -> str:
    text = f"{type(e).__name__}: {e}"
    return text if len(text) <= limit else text[:limit] + "…"


DEFAULT_RUN_DIR: str = PipelineConfig.model_fields["run_dir"].default  # "runs", as configs default it
DEFAULT_DB = "mlflow.db"

# Bounded HTTP for commands that only read (`mem1 agent`): a dead server is reported within ~30 s,
# not after MLflow's default 7 retries x 120 s timeout. Set only where the user has not.
READ_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "8"}
READ_RETRY = RetryPolicy(attempts=3, initial_delay=0.5, max_delay=2.0)


def default_tracking_uri(run_dir: str | Path = DEFAULT_RUN_DIR) -> str:
    """The embedded default store: SQLite at <run_dir>/mlflow.db (runs/mlflow.db from the repo root).

    Tracking and registry share it. `make demo` writes here and, with MLFLOW_TRACKING_URI unset, every
    command reads here: the one definition of the default.
    """
    return f"sqlite:///{Path(run_dir).resolve() / DEFAULT_DB}"


def resolve_tracking_uri(run_dir: str | Path = DEFAULT_RUN_DIR, configured: str | None = None) -> str:
    """MLFLOW_TRACKING_URI, else the configured URI, else SQLite under the run dir (the embedded default)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    if configured:
        return configured
    return default_tracking_uri(run_dir)


def sqlite_path(uri: str) -> Path | None:
    """The database file of a sqlite:/// URI, else None."""
    return Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None


def bound_http_for_reads() -> None:
    """Apply READ_HTTP_DEFAULTS to the process environment where the user set nothing."""
    for key, value in READ_HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)


def is_local_uri(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:")) or "://" not in uri


def flatten_params(config: BaseModel | Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Dotted keys for nested sections; lists and None as JSON so a param reads back unambiguously."""
    data = config.model_dump(mode="json") if isinstance(config, BaseModel) else dict(config)
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_params(value, prefix=f"{name}."))
        elif isinstance(value, str):
            out[name] = value
        else:
            out[name] = json.dumps(value, sort_keys=True)
    return out


def validate_params(params: Mapping[str, str]) -> None:
    """MLflow's limits, checked before any run exists (so a failure logs nothing)."""
    for k, v in params.items():
        if not k or len(k) > MAX_PARAM_KEY:
            raise ValueError(f"param key {k[:60]!r} must be 1..{MAX_PARAM_KEY} characters")
        if len(v) > MAX_PARAM_VALUE:
            raise ValueError(
                f"param {k!r} is {len(v)} characters, over MLflow's {MAX_PARAM_VALUE}; log it as an artifact"
            )


def validate_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in metrics.items():
        if not isinstance(k, str) or not k:
            raise ValueError(f"metric name must be a non-empty string, got {k!r}")
        try:
            value = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"metric {k!r} is not a number: {v!r}") from None
        if math.isinf(value):
            raise ValueError(f"metric {k!r} is infinite")
        out[k] = value
    return out


def git_commit(repo: Path | None = None) -> str:
    """The checkout's commit (MEM1_GIT_COMMIT wins, as images carry no .git); 'unknown' when neither."""
    env = os.environ.get("MEM1_GIT_COMMIT")
    if env:
        return env
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=repo or Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@dataclass
class Tracker:
    """An MLflow client bound to one tracking URI and experiment, with retries on every call."""

    tracking_uri: str
    experiment: str = "mem1"
    artifact_location: str | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        # lazy: mlflow takes ~2 s to import; only a Tracker needs it, not the URI and param helpers here
        from mlflow.tracking import MlflowClient

        # One retry policy decides (ours, with its clear error): MLflow's own urllib3 retries would
        # otherwise spend minutes on a dead server first. A user-set value is respected.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        self.client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        self._experiment_id: str | None = None

    @classmethod
    def from_config(
        cls, cfg: TrackingConfig, run_dir: str | Path, retry: RetryPolicy | None = None
    ) -> Tracker:
        uri = resolve_tracking_uri(run_dir, cfg.tracking_uri)
        artifacts = (Path(run_dir).resolve() / "mlartifacts").as_uri() if is_local_uri(uri) else None
        return cls(uri, cfg.experiment, artifacts, retry or RetryPolicy())

    def call(self, fn: Callable[[], T], what: str) -> T:
        return call_with_retry(fn, what=what, uri=self.tracking_uri, policy=self.retry)

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            self._experiment_id = self.call(
                self._get_or_create_experiment, f"opening experiment {self.experiment!r}"
            )
        return self._experiment_id

    def _get_or_create_experiment(self) -> str:
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is not None:
            return exp.experiment_id
        try:
            return self.client.create_experiment(self.experiment, artifact_location=self.artifact_location)
        except Exception:
            exp = self.client.get_experiment_by_name(self.experiment)  # created concurrently
            if exp is None:
                raise
            return exp.experiment_id

    @contextmanager
    def start_pipeline_run(
        self,
        config: BaseModel | Mapping[str, Any],
        name: str = "pipeline",
        tags: Mapping[str, str] | None = None,
    ) -> Iterator[RunHandle]:
        """The parent run of one pipeline run: the whole config as params and as an artifact."""
        all_tags = {"mem1.kind": "pipeline", "mem1.git_commit": git_commit(), TAG_OWNER: run_owner()}
        all_tags.update(tags or {})
        with self._run(name, config, all_tags, parent_run_id=None) as handle:
            self.call(
                lambda: self.client.set_tag(handle.run_id, TAG_PIPELINE_RUN, handle.run_id),
                "tagging the pipeline run",
            )
            yield handle

    @contextmanager
    def step_run(
        self,
        name: str,
        config: BaseModel | Mapping[str, Any],
        parent_run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> Iterator[RunHandle]:
        """A nested run for one step (a top-level run when there is no parent)."""
        all_tags = {"mem1.kind": "step", TAG_STEP: name, **(tags or {})}
        if parent_run_id:
            all_tags[TAG_PARENT] = parent_run_id
            all_tags[TAG_PIPELINE_RUN] = parent_run_id
        with self._run(name, config, all_tags, parent_run_id) as handle:
            yield handle

    @contextmanager
    def _run(
        self,
        name: str,
        config: BaseModel | Mapping[str, Any],
        tags: Mapping[str, str],
        parent_run_id: str | None,
    ) -> Iterator[RunHandle]:
        from mlflow.entities import Param  # lazy: mlflow, loaded by the Tracker (__post_init__)

        # Build and validate everything before the run exists.
        params = flatten_params(config)
        validate_params(params)
        config_json = json.dumps(
            config.model_dump(mode="json") if isinstance(config, BaseModel) else dict(config),
            indent=2,
            sort_keys=True,
        )
        str_tags = {k: str(v) for k, v in tags.items()}
        if parent_run_id:
            parent = self.call(
                lambda: self.client.get_run(parent_run_id), f"reading parent run {parent_run_id}"
            )
            experiment_id = parent.info.experiment_id
        else:
            experiment_id = self.experiment_id

        str_tags.setdefault(TAG_OWNER, process_owner())
        str_tags[TAG_HEARTBEAT] = str(int(time.time()))
        run = self.call(
            lambda: self.client.create_run(experiment_id, run_name=name, tags=str_tags),
            f"creating run {name!r}",
        )
        run_id = run.info.run_id
        handle = RunHandle(self, run_id, experiment_id)
        try:
            items = [Param(k, v) for k, v in params.items()]
            for i in range(0, len(items), PARAMS_PER_BATCH):
                chunk = items[i : i + PARAMS_PER_BATCH]
                self.call(
                    lambda c=chunk: self.client.log_batch(run_id, params=c), f"logging params of {name!r}"
                )
            handle.log_text(config_json, "config.json")
        except BaseException:
            self._terminate(run_id, "FAILED")
            raise
        try:
            with Heartbeat(self.client, run_id):
                yield handle
        except KeyboardInterrupt:
            self._terminate(run_id, "KILLED")
            raise
        except BaseException:
            self._terminate(run_id, "FAILED")
            raise
        self.call(lambda: self.client.set_terminated(run_id, "FINISHED"), f"finishing run {name!r}")

    def _terminate(self, run_id: str, status: str) -> None:
        """Best effort: the original error matters more than a failure to record it."""
        with suppress(Exception):
            self.call(lambda: self.client.set_terminated(run_id, status), f"marking run {run_id} {status}")


@dataclass
class RunHandle:
    """One open run: hand `handle.log` to training steps; log artifacts at the end of a step."""

    tracker: Tracker
    run_id: str
    experiment_id: str

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """The metrics callback for sft.run / ppo.run: one batch per training step."""
        from mlflow.entities import Metric  # lazy: mlflow, loaded by the Tracker (__post_init__)

        values = validate_metrics(metrics)
        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, int(step)) for k, v in values.items()]
        if batch:
            self.tracker.call(
                lambda: self.tracker.client.log_batch(self.run_id, metrics=batch),
                f"logging metrics at step {step}",
            )

    def last_metrics(self) -> dict[str, float]:
        """The latest value of every metric on the run, whichever process logged it (this one or workers)."""
        run = self.tracker.call(
            lambda: self.tracker.client.get_run(self.run_id), f"reading the metrics of run {self.run_id}"
        )
        return {k: float(v) for k, v in run.data.metrics.items()}

    def worker_env(self) -> dict[str, str]:
        """The environment that makes a process this one starts log to this run (see `run_from_env`)."""
        return {TRACKING_URI_ENV: self.tracker.tracking_uri, RUN_ID_ENV: self.run_id}

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param  # lazy: mlflow, loaded by the Tracker (__post_init__)

        flat = flatten_params(params)
        validate_params(flat)
        items = [Param(k, v) for k, v in flat.items()]
        for i in range(0, len(items), PARAMS_PER_BATCH):
            chunk = items[i : i + PARAMS_PER_BATCH]
            self.tracker.call(
                lambda c=chunk: self.tracker.client.log_batch(self.run_id, params=c), "logging params"
            )

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag  # lazy: mlflow, loaded by the Tracker (__post_init__)

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        if items:
            self.tracker.call(lambda: self.tracker.client.log_batch(self.run_id, tags=items), "setting tags")

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        p = Path(path)
        if not p.exists():
            raise FileNotFoundError(f"{p}: artifact to log does not exist")
        if p.is_dir():
            self.tracker.call(
                lambda: self.tracker.client.log_artifacts(self.run_id, str(p), artifact_path),
                f"uploading {p}",
            )
        else:
            self.tracker.call(
                lambda: self.tracker.client.log_artifact(self.run_id, str(p), artifact_path),
                f"uploading {p}",
            )

    def log_artifacts(self, paths: list[str | Path], artifact_path: str | None = None) -> None:
        """Several files or folders; all are checked to exist before the first upload."""
        missing = [str(p) for p in paths if not Path(p).exists()]
        if missing:
            raise FileNotFoundError(f"artifacts to log do not exist: {', '.join(missing)}")
        for p in paths:
            self.log_artifact(p, artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / Path(artifact_file).name
            local.write_text(text, encoding="utf-8")
            parent = str(Path(artifact_file).parent)
            self.log_artifact(local, None if parent in ("", ".") else parent)

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        self.log_text(json.dumps(obj, indent=2, sort_keys=True), artifact_file)


def attach_run(run_id: str, tracking_uri: str | None = None) -> RunHandle:
    """A handle on a run another process created and will end: `log` adds metrics to it by id.

    Nothing here starts or terminates the run. Reading it first fails fast, naming the URI, when the
    store is unreachable or holds no such run.
    """
    tracker = Tracker(tracking_uri or resolve_tracking_uri())
    run = tracker.call(lambda: tracker.client.get_run(run_id), f"reading run {run_id}")
    return RunHandle(tracker, run_id, run.info.experiment_id)


def run_from_env() -> RunHandle | None:
    """The run named by MLFLOW_RUN_ID (at MLFLOW_TRACKING_URI, else the default store), else None.

    The launching step sets both on the workers it starts (RunHandle.worker_env); a command run by
    hand without MLFLOW_RUN_ID gets None and logs nowhere.
    """
    run_id = os.environ.get(RUN_ID_ENV)
    return attach_run(run_id) if run_id else None


def tracker_from_env(run_dir: str | Path, cfg: TrackingConfig | None = None) -> Tracker:
    return Tracker.from_config(cfg or TrackingConfig(), run_dir)


@contextmanager
def start_pipeline_run(
    config: BaseModel | Mapping[str, Any],
    run_dir: str | Path,
    tracking: TrackingConfig | None = None,
    name: str = "pipeline",
    tags: Mapping[str, str] | None = None,
) -> Iterator[RunHandle]:
    """Module-level form of Tracker.start_pipeline_run (URI from MLFLOW_TRACKING_URI or the run dir)."""
    with tracker_from_env(run_dir, tracking).start_pipeline_run(config, name, tags) as handle:
        yield handle


@contextmanager
def step_run(
    name: str,
    config: BaseModel | Mapping[str, Any],
    parent_run_id: str | None = None,
    run_dir: str | Path = "runs",
    tracking: TrackingConfig | None = None,
    tags: Mapping[str, str] | None = None,
) -> Iterator[RunHandle]:
    """Module-level form of Tracker.step_run, for a KFP component that got the parent id as input."""
    with tracker_from_env(run_dir, tracking).step_run(name, config, parent_run_id, tags) as handle:
        yield handle
