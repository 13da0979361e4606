"""Textual inversion embeddings: ``models/embeddings/<name>.safetensors`` used by name in prompts, as A1111 does.

An embedding is a few learned token vectors. A1111 users put its name in a prompt (``EasyNegative`` in the
negative prompt is the classic) and the vectors take the place of the name's tokens. Atelier matches A1111
rather than diffusers' ``load_textual_inversion``, on purpose:

- A1111 finds an embedding by its *token ids* in the tokenized prompt (longest name first), so the match follows
  CLIP's own lower-casing and word splitting. diffusers adds the name to the tokenizer as a new token and
  expands multi-vector names with a plain ``str.replace``, so ``neg`` would also rewrite ``negative``, a name
  that is already a CLIP word (``style``) cannot be loaded at all, and the shared, cached model is changed for
  every later request.
- Atelier changes nothing in the model: the prompt encoder puts placeholder ids where an embedding's name was,
  and while the text encoder runs, :func:`embedding_vectors_in_place` writes the embedding's vectors into the
  token-embedding output at those positions (A1111's ``EmbeddingsWithFixes`` does the same). A prompt without
  embeddings takes no extra path.

File layouts read (safetensors only; A1111's ``.pt``/``.bin`` are pickles and refused like every pickle):

- ``emb_params`` (A1111 and kohya SD 1.5), or a single tensor of any key (diffusers' ``learned_embeds``):
  ``(vectors, 768)`` for SD 1.5's CLIP ViT-L;
- ``clip_l`` and ``clip_g`` (SDXL): ``(vectors, 768)`` and ``(vectors, 1280)`` for SDXL's two text encoders.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atelier.engine.library import FolderLibrary
from atelier.engine.paths import read_safetensors_header
from atelier.errors import AtelierError

# Which text encoder a vector table is for: SD 1.5's (and SDXL's first) CLIP ViT-L, SDXL's OpenCLIP ViT-bigG.
CLIP_L = "clip_l"
CLIP_G = "clip_g"
SHORT_HASH_LENGTH = 12  # A1111's "TI hashes" value
MAX_VECTORS = 75  # an embedding must fit in one 75-token chunk (A1111's limit too)
# Placeholder token ids start here: far above any CLIP vocabulary (49,408), so they cannot be real tokens.
PLACEHOLDER_BASE = 1 << 30


def embedding_keys_kind(keys: Sequence[str], shapes: Sequence[Sequence[int]]) -> bool:
    """True when a safetensors file's tensors are those of a textual inversion embedding (header only)."""
    names = set(keys)
    if names == {"emb_params"} or names == {CLIP_L, CLIP_G}:
        return True
    # diffusers' learned_embeds.safetensors: one tensor named after its token.
    return len(names) == 1 and len(shapes[0]) in (1, 2)


@dataclass(frozen=True)
class Embedding:
    """One embedding file: its vectors per text encoder, ``(vectors, width)`` tensors."""

    name: str
    path: Path
    vectors: dict[str, Any]
    sha256: str

    @property
    def short_hash(self) -> str:
        return self.sha256[:SHORT_HASH_LENGTH]

    @property
    def family(self) -> str:
        """``sdxl`` when it has vectors for both SDXL encoders, else ``sd15``."""
        return "sdxl" if CLIP_G in self.vectors else "sd15"

    @property
    def vector_count(self) -> int:
        return int(next(iter(self.vectors.values())).shape[0])


def embedding_family(path: Path) -> tuple[str, int, int]:
    """(family, vectors, width of the first encoder) of an embedding file, from its header alone."""
    header = read_safetensors_header(path)
    keys = [key for key in header if key != "__metadata__"]
    shapes = [header[key]["shape"] for key in keys]
    if not keys or not embedding_keys_kind(keys, shapes):
        raise AtelierError(f"{path.name} is not a textual inversion embedding", field="embedding")
    first = header[CLIP_L]["shape"] if CLIP_L in header else shapes[0]
    vectors = 1 if len(first) == 1 else int(first[0])
    return ("sdxl" if CLIP_G in header else "sd15"), vectors, int(first[-1])


