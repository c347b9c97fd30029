"""What each model accepts as a condition, checked before anything is computed.

Class-conditional models take labels 0 .. C-1 (gmm: its `classes` option, default 10; tiny-dit, tiny-flow: 10;
dit-xl-2-256: 1000); a label outside is refused, never wrapped. Text-conditional models take non-empty prompts
of at most 75 CLIP tokens (77 with the start and end tokens: Stable Diffusion's text encoder reads no more and
would drop the rest silently); tiny-sd also takes a digit 0-9 as shorthand for its training prompt.

Torch-free unless a prompt is longer than 75 bytes (only then is the CLIP tokenizer loaded to count its tokens),
so the workflow's dry run can check a study's conditions cheaply. Used by the study-config validation
(parataa.jobs.config) and by the command line (parataa.cli).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "MODELS",
    "GMM_DEFAULT_CLASSES",
    "PROMPT_TOKENS",
    "num_classes",
    "is_class_conditional",
    "check_condition",
    "check_conditions",
    "prompt_tokens",
]

# Labels each class-conditional model was trained with; None: text-conditional.
_CLASSES: dict[str, int | None] = {
    "gmm": None, "tiny-dit": 10, "tiny-sd": None, "tiny-flow": 10, "dit-xl-2-256": 1000, "sd-v1-5": None
}
MODELS = tuple(_CLASSES)
GMM_DEFAULT_CLASSES = 10  # parataa.models.gmm.GaussianMixture's default num_classes
PROMPT_TOKENS = 75  # CLIP's context of 77 ids minus the start and end tokens


def is_class_conditional(model: str) -> bool:
    if model not in _CLASSES:
        raise ValueError(f"model must be one of {MODELS}, got {model!r}")
    return model in ("gmm", "tiny-dit", "tiny-flow", "dit-xl-2-256")


def num_classes(model: str, options: Mapping[str, Any] | None = None) -> int | None:
    """The number of class labels of `model` (gmm: its `classes` option); None for text-conditional models."""
    if not is_class_conditional(model):
        return None
    if model == "gmm":
        return int((options or {}).get("classes", GMM_DEFAULT_CLASSES))
    return _CLASSES[model]


def prompt_tokens(prompt: str) -> int:
    """CLIP tokens of `prompt` without the start and end tokens (what Stable Diffusion's tokenizer would cut)."""
    return _count(prompt)


def _byte_bound(prompt: str) -> int:
    """An upper bound of prompt_tokens: BPE merges only join the byte symbols of the tokenizer's normalised,
    lower-cased text, so a prompt never has more tokens than those bytes. Short prompts need no tokenizer."""
    return len(unicodedata.normalize("NFC", prompt).lower().encode("utf-8"))


def _count(prompt: str) -> int:
    from .models.stable_diffusion import clip_tokenizer

    global _TOKENIZER
    if _TOKENIZER is None:
        _TOKENIZER = clip_tokenizer()
    return len(_TOKENIZER(prompt, add_special_tokens=False, verbose=False)["input_ids"])


_TOKENIZER: Any = None


def check_condition(model: str, condition: Any, options: Mapping[str, Any] | None = None) -> str | None:
    """None when `model` accepts `condition`; otherwise the reason, naming the model, the value and what is
    allowed."""
    classes = num_classes(model, options)
    if classes is not None:
        if not isinstance(condition, int) or isinstance(condition, bool):
            return f"model {model} takes class labels (integers 0..{classes - 1}), got {condition!r}"
        if not 0 <= condition < classes:
            return f"model {model} has {classes} classes: labels 0..{classes - 1}, got {condition}"
        return None
    if model == "tiny-sd" and isinstance(condition, int) and not isinstance(condition, bool):
        if not 0 <= condition <= 9:
            return f"model tiny-sd takes prompts, or a digit 0..9 for its training prompt, got {condition}"
        return None
    if not isinstance(condition, str):
        return f"model {model} takes prompts (strings), got {condition!r}"
    if not condition.strip():
        return f"model {model}: empty prompt {condition!r}; give the text to condition on"
    if _byte_bound(condition) > PROMPT_TOKENS:
        n = _count(condition)
        if n > PROMPT_TOKENS:
            short = condition if len(condition) <= 60 else condition[:57] + "..."
            return (
                f"model {model}: prompt {short!r} is {n} CLIP tokens; the text encoder reads at most "
                f"{PROMPT_TOKENS} (77 with the start and end tokens) and would drop the rest: shorten it"
            )
    return None


def check_conditions(model: str, conditions: Sequence[Any], options: Mapping[str, Any] | None = None) -> list[str]:
    """Every problem of a list of conditions, one message each (the index, then check_condition's reason)."""
    if len(conditions) == 0:
        return [f"model {model}: no conditions given; give at least one class label or prompt"]
    out = []
    for i, c in enumerate(conditions):
        msg = check_condition(model, c, options)
        if msg:
            out.append(f"[{i}]: {msg}")
    return out
