"""Synthetic checkpoints: the published layout and configs of the paper's models, filled with random weights.

    python -m parataa.models.synthetic --model dit-xl-2-256 --size full --device cuda --out weights/dit-synthetic
    python -m parataa.models.synthetic --model sd-v1-5 --size tiny --out /tmp/sd-tiny
    python -m parataa.models.synthetic --model dit-xl-2-256 --size tiny --hub-cache /tmp/hub   # as hub cache

`--size full` has the real dimensions (DiT-XL/2: 675 M + 84 M parameters; SD v1.5: 860 M + 123 M + 84 M), built
on `--device` and saved as float16 safetensors; `--size tiny` keeps every file name and config key and shrinks
only the dimensions, for CPU tests. The configs come verbatim from `parataa/assets/configs/` (their provenance is
in the README there). Every checkpoint carries `parataa_synthetic.json` at its root: it says the weights are
random, what wrote them, the seed and the device; `parataa.models.weights.weights_identity` reads it, so results
of a synthetic checkpoint are never taken for the real model's.

A checkpoint is built in a temporary sibling folder and renamed into place when complete; with `--hub-cache` it is
stored the way `hf download` stores it (blobs named by sha256, snapshot symlinks, refs/main), under the published
repo id and a revision derived from its content, so `HF_HUB_CACHE=DIR HF_HUB_OFFLINE=1` loads it by hub id.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..manifest import sha256_file
from .embedded import CLIP_TOKENIZER, CLIP_TOKENIZER_FILES
from .registry import COMPONENTS, HUB_IDS, Component
from .weights import WEIGHT_NAMES

__all__ = [
    "CONFIGS",
    "MARKER",
    "CHECKPOINTS",
    "published_config",
    "tiny_config",
    "write_synthetic",
    "write_hub_cache",
    "main",
]

CONFIGS = Path(__file__).resolve().parent.parent / "assets" / "configs"
MARKER = "parataa_synthetic.json"
SIZES = ("full", "tiny")


@dataclass(frozen=True)
class Checkpoint:
    model: str
    revision: str  # the published revision the configs were checked against (see parataa/assets/configs/README.md)
    files: tuple[str, ...]  # config files copied verbatim (relative to CONFIGS/<name>)
    omitted: dict[str, str]
    tokenizer: bool = False  # copy the CLIP tokenizer's files into tokenizer/ (embedded.CLIP_TOKENIZER)

    @property
    def repo_id(self) -> str:
        return HUB_IDS[self.model]

    @property
    def components(self) -> tuple[Component, ...]:
        return COMPONENTS[self.model]


CHECKPOINTS: dict[str, Checkpoint] = {
    "dit-xl-2-256": Checkpoint(
        model="dit-xl-2-256",
        revision="eab87f77abd5aef071a632f08807fbaab0b704d0",
        files=(
            "model_index.json",
            "transformer/config.json",
            "vae/config.json",
            "scheduler/scheduler_config.json",
        ),
        omitted={
            "model_index.json:id2label": "the 1,000 ImageNet class names of the published model_index.json (no "
            "verified copy; parataa takes class indices)",
            "weights format": "published main holds float32 diffusion_pytorch_model.bin; here float16 safetensors",
        },
    ),
    "sd-v1-5": Checkpoint(
        model="sd-v1-5",
        revision="451f4fe16113bff5a5d2269ed5ad43b0592e9a14",
        files=(
            "model_index.json",
            "unet/config.json",
            "text_encoder/config.json",
            "vae/config.json",
            "scheduler/scheduler_config.json",
            "feature_extractor/preprocessor_config.json",
        ),
        tokenizer=True,
        omitted={
            "safety_checker": "not loaded by parataa; build a diffusers pipeline from this folder with "
            "safety_checker=None",
            "weights format": "published: float32 safetensors plus .fp16/.bin/.non_ema variants; here one float16 "
            "safetensors file per component under the non-variant name",
        },
    ),
}

# the tiny variant: only these dimension values change; every key and every other value stays as published
_TINY: dict[str, dict[str, dict[str, Any]]] = {
    "dit-xl-2-256": {
        "transformer": {"num_attention_heads": 2, "attention_head_dim": 8, "num_layers": 2, "sample_size": 8},
        "vae": {"block_out_channels": [8, 8, 16, 16], "layers_per_block": 1, "norm_num_groups": 4, "sample_size": 64},
    },
    "sd-v1-5": {
        "unet": {
            "block_out_channels": [8, 16, 16, 16],
            "attention_head_dim": 2,
            "cross_attention_dim": 16,
            "layers_per_block": 1,
            "norm_num_groups": 4,
            "sample_size": 8,
        },
        "text_encoder": {
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_attention_heads": 2,
            "num_hidden_layers": 1,
            "projection_dim": 16,
        },
        "vae": {"block_out_channels": [8, 8, 16, 16], "layers_per_block": 1, "norm_num_groups": 4, "sample_size": 64},
    },
}


def _check_model(model: str) -> Checkpoint:
    if model not in CHECKPOINTS:
        raise ValueError(f"model must be one of {sorted(CHECKPOINTS)}, got {model!r}")
    return CHECKPOINTS[model]


def published_config(model: str, relpath: str) -> dict[str, Any]:
    """A published config file of `model` (e.g. "transformer/config.json") as a dict."""
    _check_model(model)
    return json.loads((CONFIGS / model / relpath).read_text())


def tiny_config(model: str, component: str) -> dict[str, Any]:
    """The component's published config with the tiny dimensions: the same keys, small values."""
    cfg = published_config(model, f"{component}/config.json")
    changes = _TINY[model].get(component, {})
    unknown = set(changes) - set(cfg)
    if unknown:
        raise AssertionError(f"tiny overrides {sorted(unknown)} are not keys of the published {component} config")
    return {**copy.deepcopy(cfg), **copy.deepcopy(changes)}


