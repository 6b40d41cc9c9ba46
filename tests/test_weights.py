"""The weights registry: schema of every entry, download paths exercised against local caches."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from vvk.errors import VvkError
from vvk.testing import run_vvk
from vvk.weights import REQUIRED_FIELDS, load_registry, parse_hf_spec, resolve, sha256_file

REAL = load_registry()


# ---------------------------------------------------------------------------------------------
# Schema of the real registry


@pytest.mark.parametrize("name", sorted(REAL))
def test_entry_schema(name):
    entry = REAL[name]
    assert "." in name, "names are architecture.tag"
    assert entry.file and entry.license and entry.paper.startswith("https://")
    assert entry.metrics, "every entry states the publisher's reported metrics"
    if entry.source.kind == "url":
        # OpenAI CLIP publishes the digest in the URL; the registry must agree with it.
        assert entry.sha256 in entry.source.url
        assert entry.source.url.endswith("/" + entry.file)
    if entry.source.kind == "torchvision":
        # torchvision publishes the first 8 hex digits of the sha256 in the file name.
        from torchvision.models import get_weight

        weights = get_weight(entry.source.torchvision)
        assert weights.url.endswith("/" + entry.file)
        assert entry.file.rsplit("-", 1)[1].split(".")[0] == entry.sha256
        assert entry.num_params == weights.meta["num_params"]
        assert entry.metrics["ImageNet-1k"]["acc@1"] == weights.meta["_metrics"]["ImageNet-1K"]["acc@1"]


@pytest.mark.parametrize("name", sorted(REAL))
def test_every_architecture_can_be_built_here(name):
    from vvk.models.pretrained import check_architecture

    check_architecture(REAL[name])


@pytest.mark.parametrize(
    "name", sorted(n for n, e in REAL.items() if e.architecture.startswith("open_clip:"))
)
def test_open_clip_entries_match_built_model(name):
    import open_clip

    entry = REAL[name]
    arch = entry.architecture.split(":", 1)[1]
    model = open_clip.create_model(arch, pretrained=None, device="meta")
    assert sum(p.numel() for p in model.parameters()) == entry.num_params
    if "openaipublic" in str(entry.source.url):  # OpenAI trained CLIP with QuickGELU
        assert open_clip.get_model_config(arch).get("quick_gelu"), f"{name}: use {arch}-quickgelu"


def _write_registry(tmp_path: Path, tables: dict[str, dict]) -> Path:
    lines = []
    for name, table in tables.items():
        lines.append(f'["{name}"]')
        for key, value in table.items():
            lines.append(f"{key} = {_toml(value)}")
    path = tmp_path / "weights.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml(value) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f'"{k}" = {_toml(v)}' for k, v in value.items()) + " }"
    return json.dumps(value)


def _entry(**overrides) -> dict:
    base = {
        "architecture": "test",
        "task": "image-backbone",
        "source": {"hf": "vvk-test/tiny"},
        "file": "model.safetensors",
        "sha256": "0" * 64,
        "license": "MIT",
        "paper": "https://example.org",
        "metrics": {"toy": {"acc": 1.0}},
    }
    return {**base, **overrides}


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"task": "cooking"}, "field 'task'"),
        ({"sha256": "abc"}, "field 'sha256'"),
        ({"sha256": "0123abcd"}, "only torchvision publishes prefixes"),
        ({"source": {"hf": "a/b", "url": "https://x"}}, "exactly one of"),
        ({"source": {"hf": "no-slash"}}, "owner/name"),
        ({"metrics": {"toy": 3}}, "field 'metrics'"),
        ({"colour": "blue"}, "unknown field(s) colour"),
        ({"architecture": "timm:resnet50"}, "field 'architecture': unknown architecture source 'timm:'"),
        ({"architecture": "open_clip:"}, "field 'architecture': the architecture name is empty"),
    ],
)
def test_schema_errors_name_entry_and_field(tmp_path, overrides, message):
    path = _write_registry(tmp_path, {"bad.entry": _entry(**overrides)})
    with pytest.raises(VvkError) as info:
        load_registry(path)
    assert "entry 'bad.entry'" in str(info.value) and message in str(info.value)


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"architecture": "no-such-model"}, "is not in the model registry"),
        (
            {"architecture": "r3d-rs-50", "task": "image-backbone"},
            "has task 'video-backbone', not the entry's 'image-backbone'",
        ),
        ({"architecture": "torchvision:resnet5000"}, "is not a torchvision builder"),
        (
            {
                "architecture": "torchvision:resnet18",
                "source": {"torchvision": "ResNet50_Weights.IMAGENET1K_V1"},
            },
            "does not take torchvision's ResNet50_Weights.IMAGENET1K_V1",
        ),
        ({"architecture": "open_clip:ViT-Z-99"}, "is not an open_clip model config"),
    ],
)
def test_unbuildable_architectures_are_refused(tmp_path, overrides, message):
    from vvk.models.pretrained import check_architecture

    table = _entry(**overrides)
    if "torchvision" in table["source"]:
        table["sha256"] = "0123abcd"
    (entry,) = load_registry(_write_registry(tmp_path, {"bad.entry": table})).values()
    with pytest.raises(
        VvkError, match=f"weights 'bad.entry': architecture '{table['architecture']}' {message}"
    ):
        check_architecture(entry)


def test_missing_field_and_malformed_toml(tmp_path):
    table = _entry()
    del table["license"]
    with pytest.raises(VvkError, match="missing field.*license"):
        load_registry(_write_registry(tmp_path, {"x.y": table}))
    broken = tmp_path / "broken.toml"
    broken.write_text('["x"\nfile = ')
    with pytest.raises(VvkError, match=r"broken.toml: malformed TOML"):
        load_registry(broken)


def test_list_by_model_pattern_stays_torch_free(tmp_path):
    registry = _write_registry(
        tmp_path,
        {
            "clip.test": _entry(architecture="open_clip:ViT-B-32-quickgelu", task="vision-language"),
            "rn50.test": _entry(architecture="torchvision:resnet50"),
            "r3d.test": _entry(architecture="r3d-rs-50", task="video-backbone"),
        },
    )
    patterns = {
        "open_clip:*": ["clip.test"],
        "ViT-B-*": ["clip.test"],  # the name without its source prefix
        "resnet50": ["rn50.test"],
        "torchvision:resnet*": ["rn50.test"],
        "r3d-rs-*": ["r3d.test"],
        "spinenet-*": [],
    }
    script = (
        "import json, sys\nfrom vvk.cli import main\n"
        f"for pattern in {list(patterns)!r}:\n"
        "    assert main(['weights', 'list', '--model', pattern, '--json']) == 0\n"
        "print(json.dumps(['torch' in sys.modules]))\n"
    )
    env = {**os.environ, "VVK_WEIGHTS_TOML": str(registry)}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    *rows, torch_imported = proc.stdout.splitlines()
    assert json.loads(torch_imported) == [False]
    listed = [json.loads(row)["name"] for row in rows]
    assert listed == [name for names in patterns.values() for name in names]


def test_parse_hf_spec():
    assert parse_hf_spec("hf-hub:org/repo/sub/model.safetensors") == (
        "org/repo",
        "sub/model.safetensors",
        None,
    )
    assert parse_hf_spec("hf-hub:org/repo@v1.0/m.pt") == ("org/repo", "m.pt", "v1.0")
    with pytest.raises(VvkError, match="expected hf-hub:OWNER/REPO/FILE"):
        parse_hf_spec("hf-hub:org/repo")


# ---------------------------------------------------------------------------------------------
# Hugging Face path, offline, against a hub cache built here


def _make_hub_cache(cache: Path, repo: str, file: str, payload: bytes) -> str:
    """Lay out huggingface_hub's cache: blobs/<sha256>, snapshots/<commit>/<file> -> blob, refs/main."""
    digest = hashlib.sha256(payload).hexdigest()
    commit = "a" * 40
    root = cache / ("models--" + repo.replace("/", "--"))
    (root / "blobs").mkdir(parents=True)
    (root / "blobs" / digest).write_bytes(payload)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    snapshot = root / "snapshots" / commit / file
    snapshot.parent.mkdir(parents=True)
    snapshot.symlink_to(os.path.relpath(root / "blobs" / digest, snapshot.parent))
    return digest


