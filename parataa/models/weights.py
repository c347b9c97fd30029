"""The identity of a model's weights: where they came from, the sha256 of every file the loaders read, and whether
they are synthetic (random weights in the published layout, see `synthetic.py`).

    weights_identity("dit-xl-2-256")                       # hub id, from the cached snapshot (HF_HUB_CACHE)
    weights_identity("sd-v1-5", "weights/sd")              # a local snapshot folder

The files hashed are exactly the ones diffusers/transformers load for each component (safetensors before bin,
shards through their index), never the other variants a snapshot may hold (`.fp16`, `.non_ema`, the single-file
`.ckpt`). Hashing reads each file once per process: results are kept per (file, size, mtime, inode), so a job
that asks twice pays once (1.7 s per GB measured on the 2-core development machine).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from ._common import WeightsSource, resolve_weights
from .registry import HUB_IDS, _check_name, default_weights

__all__ = ["weights_identity", "weight_files", "file_sha256", "COMPONENTS"]

# component folder -> library naming its weight files, per model (what the loaders read)
COMPONENTS: dict[str, tuple[tuple[str, str], ...]] = {
    "tiny-dit": (("transformer", "diffusers"),),
    "tiny-flow": (("transformer", "diffusers"),),
    "dit-xl-2-256": (("transformer", "diffusers"), ("vae", "diffusers")),
    "tiny-sd": (("unet", "diffusers"), ("text_encoder", "transformers"), ("vae", "diffusers")),
    "sd-v1-5": (("unet", "diffusers"), ("text_encoder", "transformers"), ("vae", "diffusers")),
}
_OPTIONAL = {("tiny-sd", "vae")}  # the embedded tiny-sd runs in pixel space: no VAE folder
_NAMES = {
    "diffusers": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
    "transformers": ("model.safetensors", "pytorch_model.bin"),
}
_HASHES: dict[tuple[str, int, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """sha256 of a file (symlinks followed), computed once per process for an unchanged file."""
    real = os.path.realpath(path)
    st = os.stat(real)
    key = (real, st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _HASHES:
        h = hashlib.sha256()
        with open(real, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                h.update(block)
        _HASHES[key] = h.hexdigest()
    return _HASHES[key]


def weight_files(folder: Path, library: str) -> list[Path]:
    """The weight files a library loads from one component folder (no variant): safetensors shards through their
    index, one safetensors file, bin shards, one bin file, in that order of preference."""
    for name in _NAMES[library]:
        index = folder / f"{name}.index.json"
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            return [folder / s for s in shards]
        if (folder / name).is_file():
            return [folder / name]
    raise FileNotFoundError(f"{folder} has no {' or '.join(_NAMES[library])} (nor a sharded index of one)")


def weights_identity(name: str, path: str | Path | None = None) -> dict[str, Any]:
    """Where model `name`'s weights are and what they are: source (local path, or hub id with the cached snapshot's
    revision), sha256 and size of every weight file the loaders read, sha256 of the component configs, and
    `synthetic` (true when the folder carries the `parataa_synthetic.json` marker, whose content is included).

    `path` as in `build_denoiser`: None means the registry's default (the hub id, read from the hub cache without
    network; or the embedded model). Raises WeightsNotFoundError when the weights are not on this machine.
    """
    _check_name(name)
    if name == "gmm":
        return {"model": name, "source": {"kind": "analytic"}, "synthetic": False, "files": {}, "configs": {}}
    src = default_weights(name) if path is None else str(path)
    parts = COMPONENTS[name]
    required = [c for c, _ in parts if (name, c) not in _OPTIONAL]
    source: WeightsSource = resolve_weights(
        src, f"weights of {name}", required, repo=HUB_IDS.get(name), hub=src == HUB_IDS.get(name)
    )
    if source.root is None:
        raise FileNotFoundError(
            f"weights of {name}: {src!r} is not in the Hugging Face cache {source.cache_dir} yet; load the model "
            "once (it downloads into the cache) before asking for its identity"
        )
    t0 = time.perf_counter()
    files: dict[str, dict[str, Any]] = {}
    configs: dict[str, str] = {}
    for folder, library in parts:
        where = source.root / folder
        if not where.is_dir():
            continue  # optional component (checked above for the required ones)
        for f in weight_files(where, library):
            files[f.relative_to(source.root).as_posix()] = {"sha256": file_sha256(f), "bytes": f.stat().st_size}
        configs[f"{folder}/config.json"] = file_sha256(where / "config.json")
    scheduler = source.root / "scheduler" / "scheduler_config.json"
    if scheduler.is_file():
        configs["scheduler/scheduler_config.json"] = file_sha256(scheduler)
    marker_file = source.root / "parataa_synthetic.json"
    marker = json.loads(marker_file.read_text()) if marker_file.is_file() else None
    return {
        "model": name,
        "source": source.record(),
        "synthetic": marker is not None and marker.get("synthetic") is not False,
        "synthetic_marker": marker,
        "files": files,
        "configs": configs,
        "hash_s": round(time.perf_counter() - t0, 3),
    }
