"""The weights registry: reading ``weights.toml``, downloading, verifying, resolving ``--weights``.

Every named checkpoint vvk knows is one table in ``weights.toml`` (top level of the repository,
shipped inside the wheel). Each entry names its architecture, task, source, file, sha256,
licence, paper and reported metrics. Files are fetched into the cache of their ecosystem:

- ``hf`` sources through huggingface_hub (its cache, its ``HF_HUB_OFFLINE`` mode);
- ``torchvision`` sources into torch hub's ``checkpoints`` folder, where torchvision puts them;
- ``url`` sources into vvk's own cache (``$VVK_CACHE`` or ``~/.cache/vvk``).

The sha256 is checked on every load, not only after a download: a mismatch is an error. Some
publishers state only a prefix of the digest (torchvision puts the first 8 hex digits in each
file name, which is what ``torch.hub`` checks); such entries hold that prefix.

Offline (``HF_HUB_OFFLINE=1`` or ``VVK_OFFLINE=1``) a missing file is an error at once; online,
an unreachable source is an error after at most ``VVK_DOWNLOAD_TIMEOUT`` seconds (default 15).

Each entry is bound to the architecture it loads into (timm's ``arch.tag``): a vvk registry name,
``torchvision:<builder>`` or ``open_clip:<model config>``. This module only reads and matches
those strings, so listing stays torch-free; ``vvk.models.pretrained`` builds and loads them.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import os
import re
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from vvk.atomic import atomic_path
from vvk.errors import VvkError
from vvk.paths import cache_dir, torch_hub_checkpoints

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

HF_PREFIX = "hf-hub:"
SOURCE_KINDS = ("hf", "url", "torchvision")
# The model registry's tasks (an entry of a vvk architecture has its model's task) and the
# tasks of other sources' models.
TASKS = (
    "video-backbone",
    "image-backbone",
    "audio-backbone",
    "text-backbone",
    "multimodal-backbone",
    "vision-language",
    "detection",
    "tracking",
    "texture",
)
REQUIRED_FIELDS = ("architecture", "task", "source", "file", "sha256", "license", "paper", "metrics")
OPTIONAL_FIELDS = ("description", "num_params", "input")
VVK_ARCHITECTURE = "vvk"
EXTERNAL_ARCHITECTURES = ("torchvision", "open_clip")  # the "<source>:" prefixes vvk converts on load
_SHA_RE = re.compile(r"^[0-9a-f]{8,64}$")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Source:
    """Where a file comes from: exactly one of an HF repo file, a URL, or a torchvision weights name."""

    kind: str
    repo: str | None = None
    revision: str | None = None
    url: str | None = None
    torchvision: str | None = None

    def describe(self) -> str:
        if self.kind == "hf":
            rev = f"@{self.revision}" if self.revision else ""
            return f"hf-hub:{self.repo}{rev}"
        if self.kind == "torchvision":
            return f"torchvision:{self.torchvision}"
        return str(self.url)


@dataclass(frozen=True)
class WeightsEntry:
    name: str
    architecture: str
    task: str
    source: Source
    file: str
    sha256: str
    license: str
    paper: str
    metrics: dict[str, dict[str, float]]
    description: str = ""
    num_params: int | None = None
    input: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """A flat, JSON-ready description (what ``vvk weights list/info`` prints)."""
        return {
            "name": self.name,
            "architecture": self.architecture,
            "task": self.task,
            "source": self.source.describe(),
            "file": self.file,
            "sha256": self.sha256,
            "license": self.license,
            "paper": self.paper,
            "metrics": self.metrics,
            "num_params": self.num_params,
            "description": self.description,
            "cached": cached_path(self) is not None,
        }


def split_architecture(architecture: str) -> tuple[str, str]:
    """``"torchvision:resnet50"`` -> ``("torchvision", "resnet50")``; a vvk registry name ``n`` ->
    ``("vvk", n)``. Raises ``ValueError`` for an unknown prefix or an empty name."""
    kind, sep, name = architecture.partition(":")
    if not sep:
        kind, name = VVK_ARCHITECTURE, architecture
    elif kind not in EXTERNAL_ARCHITECTURES:
        raise ValueError(f"unknown architecture source '{kind}:'; expected one of {EXTERNAL_ARCHITECTURES}")
    if not name:
        raise ValueError("the architecture name is empty")
    return kind, name


def fits(entry: WeightsEntry, pattern: str) -> bool:
    """Whether ``entry`` loads into an architecture matching the shell-style ``pattern``, which is
    tried on the whole architecture (``torchvision:resnet*``, ``open_clip:*``) and on the name
    without its source prefix (``resnet50``, ``ViT-B-*``)."""
    _, name = split_architecture(entry.architecture)
    return fnmatch.fnmatch(entry.architecture, pattern) or fnmatch.fnmatch(name, pattern)


# ---------------------------------------------------------------------------------------------
# Reading and validating the registry


def registry_path() -> Path:
    """``$VVK_WEIGHTS_TOML``, else the copy inside the package, else the repository's top level."""
    override = os.environ.get("VVK_WEIGHTS_TOML")
    if override:
        return Path(override)
    packaged = resources.files("vvk") / "weights.toml"
    if packaged.is_file():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent / "weights.toml"


