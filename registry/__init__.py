"""registry: versioned, immutable artifacts on disk plus a SQLite index, with lineage.

Knows files and metadata, not neural networks: it imports neither pwm_core nor pwmctl.

    reg = Registry(home)
    with reg.stage("worldmodel", "mt30-48m") as staging:
        save_weights(staging.path / "model.safetensors")
        wm = staging.publish(parents=["dataset/mt30:v1"], tasks=tasks, code_version="0.1.0")
    reg.resolve("mt30-48m", default_kind="worldmodel")   # -> worldmodel/mt30-48m:v1

`registry.store` is the facade (staging, publishing, finding); beside it `registry.index` (the SQLite
index), `registry.lineage` (Hub remotes, lineage trees), `registry.runs` (run folders) and
`registry.provenance` (the code that made an artifact). Sharing on the Hugging Face Hub lives in
`registry.hub` (push/pull, one commit per version) and `registry.cards` (README cards); they import
huggingface_hub only when called.
"""

from registry.errors import ArtifactNotFound, IntegrityError, RefError, RegistryError
from registry.index import SCHEMA_VERSION, Artifact
from registry.lineage import LineageNode, Remote, content_sha256
from registry.manifest import (
    MANIFEST_NAME,
    FileProblem,
    hash_tree,
    read_manifest,
    verify_tree,
    write_manifest,
)
from registry.refs import KINDS, Ref, parse_ref
from registry.store import Registry, Staging

__all__ = [
    "KINDS",
    "MANIFEST_NAME",
    "SCHEMA_VERSION",
    "Artifact",
    "ArtifactNotFound",
    "FileProblem",
    "IntegrityError",
    "LineageNode",
    "Ref",
    "RefError",
    "Registry",
    "RegistryError",
    "Remote",
    "Staging",
    "content_sha256",
    "hash_tree",
    "parse_ref",
    "read_manifest",
    "verify_tree",
    "write_manifest",
]
