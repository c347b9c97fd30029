"""What the network adapters share: device/dtype handling, micro-batching, and the clear missing-weights error."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "WeightsNotFoundError",
    "WeightsSource",
    "resolve_device",
    "resolve_dtype",
    "run_chunked",
    "resolve_weights",
    "load_part",
    "load_components",
    "place",
    "hub_cache_dir",
    "hub_offline",
    "looks_like_path",
    "cached_snapshot",
]

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
    "fp64": torch.float64,
}


class WeightsNotFoundError(FileNotFoundError, ValueError):
    """Pretrained weights are neither at the given path nor in the Hugging Face cache (and no network)."""


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device must be available, got {str(device)!r} but CUDA is not; use device='cpu'")
    return dev


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    return _DTYPES[dtype]


def check_chunk_size(chunk_size: int | None) -> int | None:
    if chunk_size is not None and (not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer (network rows per call) or None, got {chunk_size!r}")
    return chunk_size


def run_chunked(
    fn: Callable[[slice], torch.Tensor], n: int, rows_per_item: int, chunk_size: int | None
) -> torch.Tensor:
    """Evaluate fn over items 0..n-1 in slices of at most `chunk_size` network rows; concatenate the outputs.

    Each item costs `rows_per_item` rows (2 with classifier-free guidance). Chunking only bounds memory: every
    item is computed the same way, whatever the slice it falls in (up to the kernels' batch invariance).
    """
    per = n if chunk_size is None else max(1, chunk_size // rows_per_item)
    outs = [fn(slice(i, min(i + per, n))) for i in range(0, n, per)]
    return outs[0] if len(outs) == 1 else torch.cat(outs)


# ------------------------------------------------------------------------------ where the weights are

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_TRUE = {"1", "ON", "YES", "TRUE"}


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment at call time in huggingface_hub's order."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it (1/on/yes/true), at call time."""
    value = os.environ.get("HF_HUB_OFFLINE")
    if value is not None:
        return value.strip().upper() in _TRUE
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def looks_like_path(text: str) -> bool:
    """Everything but a bare hub id `owner/name` is a path: absolute or dotted or ~ paths, one part or several,
    and `a/b` whose first part exists here (the folder the user meant)."""
    if text.startswith(("/", ".", "~")) or "\\" in text or not _HUB_ID.match(text) or ".." in text or "--" in text:
        return True
    return Path(text.split("/")[0]).exists()


def cached_snapshot(repo_id: str, cache_dir: Path) -> tuple[Path, str] | None:
    """(snapshot folder, revision) that refs/main points to in a hub cache, or None (the documented layout
    models--OWNER--NAME/{refs/main, snapshots/REV/...})."""
    repo = cache_dir / f"models--{repo_id.replace('/', '--')}"
    ref = repo / "refs" / "main"
    if not ref.is_file():
        return None
    revision = ref.read_text().strip()
    snapshot = repo / "snapshots" / revision
    return (snapshot, revision) if revision and snapshot.is_dir() else None


@dataclass(frozen=True)
class WeightsSource:
    """Where a model's weights come from. `root` is the folder holding the component folders: the local path, or
    the cached snapshot of a hub id; None only for a hub id that from_pretrained still has to download."""

    given: str
    kind: str  # "path" or "hub"
    root: Path | None
    repo_id: str | None = None
    revision: str | None = None
    cache_dir: Path | None = None

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "given": self.given}
        if self.kind == "path":
            out["path"] = str(self.root)
        else:
            snapshot = None if self.root is None else str(self.root)
            out.update(repo_id=self.repo_id, revision=self.revision, snapshot=snapshot)
        return out


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def _with_components(source: WeightsSource, what: str, components: Sequence[str]) -> WeightsSource:
    assert source.root is not None
    missing = [c for c in components if not (source.root / c).is_dir()]
    if missing:
        where = "cached snapshot" if source.kind == "hub" else "folder"
        present = sorted(p.name for p in source.root.iterdir()) if source.root.is_dir() else []
        raise WeightsNotFoundError(
            f"{what}: the {where} {source.root} has no {missing[0]!r} folder (it holds {present or 'nothing'}); "
            f"pass the root of a diffusers-format snapshot with {', '.join(c + '/config.json' for c in components)}, "
            f"e.g. the folder `hf download REPO --local-dir DIR` wrote"
        )
    return source


def resolve_weights(
    name_or_path: str | os.PathLike[str],
    what: str,
    components: Sequence[str],
    *,
    repo: str | None = None,
    hub: bool = True,
) -> WeightsSource:
    """Find a model's weights without touching the network when they are on this machine.

    With hub=False (a path the user gave) the argument is a local folder and nothing else. With hub=True, anything
    that `looks_like_path` is a local folder too, and only a bare `owner/name` is a hub id. A local folder must
    exist: a missing one is an error at once that names it. A hub id is looked up in the hub cache (HF_HUB_CACHE)
    first and loaded from its snapshot folder there; with HF_HUB_OFFLINE set a miss is one clear error; otherwise
    the Hub is asked once (10 s timeout) before from_pretrained downloads. `repo` is the model's published hub id,
    for the advice in the messages.
    """
    given = str(name_or_path)
    local = Path(given).expanduser()
    if local.exists():
        return _with_components(WeightsSource(given, "path", local.resolve()), what, components)
    if not hub or looks_like_path(given):
        advice = (
            f"; on a machine with network `hf download {repo} --local-dir DIR` writes one. To load {repo} from the "
            "Hugging Face cache (HF_HUB_CACHE) instead, give no weights path"
            if repo
            else ""
        )
        raise WeightsNotFoundError(
            f"{what}: no such folder {given!r} ({local.absolute()}). The weights path must name a local diffusers-"
            f"format snapshot folder (with {', '.join(c + '/' for c in components)}){advice}"
        )
    cache = hub_cache_dir()
    found = cached_snapshot(given, cache)
    if found is not None:
        source = WeightsSource(given, "hub", found[0], given, found[1], cache)
        return _with_components(source, what, components)
    advice = (
        f"Fill the cache on a connected machine with `hf download {given}` (set HF_HUB_CACHE to where the cache is), "
        f"or run `hf download {given} --local-dir DIR` there, copy DIR here and pass it as the model path "
        f"(--model-path DIR)"
    )
    if hub_offline():
        raise WeightsNotFoundError(
            f"{what}: {given!r} is not a local folder and not in the Hugging Face cache {cache}, and HF_HUB_OFFLINE "
            f"is set, so the Hub is not asked. {advice}"
        )
    try:
        from huggingface_hub import HfApi

        HfApi().repo_info(given, timeout=10)
    except Exception as e:  # any failure of the one request: no network, no such repo, gated, proxy
        raise WeightsNotFoundError(
            f"{what}: {given!r} is not a local folder and not in the Hugging Face cache {cache}, and the Hub did "
            f"not answer for it ({_first_line(e)}). {advice}"
        ) from e
    return WeightsSource(given, "hub", None, given, None, cache)