def load_registry(path: str | os.PathLike | None = None) -> dict[str, WeightsEntry]:
    """Parse and validate a registry file; errors name the file, the entry and the field."""
    path = Path(path) if path is not None else registry_path()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise VvkError(f"weights registry not found: {path}") from e
    except tomllib.TOMLDecodeError as e:
        raise VvkError(f"{path}: malformed TOML: {e}") from e
    return {name: _parse_entry(path, name, table) for name, table in data.items()}


def _parse_entry(path: Path, name: str, table: Any) -> WeightsEntry:
    def fail(msg: str) -> VvkError:
        return VvkError(f"{path}: entry '{name}': {msg}")

    if not isinstance(table, dict):
        raise fail("must be a table")
    missing = [f for f in REQUIRED_FIELDS if f not in table]
    if missing:
        raise fail(f"missing field(s) {', '.join(missing)}")
    unknown = sorted(set(table) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS))
    if unknown:
        raise fail(f"unknown field(s) {', '.join(unknown)}")
    if table["task"] not in TASKS:
        raise fail(f"field 'task' is {table['task']!r}; expected one of {', '.join(TASKS)}")
    source = _parse_source(table["source"], fail)
    sha = str(table["sha256"]).lower()
    if not _SHA_RE.match(sha):
        raise fail("field 'sha256' must be 8 to 64 lowercase hex digits")
    if len(sha) < 64 and source.kind != "torchvision":
        raise fail("field 'sha256' must be the full 64-digit digest (only torchvision publishes prefixes)")
    metrics = table["metrics"]
    if not isinstance(metrics, dict) or not all(
        isinstance(v, dict) and all(isinstance(x, int | float) for x in v.values()) for v in metrics.values()
    ):
        raise fail("field 'metrics' must map dataset -> {metric: number}")
    for key in ("architecture", "file", "license", "paper"):
        if not isinstance(table[key], str) or not table[key]:
            raise fail(f"field '{key}' must be a non-empty string")
    try:
        split_architecture(table["architecture"])
    except ValueError as e:
        raise fail(f"field 'architecture': {e}") from e
    return WeightsEntry(
        name=name,
        architecture=table["architecture"],
        task=table["task"],
        source=source,
        file=table["file"],
        sha256=sha,
        license=table["license"],
        paper=table["paper"],
        metrics=metrics,
        description=table.get("description", ""),
        num_params=table.get("num_params"),
        input=table.get("input", {}),
    )


