"""CLIP tokenizers without the hub: built from OpenAI's vocabulary, which ships with Atelier.

Every Stable Diffusion text encoder (SD 1.5's CLIP ViT-L, SDXL's CLIP ViT-L and OpenCLIP ViT-bigG) reads the
same 49,408-token byte-pair vocabulary of OpenAI's CLIP. It is bundled as ``clip/bpe_simple_vocab_16e6.txt.gz``
(MIT licence, ``clip/LICENSE``), the file open_clip and OpenAI's own package ship. From it Atelier builds, the
way OpenAI's ``SimpleTokenizer`` does, the vocabulary (the 256 byte symbols, the same with the end-of-word mark
``</w>``, one token per merge, then ``<|startoftext|>`` and ``<|endoftext|>``) and the first 48,894 merges, and
hands them to transformers' ``CLIPTokenizer``, which applies CLIP's normalisation and splitting rules. The two
Stable Diffusion tokenizers differ only in padding:

- ``clip-l`` (SD 1.5 ``tokenizer``, SDXL ``tokenizer``) pads with ``<|endoftext|>``;
- ``clip-g`` (SDXL ``tokenizer_2``, OpenCLIP's convention) pads with ``!`` (id 0).

A single-file checkpoint carries no tokenizer. Where one is given (a ``<name>.tokenizer/`` folder, or the
Hugging Face cache of the original repository) it is used, since a fine-tuned model could in principle ship its
own; otherwise the bundled one, so a checkpoint from the wild loads offline.
"""

from __future__ import annotations

import functools
import gzip
import os
from pathlib import Path
from typing import Any

from atelier.errors import AtelierError

CLIP_L_REPO = "openai/clip-vit-large-patch14"
CLIP_BIGG_REPO = "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"
BPE_FILE = Path(__file__).parent / "clip" / "bpe_simple_vocab_16e6.txt.gz"
CLIP_VOCAB_SIZE = 49408
CLIP_MAX_LENGTH = 77
START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
# The padding of each Stable Diffusion tokenizer (see the module docstring).
PAD_TOKENS = {"clip-l": END_TOKEN, "clip-g": "!"}
# OpenAI's SimpleTokenizer: 49,152 BPE entries less the 256 byte symbols and the 2 special tokens.
_MERGE_COUNT = 49152 - 256 - 2


def _bytes_to_unicode() -> dict[int, str]:
    # CLIP/GPT-2 byte alphabet: printable bytes map to themselves, the rest to unused code points.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, codes, strict=True)}


@functools.cache
def clip_vocabulary() -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, str], ...]]:
    """CLIP's vocabulary (token, id) and merges, read once from the bundled file. Immutable."""
    lines = gzip.decompress(BPE_FILE.read_bytes()).decode("utf-8").split("\n")
    # The first line is a header; the merges after the first 48,894 were never part of the vocabulary.
    merges = tuple(tuple(line.split()) for line in lines[1 : _MERGE_COUNT + 1])
    if len(merges) != _MERGE_COUNT or any(len(pair) != 2 for pair in merges):
        raise AtelierError(f"{BPE_FILE.name} is damaged: reinstall Atelier", field="tokenizer")
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [symbol + "</w>" for symbol in symbols]
    tokens += ["".join(pair) for pair in merges] + [START_TOKEN, END_TOKEN]
    vocabulary = tuple((token, index) for index, token in enumerate(tokens))
    if len(vocabulary) != CLIP_VOCAB_SIZE:
        raise AtelierError(f"{BPE_FILE.name} is damaged: reinstall Atelier", field="tokenizer")
    return vocabulary, merges  # type: ignore[return-value]


