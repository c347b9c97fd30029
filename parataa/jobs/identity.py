"""The weights identity of a study's models: one sha256 per model, found once per plan and cheaply.

`weights_digest` folds a `parataa.models.weights_identity` (every weight file's and component config's sha256)
into one hex digest; a run's manifest stores the identity (`weights`) and its config the digest
(`weights_sha256`), so a run made with other weights than the study's is not complete and is made again.

`study_weights` gives each model of a study config its digest. Hashing multi-GB weights on every plan would
cost minutes, so the digest is kept in a cache file beside the results (`<results_dir>/<study>/.weights.json`)
with the size and mtime of every file it covers: while none of them changed, the plan reads the digest from
there (a stat per file); when one did, the files are hashed again in full. The cache is only a shortcut: a
missing or unreadable one is rebuilt.

`parataa sample` (or any other caller) can record the same identity with
`weights_digest(parataa.models.weights_identity(name, path))`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["weights_digest", "study_weights", "identity_digests"]


def weights_digest(identity: Mapping[str, Any]) -> str | None:
    """One sha256 over the file and config hashes of a weights identity; None for a model without weights
    (gmm). Where the weights were found (path, hub snapshot) is left out: the same files elsewhere are the same
    weights."""
    files = identity.get("files") or {}
    configs = identity.get("configs") or {}
    if not files and not configs:
        return None
    payload = {"files": {k: v["sha256"] for k, v in sorted(files.items())}, "configs": dict(sorted(configs.items()))}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _root(identity: Mapping[str, Any]) -> str | None:
    source = identity.get("source") or {}
    return source.get("path") or source.get("snapshot")


def _stats(root: str, names: list[str]) -> list[list[int]] | None:
    out = []
    for name in names:
        try:
            st = os.stat(os.path.join(root, name))
        except OSError:
            return None
        out.append([int(st.st_size), int(st.st_mtime_ns)])
    return out


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def study_weights(
    config: Mapping[str, Any], cache: str | Path | None = None
) -> tuple[dict[str, str | None], list[str]]:
    """({model name: weights digest or None}, notes) for every model of a validated study config. `cache`: the
    cache file (default <results_dir>/<study>/.weights.json). A model whose weights are not on this machine (a
    hub model not downloaded yet) gets None and a note: its runs then record the identity the job finds."""
    cache = Path(cache) if cache is not None else Path(config["results_dir"]) / config["study"] / ".weights.json"
    entries = _read(cache)
    out: dict[str, str | None] = {}
    notes: list[str] = []
    changed = False
    for m in config["models"]:
        name, path = m["name"], m.get("path")
        if name == "gmm":
            out[name] = None
            continue
        key = f"{name}|{path or ''}"
        e = entries.get(key)
        if isinstance(e, dict) and e.get("root") and _stats(e["root"], e.get("names", [])) == e.get("stats"):
            out[name] = e.get("digest")
            continue
        from ..models import weights_identity  # imports torch: only when something must be hashed

        try:
            ident = weights_identity(name, path)
        except (OSError, ValueError) as err:  # WeightsNotFoundError is both
            out[name] = None
            notes.append(f"[weights] {name}: {str(err).splitlines()[0]}; the plan records no weights identity")
            continue
        root = _root(ident)
        names = sorted([*(ident.get("files") or {}), *(ident.get("configs") or {})])
        out[name] = weights_digest(ident)
        if root:
            entries[key] = {"root": root, "names": names, "stats": _stats(root, names), "digest": out[name]}
            changed = True
        notes.append(f"[weights] {name}: hashed {len(names)} files, identity {str(out[name])[:12]}")
    if changed:
        try:
            from ..manifest import atomic_write_json

            atomic_write_json(cache, entries)
        except OSError as err:  # a read-only results dir: the next plan hashes again
            notes.append(f"[weights] cache {cache} not written ({err})")
    return out, notes


def identity_digests(manifests: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str | None, list[str]]]:
    """{model: {weights digest: [run ...]}} from run manifests ({run id: manifest}); a study of one identity per
    model has one key per model. Torch-free (the analysis' audit calls it)."""
    out: dict[str, dict[str | None, list[str]]] = {}
    for run, m in manifests.items():
        cfg = m.get("config") or {}
        digest = cfg.get("weights_sha256") or weights_digest(m.get("weights") or {})
        out.setdefault(str(cfg.get("model")), {}).setdefault(digest, []).append(run)
    return out