def _parse_source(raw: Any, fail: Callable[[str], VvkError]) -> Source:
    if not isinstance(raw, dict):
        raise fail("field 'source' must be a table with one of hf, url, torchvision")
    kinds = [k for k in SOURCE_KINDS if k in raw]
    if len(kinds) != 1:
        raise fail("field 'source' must have exactly one of hf, url, torchvision")
    kind = kinds[0]
    extra = sorted(set(raw) - {kind, "revision"})
    if extra or ("revision" in raw and kind != "hf"):
        raise fail(f"field 'source' has unexpected key(s) {', '.join(extra or ['revision'])}")
    if kind == "hf":
        if raw["hf"].count("/") != 1:
            raise fail("field 'source.hf' must be a repo id 'owner/name'")
        return Source(kind="hf", repo=raw["hf"], revision=raw.get("revision"))
    if kind == "url":
        if not str(raw["url"]).startswith(("https://", "http://", "file://")):
            raise fail("field 'source.url' must be an http(s) or file URL")
        return Source(kind="url", url=raw["url"])
    if not re.match(r"^\w+_Weights\.\w+$", str(raw["torchvision"])):
        raise fail("field 'source.torchvision' must look like 'ResNet50_Weights.IMAGENET1K_V2'")
    return Source(kind="torchvision", torchvision=raw["torchvision"])


def get(name: str, registry: dict[str, WeightsEntry] | None = None) -> WeightsEntry:
    registry = load_registry() if registry is None else registry
    if name in registry:
        return registry[name]
    import difflib

    close = difflib.get_close_matches(name, registry, n=3)
    hint = f"did you mean {', '.join(close)}?" if close else "see `vvk weights list`"
    raise VvkError(f"unknown weights '{name}'", hint=hint)


# ---------------------------------------------------------------------------------------------
# Caches


def _offline() -> bool:
    truthy = {"1", "true", "yes", "on"}
    return any(os.environ.get(v, "").lower() in truthy for v in ("HF_HUB_OFFLINE", "VVK_OFFLINE"))


def _download_timeout() -> float:
    return float(os.environ.get("VVK_DOWNLOAD_TIMEOUT", "15"))


def _local_target(entry: WeightsEntry) -> Path:
    """Where a url/torchvision entry lives once downloaded."""
    if entry.source.kind == "torchvision":
        return torch_hub_checkpoints() / entry.file
    return cache_dir() / "weights" / entry.name / entry.file


def cached_path(entry: WeightsEntry) -> Path | None:
    """The local file for ``entry`` if it is already downloaded (not verified here)."""
    if entry.source.kind == "hf":
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(entry.source.repo, entry.file, revision=entry.source.revision)
        return Path(hit) if isinstance(hit, str) else None
    target = _local_target(entry)
    return target if target.is_file() else None


# ---------------------------------------------------------------------------------------------
# Hashing


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path: str | os.PathLike, expected: str, *, what: str) -> str:
    """Hash ``path`` and compare with ``expected`` (a full digest or a published prefix)."""
    actual = sha256_file(path)
    if not actual.startswith(expected.lower()):
        raise VvkError(
            f"sha256 mismatch for {what} at {path}: expected {expected}, got {actual}",
            hint="the file is corrupt or was replaced; delete it and pull again",
        )
    return actual


# ---------------------------------------------------------------------------------------------
# Fetching


def pull(name: str, *, registry: dict[str, WeightsEntry] | None = None, progress: bool = True) -> Path:
    """Make sure ``name`` is in the cache and verified; return its path."""
    entry = get(name, registry)
    path = cached_path(entry) or _download(entry, progress=progress)
    verify_file(path, entry.sha256, what=f"weights '{entry.name}'")
    return path


def _missing_error(entry: WeightsEntry, reason: str) -> VvkError:
    where = (
        _local_target(entry) if entry.source.kind != "hf" else f"the Hugging Face cache ({entry.source.repo})"
    )
    return VvkError(
        f"weights '{entry.name}' ({entry.file}) are not in {where} and {reason}",
        hint=f"run `vvk weights pull {entry.name}` with network access, or pass --weights PATH",
    )