@pytest.fixture
def hub(tmp_path):
    """A local HF cache holding one file, a registry pointing at it, and offline env vars."""
    payload = b"tiny weights " * 1000
    cache = tmp_path / "hf"
    digest = _make_hub_cache(cache, "vvk-test/tiny", "model.safetensors", payload)
    registry = _write_registry(
        tmp_path,
        {
            "tiny.test": _entry(sha256=digest),
            "absent.test": _entry(source={"hf": "vvk-test/absent"}, sha256=digest),
        },
    )
    env = {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "VVK_WEIGHTS_TOML": str(registry)}
    return {"env": env, "digest": digest, "cache": cache, "registry": registry}


def test_pull_from_local_hub_cache_offline(hub):
    result = run_vvk("weights", "pull", "tiny.test", "--json", env=hub["env"])
    assert result.code == 0, result.stderr
    record = json.loads(result.stdout)
    assert sha256_file(record["path"]) == hub["digest"]
    listed = run_vvk("weights", "list", "--json", env=hub["env"])
    cached = {json.loads(line)["name"]: json.loads(line)["cached"] for line in listed.stdout.splitlines()}
    assert cached == {"tiny.test": True, "absent.test": False}


def test_corrupted_hub_blob_is_an_error(hub):
    blob = next((hub["cache"] / "models--vvk-test--tiny" / "blobs").iterdir())
    blob.write_bytes(b"tampered")
    result = run_vvk("weights", "pull", "tiny.test", env=hub["env"])
    assert result.code == 1
    assert "sha256 mismatch for weights 'tiny.test'" in result.stderr
    verify = run_vvk("weights", "verify", "--json", env=hub["env"])
    assert verify.code == 1
    assert json.loads(verify.stdout.splitlines()[0])["status"].startswith("MISMATCH")