def _config_text(model: str, relpath: str, size: str) -> str:
    """The file as published (full) or with the tiny values in the published key order and formatting."""
    text = (CONFIGS / model / relpath).read_text()
    folder = relpath.split("/")[0]
    if size == "full" or not relpath.endswith("/config.json") or folder not in _TINY[model]:
        return text
    cfg = json.loads(text)
    sort = list(cfg) == sorted(cfg)
    return json.dumps(tiny_config(model, folder), indent=2, sort_keys=sort) + "\n"


def _build(comp: Component, cfg: dict[str, Any], device: torch.device) -> torch.nn.Module:
    """Instantiate a component from its config directly on `device` (random initialisation there)."""
    with torch.device(device):
        if comp.library == "diffusers":
            import diffusers

            cls = getattr(diffusers, comp.cls)
            # the published DiT config carries Transformer2DModel keys DiTTransformer2DModel ignores: not news
            level = diffusers.logging.get_verbosity()
            diffusers.logging.set_verbosity_error()
            try:
                return cls.from_config({k: v for k, v in cfg.items() if not k.startswith("_")})
            finally:
                diffusers.logging.set_verbosity(level)
        import transformers

        config = transformers.CLIPTextConfig(**{k: v for k, v in cfg.items() if not k.startswith("_")})
        return getattr(transformers, comp.cls)(config)


def _randomise_zero_weights(module: torch.nn.Module, generator: torch.Generator) -> None:
    """Parameters a library initialises to zero (output projections of some versions) get small random values,
    so that every layer changes the output: a synthetic model must depend on its whole input."""
    with torch.no_grad():
        for p in module.parameters():
            if p.ndim >= 2 and not bool(p.any()):
                p.normal_(0.0, 0.02, generator=generator if p.device.type == generator.device.type else None)


def _save_weights(module: torch.nn.Module, path: Path, dtype: torch.dtype) -> int:
    from safetensors.torch import save_file

    state = {}
    for k, v in module.state_dict().items():
        state[k] = (v.to(dtype) if v.is_floating_point() else v).detach().contiguous().cpu()
    save_file(state, str(path), metadata={"format": "pt"})
    return sum(p.numel() for p in module.parameters())


