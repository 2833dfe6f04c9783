"""One TOML table -> one validated ModelCard (curated catalog and the local-import index).

Every problem names the file, the entry and the field, so a typo in catalog.toml reads
like: catalog.toml entry 'x': field 'runtime' is 'tensorflow'; expected one of ...
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from engine.catalog.card import PRECISIONS, RUNTIMES, TASKS, AttentionSupport, ModelCard, Source
from engine.catalog.sidecar import OUTPUTS, validate_sidecar
from engine.errors import CatalogError


@dataclass(frozen=True)
class CatalogProblem:
    """One entry that could not be used, and why (shown by the GUI, printed by the CLI).

    Here, below both readers (engine.catalog.catalog and engine.catalog.local_import),
    so that neither imports the other for it."""

    origin: str  # the file it came from
    entry: str | None  # the entry id, when it had one
    message: str  # the full sentence, naming file, entry and field

    def __str__(self) -> str:
        return self.message


VARIANTS = ("semantic", "panoptic", "instance", "promptable", "matting", "open-vocab")
ATTENTION_VALUES = tuple(a.value for a in AttentionSupport)
ID_PATTERN = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")  # kebab-case
LOCAL_ID_PATTERN = re.compile(r"^local:[a-z0-9]+(?:-[a-z0-9]+)*$")
REPO_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
FULL_SHA = re.compile(r"^[0-9a-f]{40}$")
SHORT_SHA = re.compile(r"^[0-9a-f]{7,39}$")
PACKAGE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")  # a pip distribution name
PACKAGE_FILE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:/[A-Za-z0-9_.-]+)+$")  # module/…/file
REF_NAME = re.compile(r"^(?:refs/pr/\d+|[A-Za-z0-9][A-Za-z0-9._-]*(?:/[A-Za-z0-9._-]+)*)$")

# precisions each runtime can run a model in (memory_mb keys)
RUNTIME_PRECISIONS = {
    "transformers": ("fp32", "fp16", "bf16"),
    "spandrel": ("fp32", "fp16", "bf16"),
    "onnx": ("fp32",),  # an ONNX graph has one precision: the file's
    "facenet-pytorch": ("fp32",),  # MTCNN's cascade runs in fp32 (facenet-pytorch's own choice)
}
BYTES_PER_PARAM = {"fp32": 4, "fp16": 2, "bf16": 2}
MEMORY_OVERHEAD = 1.5  # weights plus ~50% for activations at typical input sizes (as ModelCard)

CARD_FIELDS = {
    "id", "name", "repo", "revision", "tasks", "runtime", "files", "download_bytes", "params",
    "license", "commercial_use", "memory_mb", "attention", "seed", "architecture", "variant",
    "trust_remote_code", "gated", "sidecar", "description", "package", "install",
}
CATALOG_EXTRA = {"seen_commit"}  # short SHA seen when only a branch can be pinned
LOCAL_EXTRA = {"source", "local_path", "file_size", "file_mtime_ns", "file_sha256",
               "imported_at"}
CATALOG_REQUIRED = ("id", "name", "tasks", "runtime", "files", "license", "attention", "seed",
                    "description")  # plus repo + revision (hub entries) or package
LOCAL_REQUIRED = ("id", "name", "tasks", "runtime", "local_path")


def memory_rule_mb(params: int, precision: str) -> int:
    """The documented estimate: params x bytes per parameter x 1.5, in MiB, rounded up."""
    return int(params * BYTES_PER_PARAM[precision] * MEMORY_OVERHEAD / 2**20) + 1


def memory_for(params: int | None, runtime: str) -> dict[str, int]:
    if not params:
        return {}
    return {p: memory_rule_mb(params, p) for p in RUNTIME_PRECISIONS[runtime]}


def check_revision(revision: str) -> str | None:
    """None when fine, else why not. Full SHAs pin; branch/ref names track."""
    if FULL_SHA.match(revision):
        return None
    if SHORT_SHA.match(revision):
        return ("looks like a short commit SHA; pin the full 40-character SHA, or pin a branch "
                "(\"main\") and put the short SHA in 'seen_commit'")
    if REF_NAME.match(revision) and ".." not in revision:
        return None
    return "is not a commit SHA or a branch/ref name"


def card_from_entry(entry: dict[str, Any], *, origin: str, index: int, local: bool = False) -> ModelCard:
    """Validate one `[[models]]` table and build its card. Raises CatalogError."""
    raw_id = entry.get("id")
    label = f"{origin} entry '{raw_id}'" if isinstance(raw_id, str) and raw_id else f"{origin} entry #{index + 1} (no id)"

    def fail(field: str, problem: str) -> CatalogError:
        return CatalogError(f"{label}: field '{field}' {problem}")

    allowed = CARD_FIELDS | (LOCAL_EXTRA if local else CATALOG_EXTRA)
    for key in entry:
        if key not in allowed:
            raise fail(key, f"is not a known field; known fields: {', '.join(sorted(allowed))}")
    for key in LOCAL_REQUIRED if local else CATALOG_REQUIRED:
        if key not in entry:
            raise fail(key, "is missing (required)")

    def typed(field: str, kind: type | tuple, what: str) -> Any:
        value = entry.get(field)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool) and kind is not bool):
            raise fail(field, f"is {value!r}; expected {what}")
        return value

    card_id = typed("id", str, "a string")
    if local:
        if not LOCAL_ID_PATTERN.match(card_id):
            raise fail("id", f"is {card_id!r}; expected 'local:' then kebab-case")
    elif not ID_PATTERN.match(card_id):
        raise fail("id", f"is {card_id!r}; expected short kebab-case such as 'rtdetr-r18'")
    name = typed("name", str, "a string")

    tasks = entry["tasks"]
    if isinstance(tasks, str):
        tasks = [tasks]
    if not isinstance(tasks, list) or not tasks:
        raise fail("tasks", f"is {tasks!r}; expected a non-empty list drawn from {', '.join(TASKS)}")
    for task in tasks:
        if task not in TASKS:
            raise fail("tasks", f"contains {task!r}; expected one of {', '.join(TASKS)}")

    runtime = entry["runtime"]
    if runtime not in RUNTIMES:
        raise fail("runtime", f"is {runtime!r}; expected one of {', '.join(RUNTIMES)}")

    repo = typed("repo", str, "a hub repo id 'owner/name'")
    if repo is not None and not REPO_PATTERN.match(repo):
        raise fail("repo", f"is {repo!r}; expected a hub repo id 'owner/name'")
    revision = typed("revision", str, "a commit SHA or branch name")
    if revision is not None:
        why = check_revision(revision)
        if why:
            raise fail("revision", f"is {revision!r}: {why}")
    package = typed("package", str, "a pip distribution name such as 'facenet-pytorch'")
    install = typed("install", str, "the command that installs the package")
    if package is not None:
        if local:
            raise fail("package", "is only for curated catalog entries")
        if not PACKAGE_PATTERN.match(package):
            raise fail("package", f"is {package!r}; expected a pip distribution name")
        for field, value in (("repo", repo), ("revision", revision)):
            if value is not None:
                raise fail(field, f"is set, but the entry's weights ship in package {package!r}; "
                                  f"an entry has a hub repo or a package, not both")
    elif install is not None:
        raise fail("install", "is only for entries whose weights ship in a 'package'")
    seen = typed("seen_commit", str, "a short commit SHA")
    if seen is not None:
        if not SHORT_SHA.match(seen) and not FULL_SHA.match(seen):
            raise fail("seen_commit", f"is {seen!r}; expected 7 to 40 lowercase hex characters")
        if revision and FULL_SHA.match(revision):
            raise fail("seen_commit", "is only for entries pinned to a branch; this one pins a full SHA")

    files = entry.get("files", [])
    if not isinstance(files, list) or not all(isinstance(f, str) and f for f in files):
        raise fail("files", "must be a list of file names or glob patterns")
    if package is not None:
        modules = set()
        for rel in files:
            if not PACKAGE_FILE.match(rel) or ".." in rel.split("/"):
                raise fail("files", f"lists {rel!r}; a package entry lists paths inside the "
                                    f"installed package, such as 'module/data/weights.pt'")
            modules.add(rel.split("/", 1)[0])
        if len(modules) > 1:
            raise fail("files", f"spans modules {', '.join(sorted(modules))}; list the files of "
                                f"one package's module")
    if not local:
        if not files:
            raise fail("files", "is empty; list only what the runtime needs")
        for pattern in files:
            if pattern.endswith((".bin", ".h5", ".msgpack", ".ckpt", ".pt", ".pth")) and any(
                    f.endswith(".safetensors") for f in files):
                raise fail("files", f"lists {pattern!r} next to safetensors weights; fetch one format")

    download_bytes = typed("download_bytes", int, "a whole number of bytes")
    params = typed("params", int, "a whole number of parameters")
    for field, value in (("download_bytes", download_bytes), ("params", params)):
        if value is not None and value <= 0:
            raise fail(field, f"is {value}; expected a positive number")

    license_ = typed("license", str, "an SPDX-like licence id such as 'apache-2.0'") or "unknown"
    commercial = typed("commercial_use", bool, "true or false (leave it out when unknown)")

    memory = entry.get("memory_mb", {})
    if not isinstance(memory, dict):
        raise fail("memory_mb", f"is {memory!r}; expected a table such as {{ fp32 = 120, fp16 = 60 }}")
    for precision, mb in memory.items():
        if precision not in PRECISIONS:
            raise fail("memory_mb", f"has precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
        if precision not in RUNTIME_PRECISIONS[runtime]:
            raise fail("memory_mb", f"has {precision!r}, which the {runtime} runtime does not offer")
        if not isinstance(mb, int) or isinstance(mb, bool) or mb <= 0:
            raise fail("memory_mb", f"has {precision} = {mb!r}; expected a positive whole number of MiB")

    attention = entry.get("attention", "none")
    if attention not in ATTENTION_VALUES:
        raise fail("attention", f"is {attention!r}; expected one of {', '.join(ATTENTION_VALUES)}")
    if runtime == "onnx" and attention != "none":
        raise fail("attention", f"is {attention!r}, but ONNX graphs return no attention tensors; use 'none'")

    variant = typed("variant", str, "a string")
    if variant is not None and variant not in VARIANTS:
        raise fail("variant", f"is {variant!r}; expected one of {', '.join(VARIANTS)}")

    seed = typed("seed", str, "a string") or ""
    architecture = typed("architecture", str, "a class or architecture name")
    description = typed("description", str, "a string") or ""
    trust = typed("trust_remote_code", bool, "true or false") or False
    gated = typed("gated", bool, "true or false") or False

    sidecar = entry.get("sidecar", {})
    if not isinstance(sidecar, dict):
        raise fail("sidecar", "must be a table")
    if runtime == "onnx":
        if not sidecar:
            raise fail("sidecar", "is missing; ONNX entries need one (graphs, input, output)")
        sidecar = validate_sidecar(sidecar, where=f"{label}: sidecar", task=tasks[0])
        if "graphs" not in sidecar:
            raise fail("sidecar", f"has no 'graphs'; output {sidecar['output']!r} needs "
                                  f"{', '.join(OUTPUTS[sidecar['output']][1])}")
        if not local:
            for role, rel in sidecar["graphs"].items():
                if rel not in files:
                    raise fail("files", f"does not list graph '{role}' = {rel!r} from the sidecar")
    else:
        sidecar = dict(sidecar)

    local_path = None
    source = Source.CATALOG
    if local:
        local_path = typed("local_path", str, "a path")
        source = Source.LOCAL
    elif package is not None:
        source = Source.PACKAGE
    elif repo is None or revision is None:
        raise fail("repo" if repo is None else "revision",
                   "is missing (required; or 'package' for weights that ship in a Python package)")

    return ModelCard(
        id=card_id, name=name, tasks=tuple(tasks), runtime=runtime, repo=repo, revision=revision,
        files=tuple(files), download_bytes=download_bytes, params=params, license=license_,
        commercial_use=commercial, memory_mb=dict(memory), attention=AttentionSupport(attention),
        seed=seed, architecture=architecture, variant=variant, trust_remote_code=trust,
        gated=gated, source=source, local_path=local_path, sidecar=sidecar, description=description,
        package=package, install=install,
    )


def entry_from_card(card: ModelCard) -> dict[str, Any]:
    """The TOML table for a card (used to write the local-import index)."""
    entry: dict[str, Any] = {
        "id": card.id, "name": card.name, "tasks": list(card.tasks), "runtime": card.runtime,
        "license": card.license, "attention": card.attention.value, "seed": card.seed,
        "description": card.description,
    }
    optional = {
        "repo": card.repo, "revision": card.revision, "download_bytes": card.download_bytes,
        "params": card.params, "commercial_use": card.commercial_use,
        "architecture": card.architecture, "variant": card.variant, "local_path": card.local_path,
        "package": card.package, "install": card.install,
    }
    entry.update({k: v for k, v in optional.items() if v is not None})
    if card.files:
        entry["files"] = list(card.files)
    if card.memory_mb:
        entry["memory_mb"] = dict(card.memory_mb)
    if card.trust_remote_code:
        entry["trust_remote_code"] = True
    if card.gated:
        entry["gated"] = True
    if card.sidecar:
        entry["sidecar"] = card.sidecar
    return entry