def clip_tokenizer(kind: str = "clip-l") -> Any:
    """A new transformers ``CLIPTokenizer`` of the bundled vocabulary: ``clip-l`` or ``clip-g`` (see above)."""
    from transformers import CLIPTokenizer

    if kind not in PAD_TOKENS:
        raise AtelierError(f"tokenizer kind must be one of {', '.join(PAD_TOKENS)}", field="tokenizer")
    vocabulary, merges = clip_vocabulary()
    return CLIPTokenizer(
        vocab=dict(vocabulary),
        # transformers annotates merges as strings, but hands them to tokenizers' BPE, which takes pairs.
        merges=list(merges),  # type: ignore[arg-type]
        unk_token=END_TOKEN,
        bos_token=START_TOKEN,
        eos_token=END_TOKEN,
        pad_token=PAD_TOKENS[kind],
        model_max_length=CLIP_MAX_LENGTH,
    )


# CLIP's word splitting, as transformers' CLIPTokenizer defines it for the ``tokenizers`` library.
_CLIP_SPLIT = (
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)


def clip_backend() -> Any:
    """The bundled tokenizer as a bare ``tokenizers.Tokenizer``: for counting tokens without transformers.

    ``atelier prompt`` answers without importing transformers or torch; this is the same pipeline transformers'
    CLIPTokenizer builds (NFC, whitespace folded, lowercase; CLIP's split; byte-level BPE with ``</w>``), and
    the tests hold both to the same ids as an independent implementation. No special tokens are added.
    """
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE

    vocabulary, merges = clip_vocabulary()
    backend = Tokenizer(
        BPE(
            vocab=dict(vocabulary),
            merges=list(merges),
            continuing_subword_prefix="",
            end_of_word_suffix="</w>",
            fuse_unk=False,
            unk_token=END_TOKEN,
        )
    )
    backend.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    return backend


def load_tokenizer(source: str | os.PathLike[str], *, what: str = "tokenizer") -> Any:
    """A CLIP tokenizer saved in a local folder (``tokenizer.json``, or ``vocab.json`` + ``merges.txt``)."""
    from transformers import CLIPTokenizer

    path = Path(source)
    if not path.is_dir():
        raise AtelierError(f"{what} folder not found: {path}", field="tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(str(path))
    # transformers returns an almost empty tokenizer for a folder without vocabulary files instead of failing.
    if len(tokenizer) <= 2:
        raise AtelierError(
            f"{what} folder {path} has no vocabulary (vocab.json / tokenizer.json)", field="tokenizer"
        )
    return tokenizer


def cached_tokenizer_folder(repo_id: str) -> Path | None:
    """The Hugging Face cache's snapshot of ``repo_id``'s tokenizer files, if a download left one; never fetches."""
    from huggingface_hub import try_to_load_from_cache

    for filename in ("tokenizer.json", "vocab.json"):
        found = try_to_load_from_cache(repo_id, filename)
        if isinstance(found, str):
            return Path(found).parent
    return None


def tokenizers_for_single_file(arch: str, folder: Path | None) -> dict[str, Any]:
    """The ``tokenizer`` / ``tokenizer_2`` components a single-file checkpoint of ``arch`` needs.

    ``folder`` (a ``<name>.tokenizer/`` folder beside the file, SDXL with a ``tokenizer_2/`` inside) wins, then
    the Hugging Face cache of the original repositories, then the bundled vocabulary.
    """
    components: dict[str, Any] = {}
    if arch != "sdxl-refiner":
        given = folder if folder is not None else cached_tokenizer_folder(CLIP_L_REPO)
        components["tokenizer"] = load_tokenizer(given) if given is not None else clip_tokenizer("clip-l")
    if arch in ("sdxl", "sdxl-refiner"):
        given = None
        if folder is not None:
            given = folder / "tokenizer_2" if (folder / "tokenizer_2").is_dir() else folder
        else:
            given = cached_tokenizer_folder(CLIP_BIGG_REPO)
        if given is not None:
            tokenizer_2 = load_tokenizer(given, what="tokenizer_2")
            tokenizer_2.pad_token = PAD_TOKENS["clip-g"]
        else:
            tokenizer_2 = clip_tokenizer("clip-g")
        components["tokenizer_2"] = tokenizer_2
    return components