def _share(root: Path) -> None:
    """Give the checkpoint the modes the umask allows (mkdtemp and safetensors create owner-only files): weights
    on a cluster are read by other users' jobs."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(root, 0o777 & ~umask)
    for p in root.rglob("*"):
        os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for dist in ("parataa", "torch", "diffusers", "transformers", "safetensors"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def write_synthetic(
    model: str,
    out: str | Path,
    *,
    size: str = "tiny",
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float16,
    force: bool = False,
) -> Path:
    """Write a synthetic checkpoint of `model` at `out` (complete or not at all); returns `out`."""
    spec = _check_model(model)
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device must be available, got {str(device)!r} but CUDA is not; use --device cpu")
    out = Path(out).expanduser()
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"out {out} exists and is not empty; pass --force to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for rel in spec.files:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_text(_config_text(model, rel, size))
        components = {}
        torch.manual_seed(seed)
        generator = torch.Generator(dev).manual_seed(seed)
        for comp in spec.components:
            cfg = json.loads((tmp / comp.folder / "config.json").read_text())
            module = _build(comp, cfg, dev)
            _randomise_zero_weights(module, generator)
            weights = WEIGHT_NAMES[comp.library][0]
            n = _save_weights(module, tmp / comp.folder / weights, dtype)
            components[comp.folder] = {"class": comp.cls, "parameters": n, "file": f"{comp.folder}/{weights}"}
            del module
        if spec.tokenizer:
            (tmp / "tokenizer").mkdir()
            for name in CLIP_TOKENIZER_FILES:
                shutil.copyfile(CLIP_TOKENIZER / name, tmp / "tokenizer" / name)
        marker = {
            "synthetic": True,
            "note": f"random weights in the layout and configs of {spec.repo_id}; not a trained model",
            "model": model,
            "published_repo": spec.repo_id,
            "published_revision": spec.revision,
            "size": size,
            "seed": seed,
            "init_device": str(dev),
            "dtype": str(dtype).replace("torch.", ""),
            "components": components,
            "omitted": spec.omitted,
            "created_by": "parataa.models.synthetic",
            "versions": _versions(),
            "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_s": round(time.perf_counter() - t0, 3),
        }
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        _share(tmp)
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, trash / out.name)
            os.replace(tmp, out)
            shutil.rmtree(trash)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def write_hub_cache(src: str | Path, cache_dir: str | Path, repo_id: str, revision: str | None = None) -> Path:
    """Store the checkpoint folder `src` in a Hugging Face hub cache as `repo_id` at `revision` (default: a
    40-hex id derived from the files' hashes) and point refs/main at it; returns the snapshot folder.

    The layout is huggingface_hub's: models--OWNER--NAME/blobs/<sha256>, snapshots/<rev>/<path> as relative
    symlinks to the blobs, refs/main holding the revision. A cache that already holds this repo at another
    revision is left alone (it may be the real model): the call fails instead of re-pointing refs/main.
    """
    src = Path(src)
    files = sorted(p for p in src.rglob("*") if p.is_file())
    digests = {p.relative_to(src).as_posix(): sha256_file(p) for p in files}
    if revision is None:
        revision = hashlib.sha1(json.dumps(digests, sort_keys=True).encode()).hexdigest()
    repo = Path(cache_dir).expanduser() / f"models--{repo_id.replace('/', '--')}"
    ref = repo / "refs" / "main"
    if ref.is_file() and ref.read_text().strip() != revision:
        raise FileExistsError(
            f"{repo} already holds {repo_id} at revision {ref.read_text().strip()}; not re-pointing refs/main at "
            f"the synthetic {revision} (use another --hub-cache folder)"
        )
    snapshot = repo / "snapshots" / revision
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    for rel, digest in digests.items():
        blob = repo / "blobs" / digest
        if not blob.exists():
            tmp = blob.with_name(blob.name + ".incomplete")
            shutil.copyfile(src / rel, tmp)
            os.replace(tmp, blob)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(revision)
    return snapshot


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m parataa.models.synthetic",
        description="Write a checkpoint with the published layout and configs of a paper model and random weights "
        "(marked synthetic by parataa_synthetic.json).",
    )
    p.add_argument("--model", required=True, choices=sorted(CHECKPOINTS))
    p.add_argument("--size", choices=SIZES, default="tiny", help="full: real dimensions; tiny: CPU tests (default)")
    p.add_argument("--out", default=None, help="checkpoint folder to write (a diffusers-format snapshot)")
    p.add_argument("--hub-cache", default=None, help="also (or only) store it in this hub cache, by hub id")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="where to initialise the weights (cuda is fastest for full)")
    p.add_argument("--dtype", choices=("float16", "bfloat16", "float32"), default="float16", help="saved dtype")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    args = p.parse_args(argv)
    if args.out is None and args.hub_cache is None:
        p.error("give --out DIR, --hub-cache DIR or both")
    t0 = time.perf_counter()
    try:
        out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="parataa-synthetic-")) / "checkpoint"
        write_synthetic(
            args.model, out, size=args.size, seed=args.seed, device=args.device,
            dtype=getattr(torch, args.dtype), force=args.force,
        )  # fmt: skip
        mib = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20
        where = [str(out)] if args.out else []
        if args.hub_cache is not None:
            where.append(str(write_hub_cache(out, args.hub_cache, CHECKPOINTS[args.model].repo_id)))
            if args.out is None:
                shutil.rmtree(out.parent)
    except (ValueError, FileExistsError) as e:
        print(f"synthetic: error: {e}", file=sys.stderr)
        return 2
    print(
        f"wrote synthetic {args.size} {args.model} (seed {args.seed}, {args.device}, {args.dtype}, {mib:.1f} MiB) "
        f"to {' and '.join(where)} in {time.perf_counter() - t0:.1f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
