"""CLIP tokenizers: find a real one locally, or build a small offline one for tiny demo/test models.

A real CLIP vocabulary (49,408 tokens) cannot be created offline, so tiny models carry a small byte-level BPE
vocabulary that follows CLIP's conventions exactly (byte alphabet, ``</w>`` word ends, ``<|startoftext|>`` and
``<|endoftext|>``). That keeps every code path that tokenizes (chunking, padding, weights) honest on tiny models.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from atelier.errors import AtelierError

CLIP_L_REPO = "openai/clip-vit-large-patch14"
CLIP_BIGG_REPO = "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"

# Words that appear in retail prompts and in the seed documents; each becomes (ideally) one token.
_DEMO_WORDS = [
    "a",
    "an",
    "the",
    "of",
    "on",
    "in",
    "with",
    "and",
    "or",
    "at",
    "by",
    "for",
    "to",
    "from",
    "photo",
    "product",
    "model",
    "man",
    "woman",
    "person",
    "people",
    "living",
    "room",
    "wabi",
    "style",
    "light",
    "curtain",
    "indoor",
    "outdoor",
    "warm",
    "interior",
    "design",
    "masterpiece",
    "high",
    "resolution",
    "quality",
    "low",
    "watermark",
    "dark",
    "dirty",
    "messy",
    "forest",
    "scene",
    "raining",
    "foggy",
    "lush",
    "mountain",
    "muddy",
    "trail",
    "majestic",
    "astonishing",
    "hdr",
    "fujifilm",
    "sharp",
    "focus",
    "detailed",
    "yellow",
    "windbreaker",
    "full",
    "body",
    "sport",
    "pants",
    "hiking",
    "boots",
    "handsome",
    "young",
    "normal",
    "eyes",
    "face",
    "detail",
    "smile",
    "nature",
    "skin",
    "realistic",
    "intricate",
    "depth",
    "field",
    "medium",
    "shot",
    "highres",
    "modelshoot",
    "splatter",
    "waterproof",
    "micro",
    "car",
    "sporty",
    "fast",
    "sleek",
    "sexy",
    "aggressive",
    "performance",
    "daytime",
    "futuristic",
    "cityscape",
    "oue",
    "electric",
    "scooter",
    "marker",
    "rendering",
    "concept",
    "art",
    "black",
    "white",
    "red",
    "green",
    "blue",
    "hair",
    "beach",
    "sunglasses",
    "ultra",
    "definition",
    "photorealistic",
    "uhd",
    "crisp",
    "blurry",
    "grainy",
    "artifacts",
    "defects",
    "jpeg",
    "noise",
    "text",
    "words",
    "logo",
    "banner",
    "signature",
    "cropped",
    "background",
    "studio",
    "shelf",
    "bottle",
    "shoe",
    "bag",
    "dress",
    "shirt",
    "jacket",
    "table",
    "wooden",
    "marble",
    "sunlight",
    "shadow",
    "soft",
    "cinematic",
    "lens",
    "bokeh",
    "close",
    "up",
    "portrait",
    "square",
]


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


def build_demo_tokenizer_files(out_dir: str | os.PathLike[str]) -> Path:
    """Write ``vocab.json`` and ``merges.txt`` of a small CLIP-style BPE vocabulary into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    alphabet = list(_bytes_to_unicode().values())
    vocab_tokens = alphabet + [ch + "</w>" for ch in alphabet]
    merges: list[str] = []
    seen = set(vocab_tokens)
    for word in _DEMO_WORDS:
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        current = symbols[0]
        for nxt in symbols[1:]:
            merged = current + nxt
            pair = f"{current} {nxt}"
            if merged not in seen:
                merges.append(pair)
                vocab_tokens.append(merged)
                seen.add(merged)
            current = merged
    vocab_tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(vocab_tokens)}
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return out


def build_demo_tokenizer(out_dir: str | os.PathLike[str], *, pad_token: str = "<|endoftext|>"):
    """Build and save a CLIP tokenizer (transformers format) with the demo vocabulary."""
    from transformers import CLIPTokenizer

    out = build_demo_tokenizer_files(out_dir)
    vocab = json.loads((out / "vocab.json").read_text(encoding="utf-8"))
    merges = (out / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
    tokenizer = CLIPTokenizer(
        vocab=vocab,
        merges=[tuple(m.split(" ")) for m in merges if m],
        pad_token=pad_token,
        model_max_length=77,
    )
    tokenizer.save_pretrained(str(out))
    return tokenizer


def load_tokenizer(
    source: str | os.PathLike[str] | None,
    *,
    repo_id: str = CLIP_L_REPO,
    what: str = "tokenizer",
    expected_folder: Path | None = None,
):
    """Load a CLIP tokenizer from a local folder, else from the Hugging Face cache; never from the network."""
    from transformers import CLIPTokenizer

    if source is None:
        source = _cached_snapshot(repo_id, what, expected_folder)
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


def _cached_snapshot(repo_id: str, what: str, expected_folder: Path | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(
            snapshot_download(
                repo_id,
                local_files_only=True,
                allow_patterns=["tokenizer*", "vocab.json", "merges.txt", "special_tokens_map.json"],
            )
        )
    except (LocalEntryNotFoundError, OSError):
        beside = f"'{expected_folder}'" if expected_folder else "'<checkpoint name>.tokenizer/'"
        raise AtelierError(
            f"no {what} for this single-file checkpoint: it is not in the Hugging Face cache ({repo_id}) and no "
            f"folder was given. Put the tokenizer folder (vocab.json, merges.txt) of a diffusers model next to the "
            f"checkpoint as {beside} (SDXL: with a 'tokenizer_2/' inside), or download it "
            f"once online: huggingface-cli download {repo_id} vocab.json merges.txt tokenizer_config.json "
            f"special_tokens_map.json"
        ) from None
