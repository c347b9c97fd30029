"""The CLIP tokenizer of Stable Diffusion, built offline from the shipped BPE file.

`parataa/assets/clip/bpe_simple_vocab_16e6.txt.gz` (MIT, from open_clip; see the NOTICE beside it) holds the
byte-pair merges CLIP was trained with. The vocabulary is the 256 byte symbols, the same with the end-of-word
marker, the 48,894 merges and the two special tokens: 49,408 ids, identical to Stable Diffusion's tokenizer
(bos 49406, eos 49407, padding with eos to 77 ids).
"""

from __future__ import annotations

import functools
import gzip
import html
from collections.abc import Sequence
from pathlib import Path

import regex
import torch

__all__ = ["CLIPTokenizer", "BPE_PATH", "VOCAB_SIZE"]

BPE_PATH = Path(__file__).resolve().parent.parent / "assets" / "clip" / "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SIZE = 49408
_NUM_MERGES = VOCAB_SIZE - 256 * 2 - 2
_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map of the 256 bytes to printable characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


class CLIPTokenizer:
    """Text -> CLIP token ids, as `transformers.CLIPTokenizer` of Stable Diffusion produces them."""

    def __init__(self, bpe_path: str | Path = BPE_PATH, max_length: int = 77) -> None:
        path = Path(bpe_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"CLIP BPE file not found at {path}; it ships in parataa/assets/clip/ - reinstall parataa"
            )
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2 (bos + eos), got {max_length}")
        lines = gzip.open(path).read().decode("utf-8").split("\n")
        merges = [tuple(m.split()) for m in lines[1 : _NUM_MERGES + 1]]
        self.byte_encoder = _bytes_to_unicode()
        vocab = list(self.byte_encoder.values())
        vocab += [v + "</w>" for v in vocab]
        vocab += ["".join(m) for m in merges]
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        if len(vocab) != VOCAB_SIZE:
            raise ValueError(f"{path} gives {len(vocab)} tokens, expected {VOCAB_SIZE}: not the CLIP BPE file")
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.bos_id = self.encoder["<|startoftext|>"]
        self.eos_id = self.encoder["<|endoftext|>"]
        self.pad_id = self.eos_id  # Stable Diffusion pads with <|endoftext|>
        self.max_length = max_length
        self.vocab_size = len(vocab)
        self._bpe = functools.lru_cache(maxsize=10_000)(self._bpe_uncached)

    def _bpe_uncached(self, token: str) -> tuple[str, ...]:
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            first, second = best
            merged: list[str] = []
            i = 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        return word

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` without bos/eos: html-unescaped, whitespace-collapsed, lower-cased."""
        if not isinstance(text, str):
            raise ValueError(f"prompt must be a string, got {type(text).__name__}")
        text = html.unescape(html.unescape(text))
        text = regex.sub(r"\s+", " ", text).strip().lower()
        ids: list[int] = []
        for piece in _PATTERN.findall(text):
            symbols = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[s] for s in self._bpe(symbols))
        return ids

    def __call__(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """Padded ids [B, max_length]: bos, the text truncated to max_length - 2 ids, eos, eos padding."""
        if isinstance(prompts, str):
            prompts = [prompts]
        out = torch.full((len(prompts), self.max_length), self.pad_id, dtype=torch.long)
        for row, p in enumerate(prompts):
            ids = [self.bos_id, *self.encode(p)[: self.max_length - 2], self.eos_id]
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out