def test_offline_missing_file_fails_fast_with_the_fix(hub):
    start = time.monotonic()
    result = run_vvk("weights", "pull", "absent.test", env=hub["env"])
    assert result.code == 1
    assert time.monotonic() - start < 30  # a fresh interpreter plus the check; never a network wait
    (line,) = result.stderr.strip().splitlines()
    assert "model.safetensors" in line and "vvk weights pull absent.test" in line and "HF_HUB_OFFLINE" in line


def test_hf_hub_spec_resolves_and_checks_blob_digest(hub, monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hub["cache"]))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = resolve("hf-hub:vvk-test/tiny/model.safetensors")
    assert sha256_file(path) == hub["digest"]
    blob = next((hub["cache"] / "models--vvk-test--tiny" / "blobs").iterdir())
    blob.write_bytes(b"tampered")
    with pytest.raises(VvkError, match="sha256 mismatch"):
        resolve("hf-hub:vvk-test/tiny/model.safetensors")
    with pytest.raises(VvkError, match="not in the Hugging Face cache"):
        resolve("hf-hub:vvk-test/absent/model.safetensors")


def test_hf_hub_spec_loads_a_vvk_checkpoint(tmp_path, monkeypatch):
    """``vvk.models.load("hf-hub:...")`` rebuilds the model a checkpoint on the Hub records."""
    import huggingface_hub.constants as hf_constants
    import torch

    import vvk.models

    torch.manual_seed(0)
    source = vvk.models.build("vatt-video-tiny").eval()
    payload = vvk.models.save(source, tmp_path / "staged" / "backbone.safetensors").read_bytes()
    cache = tmp_path / "hf"
    _make_hub_cache(cache, "vvk-test/vatt", "backbone.safetensors", payload)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    model = vvk.models.load("hf-hub:vvk-test/vatt/backbone.safetensors", tasks={"video-backbone"}).eval()
    x = torch.randn(1, *vvk.models.get_entry("vatt-video-tiny").default_input)
    torch.testing.assert_close(model(x)["pooled"], source(x)["pooled"], rtol=0, atol=0)
    blob = next((cache / "models--vvk-test--vatt" / "blobs").iterdir())
    blob.write_bytes(payload[:-1] + bytes([payload[-1] ^ 0xFF]))
    with pytest.raises(VvkError, match="sha256 mismatch"):
        vvk.models.load("hf-hub:vvk-test/vatt/backbone.safetensors")


def test_real_registry_pull_offline_fails_fast():
    start = time.monotonic()
    result = run_vvk(
        "weights", "pull", "clip-vit-b-32.openai", env={"HF_HUB_OFFLINE": "1", "VVK_CACHE": "/nonexistent"}
    )
    assert result.code != 0
    assert time.monotonic() - start < 30
    (line,) = result.stderr.strip().splitlines()
    assert "ViT-B-32.pt" in line and "vvk weights pull clip-vit-b-32.openai" in line