def load_embedding(path: Path, name: str) -> Embedding:
    """Read an embedding file (see the module docstring for the layouts)."""
    from safetensors.torch import load_file

    family_check = embedding_family(path)  # refuses files that are not embeddings, before loading anything
    tensors = load_file(str(path), device="cpu")
    if family_check[0] == "sdxl":
        vectors = {CLIP_L: tensors[CLIP_L], CLIP_G: tensors[CLIP_G]}
    else:
        vectors = {CLIP_L: next(iter(tensors.values()))}
    vectors = {
        key: (value if value.dim() == 2 else value.unsqueeze(0)).float() for key, value in vectors.items()
    }
    count = {value.shape[0] for value in vectors.values()}
    if len(count) != 1 or not 1 <= next(iter(count)) <= MAX_VECTORS:
        raise AtelierError(
            f"embedding {name}: its encoders' vector counts {sorted(count)} must agree and be 1 to {MAX_VECTORS}",
            field="embedding",
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return Embedding(name=name, path=path, vectors=vectors, sha256=digest)


class EmbeddingLibrary(FolderLibrary):
    """The embeddings in a folder, by name: ``<name>.safetensors``. Loaded files are kept by (path, mtime)."""

    field = "embedding"
    label = "embedding"

    def __init__(self, root: Any, *, also: Sequence[Any] = ()) -> None:
        super().__init__(root, also=also)
        self._loaded: dict[tuple[str, float, int], Embedding] = {}

    def name_of(self, path: Path) -> str | None:
        return path.stem if path.is_file() and path.suffix == ".safetensors" else None

    def candidates(self, root: Path, name: str) -> list[Path]:
        return [root / f"{name}.safetensors"]

    def entry(self, name: str) -> Embedding:
        path = self.resolve(name)
        stat = path.stat()
        key = (str(path), stat.st_mtime, stat.st_size)
        if key not in self._loaded:
            self._loaded = {k: v for k, v in self._loaded.items() if k[0] != str(path)}
            self._loaded[key] = load_embedding(path, name)
        return self._loaded[key]

    def used_in(self, texts: Sequence[str]) -> list[Embedding]:
        """The embeddings whose names occur as words in any of ``texts`` (case-insensitive, as CLIP reads)."""
        joined = "\n".join(texts).lower()
        used = []
        for name in self.names():
            if re.search(rf"(?<![0-9a-z]){re.escape(name.lower())}(?![0-9a-z])", joined):
                used.append(self.entry(name))
        return used


class EmbeddingTable:
    """The embeddings of one request for one text encoder: finds their names in token ids, holds the vectors.

    ``encoder_key`` is :data:`CLIP_L` or :data:`CLIP_G`; ``width`` that encoder's hidden size. An embedding
    without vectors of this width is refused when its name is found, naming the model family it was made for.
    """

    def __init__(self, embeddings: Sequence[Embedding], tokenizer: Any, encoder_key: str, width: int) -> None:
        self.vectors: list[Any] = []  # placeholder index -> vector (width,)
        self._by_first_token: dict[int, list[tuple[list[int], Embedding]]] = {}
        self._encoder_key = encoder_key
        self._width = width
        self._placeholders: dict[str, list[int]] = {}
        for embedding in embeddings:
            ids = tokenizer(embedding.name, add_special_tokens=False, truncation=False)["input_ids"]
            if ids:
                self._by_first_token.setdefault(ids[0], []).append((ids, embedding))
        for candidates in self._by_first_token.values():
            candidates.sort(key=lambda item: len(item[0]), reverse=True)  # longest name first, as A1111

    def __bool__(self) -> bool:
        return bool(self._by_first_token)

    def replace(self, ids: list[int]) -> list[int]:
        """``ids`` with every embedding name's tokens replaced by its vectors' placeholder ids."""
        out: list[int] = []
        position = 0
        while position < len(ids):
            match = next(
                (
                    (name_ids, embedding)
                    for name_ids, embedding in self._by_first_token.get(ids[position], [])
                    if ids[position : position + len(name_ids)] == name_ids
                ),
                None,
            )
            if match is None:
                out.append(ids[position])
                position += 1
                continue
            name_ids, embedding = match
            out.extend(self._placeholders_of(embedding))
            position += len(name_ids)
        return out

    def _placeholders_of(self, embedding: Embedding) -> list[int]:
        if embedding.name not in self._placeholders:
            vectors = embedding.vectors.get(self._encoder_key)
            if vectors is None or vectors.shape[-1] != self._width:
                made_for = "SDXL" if embedding.family == "sdxl" else "SD 1.5"
                raise AtelierError(
                    f"embedding {embedding.name} was made for {made_for} and does not fit this model "
                    f"(text encoder width {self._width}); remove its name from the prompt or pick a matching model",
                    field="embedding",
                )
            start = len(self.vectors)
            self.vectors.extend(vectors)
            self._placeholders[embedding.name] = [PLACEHOLDER_BASE + start + i for i in range(len(vectors))]
        return self._placeholders[embedding.name]


@contextlib.contextmanager
def embedding_vectors_in_place(
    text_encoder: Any, input_ids: Any, table: EmbeddingTable | None
) -> Iterator[Any]:
    """Run-time half of the swap: yields ``input_ids`` the encoder can read, and while the block runs the
    token-embedding layer's output holds the embeddings' vectors where the placeholders were.

    The placeholders read as token 0 until the hook overwrites them: never the end token, because CLIP pools
    SDXL's text embedding at the first end token, which must stay where the prompt ends.
    """
    import torch

    placeholders = input_ids >= PLACEHOLDER_BASE
    if table is None or not bool(placeholders.any()):
        yield input_ids
        return
    positions = placeholders.nonzero(as_tuple=False)
    indices = (input_ids[placeholders] - PLACEHOLDER_BASE).tolist()
    safe_ids = torch.where(placeholders, torch.zeros_like(input_ids), input_ids)

    def write_vectors(_module: Any, _args: Any, output: Any) -> Any:
        output = output.clone()
        for (row, column), index in zip(positions.tolist(), indices, strict=True):
            output[row, column] = table.vectors[index].to(device=output.device, dtype=output.dtype)
        return output

    handle = text_encoder.get_input_embeddings().register_forward_hook(write_vectors)
    try:
        yield safe_ids
    finally:
        handle.remove()