def _download(entry: WeightsEntry, *, progress: bool) -> Path:
    if entry.source.kind == "hf":
        return _download_hf(entry)
    if _offline():
        raise _missing_error(entry, "downloads are off (HF_HUB_OFFLINE/VVK_OFFLINE)")
    return _download_url(entry, _source_url(entry), _local_target(entry), progress=progress)


def _source_url(entry: WeightsEntry) -> str:
    if entry.source.kind == "url":
        return str(entry.source.url)
    from torchvision.models import get_weight

    return get_weight(entry.source.torchvision).url


def _download_hf(entry: WeightsEntry) -> Path:
    return _hf_fetch(
        entry.source.repo,
        entry.file,
        entry.source.revision,
        label=f"weights '{entry.name}'",
        missing=lambda reason: _missing_error(entry, reason),
    )


def _hf_fetch(
    repo: str, file: str, revision: str | None, *, label: str, missing: Callable[[str], VvkError]
) -> Path:
    """hf_hub_download with its failures turned into one-line errors (``missing`` builds the
    error for 'not cached and not downloadable'), reaching the Hub for at most
    ``VVK_DOWNLOAD_TIMEOUT`` seconds."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    timeout = _download_timeout()
    if not _offline() and not isinstance(try_to_load_from_cache(repo, file, revision=revision), str):
        # For a file it has not cached, hf_hub_download retries an unreachable Hub with back-off
        # (about 25 s, whatever its timeouts) before it gives up: ask once first.
        unreachable = _hub_unreachable(repo, file, revision, timeout)
        if unreachable:
            raise missing(unreachable)
    try:
        with _hf_read_timeout(timeout):
            return Path(hf_hub_download(repo, file, revision=revision, etag_timeout=timeout))
    except LocalEntryNotFoundError as e:  # a subclass of EntryNotFoundError: test it first
        raise missing(
            "downloads are off (HF_HUB_OFFLINE)" if _offline() else "the Hub could not be reached"
        ) from e
    except (EntryNotFoundError, RepositoryNotFoundError) as e:
        raise VvkError(f"{label}: {file} not found in hf-hub:{repo}") from e
    except OSError as e:  # connection errors surface as OSError subclasses
        raise missing(f"the download failed: {e}") from e


def _hub_unreachable(repo: str, file: str, revision: str | None, timeout: float) -> str | None:
    """Why the Hub does not answer one metadata request (no retries) within ``timeout``, or None
    when it answers, an error included (hf_hub_download then reports that one)."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError

    try:
        get_hf_file_metadata(hf_hub_url(repo, file, revision=revision), timeout=timeout)
    except HfHubHTTPError:
        return None
    except Exception as e:  # the HTTP client's own errors: no connection, no answer in time
        return f"the Hub could not be reached in {timeout:g} s ({type(e).__name__})"
    return None


@contextlib.contextmanager
def _hf_read_timeout(seconds: float) -> Iterator[None]:
    """huggingface_hub's read timeout of a transfer (``HF_HUB_DOWNLOAD_TIMEOUT``, read when it is
    imported) set to ``seconds`` for one download, unless the user set that variable."""
    from huggingface_hub import constants

    if "HF_HUB_DOWNLOAD_TIMEOUT" in os.environ:
        yield
        return
    previous = constants.HF_HUB_DOWNLOAD_TIMEOUT
    constants.HF_HUB_DOWNLOAD_TIMEOUT = seconds
    try:
        yield
    finally:
        constants.HF_HUB_DOWNLOAD_TIMEOUT = previous