# ---------------------------------------------------------------------------------------------
# URL path, against servers on loopback


class _FileHandler(http.server.BaseHTTPRequestHandler):
    payload = b""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        self.wfile.write(self.payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def file_server():
    payload = random.Random(0).randbytes(300_000)  # fixed, so a failure reproduces
    handler = type("Handler", (_FileHandler,), {"payload": payload})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", payload
    server.shutdown()


def test_url_download_into_vvk_cache(tmp_path, monkeypatch, file_server):
    url, payload = file_server
    digest = hashlib.sha256(payload).hexdigest()
    registry = load_registry(
        _write_registry(
            tmp_path, {"u.test": _entry(source={"url": f"{url}/w.bin"}, file="w.bin", sha256=digest)}
        )
    )
    monkeypatch.setenv("VVK_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("VVK_OFFLINE", raising=False)
    path = resolve("u.test", registry=registry, progress=False)
    assert path == tmp_path / "cache" / "weights" / "u.test" / "w.bin"
    assert path.read_bytes() == payload
    # Loaded again: served from the cache (server not needed) and checked again.
    path.write_bytes(payload[:-1] + bytes([payload[-1] ^ 0xFF]))  # a changed last byte, always
    with pytest.raises(VvkError, match="sha256 mismatch"):
        resolve("u.test", registry=registry)


def test_url_download_with_wrong_digest_leaves_nothing(tmp_path, monkeypatch, file_server):
    url, _ = file_server
    registry = load_registry(
        _write_registry(
            tmp_path, {"u.test": _entry(source={"url": f"{url}/w.bin"}, file="w.bin", sha256="1" * 64)}
        )
    )
    monkeypatch.setenv("VVK_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(VvkError, match="sha256 mismatch"):
        resolve("u.test", registry=registry, progress=False)
    assert list((tmp_path / "cache" / "weights" / "u.test").iterdir()) == []


def test_unresponsive_server_times_out(tmp_path, monkeypatch):
    """A server that accepts the connection and never answers: an error after the timeout, no hang."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    port = sock.getsockname()[1]
    registry = load_registry(
        _write_registry(
            tmp_path,
            {"s.test": _entry(source={"url": f"http://127.0.0.1:{port}/w"}, file="w", sha256="1" * 64)},
        )
    )
    monkeypatch.setenv("VVK_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("VVK_DOWNLOAD_TIMEOUT", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    start = time.monotonic()
    with pytest.raises(VvkError, match=r"vvk weights pull s.test"):
        resolve("s.test", registry=registry)
    assert time.monotonic() - start < 10
    sock.close()


@pytest.mark.timeout(60)  # without the bound, huggingface_hub's retries take minutes here
def test_unresponsive_hub_times_out(tmp_path, monkeypatch):
    """An hf-hub file from a Hub that accepts the connection and never answers: an error after
    VVK_DOWNLOAD_TIMEOUT, not after huggingface_hub's own timeouts and back-off retries."""
    import huggingface_hub.constants as hf_constants

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    endpoint = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setattr(hf_constants, "ENDPOINT", endpoint)
    template = endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("VVK_OFFLINE", raising=False)
    monkeypatch.setenv("VVK_DOWNLOAD_TIMEOUT", "1")
    start = time.monotonic()
    with pytest.raises(VvkError, match=r"Hugging Face cache and the Hub could not be reached in 1 s"):
        resolve("hf-hub:vvk-test/tiny/model.safetensors")
    assert time.monotonic() - start < 8
    sock.close()


def test_missing_local_path_and_unknown_name(tmp_path):
    with pytest.raises(VvkError, match="file not found"):
        resolve(str(tmp_path / "nope.safetensors"))
    with pytest.raises(VvkError, match="unknown weights 'clip-vit-b-32'.*did you mean"):
        resolve("clip-vit-b-32")


def test_required_fields_are_documented_in_registry_header():
    header = (Path(__file__).resolve().parents[1] / "weights.toml").read_text().split("\n[")[0]
    for field in REQUIRED_FIELDS:
        assert field in header
