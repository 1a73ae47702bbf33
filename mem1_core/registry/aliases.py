"""Reading the registry: `models:/NAME@ALIAS` (or /VERSION) checked against the store, and the
registered agent loaded from it. `candidate` names the newest registered version; `champion` the
version that last passed the promotion gate.
"""

from __future__ import annotations

import tempfile
from typing import Any

import mlflow.artifacts
import mlflow.pyfunc

from mem1_core.registry.inputs import RegistryError
from mem1_core.registry.serving import Mem1AgentModel
from mem1_core.tracking import READ_RETRY, Tracker, bound_http_for_reads, resolve_tracking_uri, sqlite_path

CANDIDATE = "candidate"
CHAMPION = "champion"


def not_found(e: BaseException) -> bool:
    text = str(e)
    return "RESOURCE_DOES_NOT_EXIST" in text or "not found" in text.lower() or "does not exist" in text


def alias_version(tracker: Tracker, name: str, alias: str) -> Any | None:
    """The version `alias` points at, or None when the model or the alias does not exist yet."""

    def get() -> Any | None:
        try:
            return tracker.client.get_model_version_by_alias(name, alias)
        except Exception as e:
            if not_found(e):
                return None
            raise

    return tracker.call(get, f"reading alias {alias!r} of {name!r}")


def resolve_model_uri(model_uri: str, tracker: Tracker) -> str:
    """`models:/NAME@ALIAS` or `models:/NAME/VERSION` -> `models:/NAME/VERSION`, checked against the store.

    An unknown name, alias or version is a RegistryError saying what the store does have; a store
    that cannot be reached is a TrackingError naming its URI (after the tracker's bounded retries).
    """
    uri = tracker.tracking_uri
    ref = model_uri[len("models:/") :]
    name, sep, alias = ref.partition("@")
    version = ""
    if not sep:
        name, _, version = ref.partition("/")
    if not name or (sep and not alias) or (not sep and not version.isdigit()):
        raise RegistryError(f"{model_uri}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    client = tracker.client

    def lookup() -> str:
        try:
            mv = (
                client.get_model_version_by_alias(name, alias)
                if sep
                else client.get_model_version(name, version)
            )
            return str(mv.version)
        except Exception as e:
            if not not_found(e):
                raise
        try:
            model = client.get_registered_model(name)
        except Exception as e:
            if not not_found(e):
                raise
            names = ", ".join(sorted(m.name for m in client.search_registered_models(max_results=50)))
            raise RegistryError(
                f"{model_uri}: no registered model {name!r} at {uri} (registered: {names or 'none'})"
            ) from None
        if sep:
            have = ", ".join(sorted(model.aliases or {})) or "none"
            raise RegistryError(
                f"{model_uri}: model {name!r} has no alias {alias!r} at {uri} (aliases: {have})"
            )
        latest = max((int(v.version) for v in client.search_model_versions(f"name = '{name}'")), default=0)
        raise RegistryError(
            f"{model_uri}: model {name!r} has no version {version} at {uri} (latest: {latest})"
        )

    return f"models:/{name}/{tracker.call(lookup, f'looking up {model_uri}')}"


def load_registered(model_uri: str, tracking_uri: str | None = None) -> Mem1AgentModel:
    """The registered agent behind `models:/name@alias` (or runs:/, a local pyfunc dir), unwrapped so a
    caller can swap the retrieval backend (e.g. `mem1 agent --corpus`).

    Registry and runs URIs are read from `tracking_uri` (default: MLFLOW_TRACKING_URI, else the
    embedded default store) for both tracking and registry, with bounded retries on HTTP."""
    if model_uri.startswith(("models:/", "runs:/")):
        uri = tracking_uri or resolve_tracking_uri()
        db = sqlite_path(uri)
        if db is not None and not db.is_file():  # checked first: opening it would create an empty store
            raise RegistryError(
                f"{model_uri}: no MLflow store at {uri} (run `make demo` first, or set MLFLOW_TRACKING_URI)"
            )
        bound_http_for_reads()
        tracker = Tracker(uri, retry=READ_RETRY)
        source = model_uri
        if model_uri.startswith("models:/"):
            # MLflow resolves models:/ against its global registry URI whatever it is passed; resolve
            # the version's artifact location here, against this store, and download that instead.
            name, version = resolve_model_uri(model_uri, tracker)[len("models:/") :].rsplit("/", 1)
            source = tracker.call(
                lambda: tracker.client.get_model_version_download_uri(name, version),
                f"locating {model_uri}",
            )
        dst = tempfile.mkdtemp(prefix="mem1-agent-")  # kept: the bundled corpus is read lazily from it
        model_uri = tracker.call(
            lambda: mlflow.artifacts.download_artifacts(
                artifact_uri=source, dst_path=dst, tracking_uri=tracker.tracking_uri,
                registry_uri=tracker.tracking_uri,
            ),
            f"downloading {source}",
        )  # fmt: skip
    loaded = mlflow.pyfunc.load_model(model_uri)
    inner = loaded.unwrap_python_model()
    if not isinstance(inner, Mem1AgentModel):
        raise RegistryError(f"{model_uri}: not a MEM1 agent (python model is {type(inner).__name__})")
    return inner