def _quiet(cls: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """diffusers warns when `accelerate` is missing unless low_cpu_mem_usage is chosen explicitly."""
    if cls.__module__.startswith("diffusers"):
        return {"low_cpu_mem_usage": False, **kwargs}
    return kwargs


def place(module: Any, device: torch.device, dtype: torch.dtype) -> Any:
    """Move a network to device/dtype in eval mode, frozen; cast only when the dtype differs (diffusers warns
    on every dtype cast)."""
    module = module.to(device)
    if next(module.parameters()).dtype != dtype:
        module = module.to(dtype)
    return module.eval().requires_grad_(False)


def load_part(cls: Any, source: WeightsSource, subfolder: str, what: str, **kwargs: Any) -> Any:
    """`cls.from_pretrained` of one component of a resolved source, with a clear error when it is not there."""
    if source.root is not None:
        try:
            return cls.from_pretrained(str(source.root), subfolder=subfolder, **_quiet(cls, kwargs))
        except OSError as e:  # the folder lacks the config or the weights file
            raise WeightsNotFoundError(
                f"{what}: cannot load {cls.__name__} from {source.root / subfolder} ({_first_line(e)})"
            ) from e
    try:
        with warnings.catch_warnings():  # diffusers passes a deprecated hub argument; not the user's concern
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
            return cls.from_pretrained(
                source.repo_id, subfolder=subfolder, cache_dir=str(source.cache_dir), **_quiet(cls, kwargs)
            )
    except (OSError, ValueError, RuntimeError) as e:
        raise WeightsNotFoundError(
            f"{what}: downloading {source.repo_id!r} (subfolder {subfolder!r}) into {source.cache_dir} failed "
            f"({_first_line(e)}). On a machine with network run `hf download {source.repo_id} --local-dir DIR`, copy "
            f"DIR here and pass it as the model path (--model-path DIR)"
        ) from e


def load_components(components: Sequence[Any], source: WeightsSource, what: str) -> dict[str, Any]:
    """Every component (registry.COMPONENTS) of a resolved source by its folder, loaded with its library's class;
    an optional one absent from a local folder is left out. Text encoders load in float32."""
    import importlib

    out = {}
    for c in components:
        if c.optional and source.root is not None and not (source.root / c.folder).is_dir():
            continue
        cls = getattr(importlib.import_module(c.library), c.cls)
        kwargs = {"dtype": torch.float32} if c.library == "transformers" else {}
        out[c.folder] = load_part(cls, source, c.folder, what, **kwargs)
    return out


class GuidedAdapter:
    """What the diffusers adapters share: input checks, dtype/device casts, chunked evaluation, VAE decoding.

    Subclasses set sample_shape, device, dtype, chunk_size, guided, vae, vae_scaling_factor, calls, and define
    `_condition(samples)` (what `_eval` takes per row) and `_eval(x, tau, condition)`.
    """

    sample_shape: tuple[int, ...]
    device: torch.device
    dtype: torch.dtype
    chunk_size: int | None
    vae: Any
    vae_scaling_factor: float
    calls: int
    integer_timesteps = True  # diffusion models read integer timesteps; flow models the level s * 1000 as given

    @property
    def guided(self) -> bool:
        raise NotImplementedError

    def _condition(self, samples: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _eval(self, x: torch.Tensor, tau: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, timesteps: torch.Tensor, samples: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.sample_shape:
            raise ValueError(f"x must have shape [B, {', '.join(map(str, self.sample_shape))}], got {tuple(x.shape)}")
        self.calls += 1
        xm = x.to(self.device, self.dtype)
        tau = timesteps.to(self.device)
        tau = tau.round().long() if self.integer_timesteps else tau.to(torch.float32)
        cond = self._condition(samples.to(self.device).long())
        out = run_chunked(
            lambda s: self._eval(xm[s], tau[s], cond[s]), x.shape[0], 2 if self.guided else 1, self.chunk_size
        )
        return out.to(x.device, x.dtype)

    @torch.no_grad()
    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Final states -> images [B, C, H, W] in [0, 1] (float32, CPU), through the VAE if there is one."""
        x = x0.to(self.device, self.dtype)
        if self.vae is not None:
            img = run_chunked(
                lambda s: self.vae.decode(x[s] / self.vae_scaling_factor).sample, x.shape[0], 1, self.chunk_size
            )
        else:
            img = x
        return ((img.float() + 1) / 2).clamp(0, 1).cpu()