def _download_url(entry: WeightsEntry, url: str, target: Path, *, progress: bool) -> Path:
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=_download_timeout()) as response, atomic_path(target) as tmp:
            total = int(response.headers.get("Content-Length") or 0) or None
            with open(tmp, "wb") as out, _progress_bar(entry.file, total, enabled=progress) as advance:
                for chunk in iter(lambda: response.read(_CHUNK), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    advance(len(chunk))
            # Refuse to put a wrong file into the cache at all.
            if not digest.hexdigest().startswith(entry.sha256):
                raise VvkError(
                    f"sha256 mismatch for weights '{entry.name}' downloaded from {url}: "
                    f"expected {entry.sha256}, got {digest.hexdigest()}"
                )
    except (TimeoutError, urllib.error.URLError, ConnectionError) as e:
        reason = getattr(e, "reason", e)
        raise _missing_error(entry, f"the download from {url} failed: {reason}") from e
    return target


class _NullBar:
    def __enter__(self):
        return lambda n: None

    def __exit__(self, *exc):
        return False


def _progress_bar(label: str, total: int | None, *, enabled: bool):
    if not enabled:
        return _NullBar()
    from contextlib import contextmanager

    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    @contextmanager
    def bar():
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            console=Console(stderr=True),
            transient=True,
        ) as p:
            task = p.add_task(label, total=total)
            yield lambda n: p.advance(task, n)

    return bar()


# ---------------------------------------------------------------------------------------------
# --weights PATH | NAME | hf-hub:REPO/FILE


def parse_hf_spec(spec: str) -> tuple[str, str, str | None]:
    """``hf-hub:owner/name[@revision]/path/to/file`` -> (repo, file, revision)."""
    body = spec[len(HF_PREFIX) :]
    parts = body.split("/", 2)
    if len(parts) != 3 or not all(parts):
        raise VvkError(f"--weights {spec!r}: expected hf-hub:OWNER/REPO/FILE")
    owner, name, file = parts
    name, _, revision = name.partition("@")
    return f"{owner}/{name}", file, revision or None


def lookup(spec: str, *, registry: dict[str, WeightsEntry] | None = None) -> WeightsEntry | None:
    """The registry entry a ``--weights`` value names, or None when it is an hf-hub spec, an
    existing path (which wins over a registry name of the same spelling, as in ``resolve``) or
    no known name."""
    if spec.startswith(HF_PREFIX) or Path(spec).expanduser().exists():
        return None
    registry = load_registry() if registry is None else registry
    return registry.get(spec)


def resolve(spec: str, *, registry: dict[str, WeightsEntry] | None = None, progress: bool = True) -> Path:
    """Turn a ``--weights`` value into a verified local file.

    - an existing path is returned as it is (vvk checkpoints verify themselves against their
      sidecar when loaded);
    - a registry name is pulled if needed and its sha256 checked;
    - ``hf-hub:OWNER/REPO/FILE`` is fetched through huggingface_hub; when the Hub stores the file
      in LFS its cache blob is named by the sha256 of the content, which is checked.
    """
    if spec.startswith(HF_PREFIX):
        return _resolve_hf_spec(spec)
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_file():
            raise VvkError(f"--weights {spec}: is a folder, expected a file")
        return path
    registry = load_registry() if registry is None else registry
    if spec in registry:
        return pull(spec, registry=registry, progress=progress)
    if os.sep in spec or spec.endswith((".safetensors", ".pt", ".pth", ".bin")):
        raise VvkError(f"--weights {spec}: file not found")
    get(spec, registry)  # raises with close matches
    raise AssertionError("unreachable")


def _resolve_hf_spec(spec: str) -> Path:
    repo, file, revision = parse_hf_spec(spec)
    path = _hf_fetch(
        repo,
        file,
        revision,
        label=f"--weights {spec}",
        missing=lambda reason: VvkError(
            f"--weights {spec}: {file} is not in the Hugging Face cache and {reason}",
            hint="run it once with network access, or pass --weights PATH",
        ),
    )
    blob = path.resolve()
    if re.fullmatch(r"[0-9a-f]{64}", blob.name):
        verify_file(path, blob.name, what=spec)
    return path
