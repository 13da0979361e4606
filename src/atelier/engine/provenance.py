"""AI disclosure in every picture Atelier writes: IPTC's digital source type in XMP, and the one image encoder.

Marketplaces (Google Merchant Center) and the EU AI Act (Article 50) ask that a synthetic image says so in a
machine-readable way that survives uploads. The common vocabulary is IPTC's ``Iptc4xmpExt:DigitalSourceType``,
carried in the file's XMP packet:

- ``trainedAlgorithmicMedia`` (:data:`GENERATED`): made by a model from a prompt (txt2img);
- ``compositeWithTrainedAlgorithmicMedia`` (:data:`COMPOSITE`): a picture someone brought is kept in it
  (img2img and inpainting from a photo, product shots, ads and sheets holding AI-made parts);
- ``composite`` (:data:`MIXED`): a composition whose parts declare no AI origin (an ad of plain photos), so
  Atelier makes no AI claim it cannot back.

Where the packet goes, as XMP part 3 places it: PNG ``iTXt`` chunk ``XML:com.adobe.xmp`` (uncompressed), JPEG
APP1 and WebP ``XMP`` chunk (Pillow's ``xmp=``); GIF an ``XMP DataXMP`` application extension and MP4 a top-level
``uuid`` box, which Pillow and ffmpeg do not write, so :func:`with_xmp` adds them to the finished bytes.

A1111's infotext stays where A1111 reads it: the PNG ``parameters`` text chunk, untouched, and in JPEG and WebP
the EXIF UserComment (UTF-16, as A1111 writes it with piexif).

:func:`encode_image` is the one encoder of a picture Atelier hands out: pixels, infotext, XMP, then (with a
signer, :mod:`atelier.engine.credentials`) Content Credentials over those final bytes.
"""

from __future__ import annotations

import io
import os
import re
import struct
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import quoteattr

from PIL import Image, PngImagePlugin

from atelier import __version__
from atelier.engine.infotext import _EXIF_IFD, _EXIF_USER_COMMENT, PARAMETERS_KEY, read_infotext
from atelier.errors import AtelierError
from atelier.files import write_bytes_atomic
from atelier.images import DEFAULT_MAX_PIXELS, open_image

if TYPE_CHECKING:
    from atelier.engine.credentials import ContentSigner

IPTC_SOURCE_TYPES = "http://cv.iptc.org/newscodes/digitalsourcetype/"
GENERATED = IPTC_SOURCE_TYPES + "trainedAlgorithmicMedia"
COMPOSITE = IPTC_SOURCE_TYPES + "compositeWithTrainedAlgorithmicMedia"
MIXED = IPTC_SOURCE_TYPES + "composite"
AI_SOURCE_TYPES = frozenset({GENERATED, COMPOSITE, IPTC_SOURCE_TYPES + "compositeSynthetic"})

# Output formats: the name users give -> (Pillow format, MIME type, file suffix).
OUTPUT_FORMATS = {
    "png": ("PNG", "image/png", ".png"),
    "jpeg": ("JPEG", "image/jpeg", ".jpg"),
    "webp": ("WEBP", "image/webp", ".webp"),
}
DEFAULT_QUALITY = 90  # JPEG and WebP: what marketplaces' image guides ask for (85-95), small enough to upload
XMP_PNG_KEY = "XML:com.adobe.xmp"

_NS_RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
_NS_IPTC_EXT = "http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
_XMP_START = re.compile(rb"<x:x[ma]pmeta\b")
_XMP_END = re.compile(rb"</x:x[ma]pmeta>")
_MP4_XMP_UUID = bytes.fromhex("BE7ACFCB97A942E89C71999491E3AFAC")
# XMP part 3: after the raw packet, 258 bytes that any GIF reader takes for sub-blocks ending the extension.
_GIF_XMP_TRAILER = bytes([1, *range(255, -1, -1), 0])


@dataclass(frozen=True)
class Ingredient:
    """A file that went into a picture, for its Content Credentials: the photo an edit started from
    (``parentOf``) or a material placed in a composition (``componentOf``)."""

    title: str
    data: bytes
    relationship: str = "componentOf"


@dataclass(frozen=True)
class Provenance:
    """What a picture is and what made it: the IPTC digital source type, the ``com.atelier.generation`` record
    (models, LoRAs, ControlNets with their hashes) and the ingredients. ``action`` is what was done to a
    ``parentOf`` ingredient (``c2pa.edited``; ``c2pa.transcoded`` for a format conversion)."""

    source_type: str
    generation: Mapping[str, Any] | None = None
    ingredients: tuple[Ingredient, ...] = ()
    action: str = "c2pa.edited"

    def with_ingredients(self, *ingredients: Ingredient) -> Provenance:
        return replace(self, ingredients=(*self.ingredients, *ingredients))


def xmp_packet(source_type: str) -> bytes:
    """The XMP packet Atelier writes: the IPTC digital source type and the tool that made the file."""
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
        f' <rdf:RDF xmlns:rdf="{_NS_RDF}">\n'
        '  <rdf:Description rdf:about=""\n'
        f'    xmlns:Iptc4xmpExt="{_NS_IPTC_EXT}"\n'
        '    xmlns:xmp="http://ns.adobe.com/xap/1.0/"\n'
        f"    Iptc4xmpExt:DigitalSourceType={quoteattr(source_type)}\n"
        f"    xmp:CreatorTool={quoteattr(f'Atelier {__version__}')}/>\n"
        " </rdf:RDF>\n"
        "</x:xmpmeta>\n"
        '<?xpacket end="w"?>'
    ).encode()


def check_output_format(output_format: str, quality: int | None = None) -> str:
    """``output_format`` as a key of :data:`OUTPUT_FORMATS` ("jpg" accepted), its quality checked."""
    name = output_format.strip().lower()
    name = "jpeg" if name == "jpg" else name
    if name not in OUTPUT_FORMATS:
        raise AtelierError(f"unknown image format {output_format!r}: use png, jpeg or webp", field="format")
    if quality is not None:
        if name == "png":
            raise AtelierError("quality applies to jpeg and webp only (PNG is lossless)", field="quality")
        if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
            raise AtelierError(
                f"quality must be a whole number from 1 to 100, got {quality!r}", field="quality"
            )
    return name


def encode_image(
    image: Image.Image,
    provenance: Provenance,
    *,
    output_format: str = "png",
    quality: int | None = None,
    infotext: str | None = None,
    text: Mapping[str, str] | None = None,
    signer: ContentSigner | None = None,
    title: str | None = None,
) -> bytes:
    """The picture as a file of ``output_format``, carrying its disclosure, and signed when ``signer`` is given.

    ``infotext`` goes where A1111 reads it; ``text`` adds PNG text chunks (ads' and sheets' own records).
    ``title`` names the file in its Content Credentials.
    """
    name = check_output_format(output_format, quality)
    pillow_format, mime, suffix = OUTPUT_FORMATS[name]
    packet = xmp_packet(provenance.source_type)
    buffer = io.BytesIO()
    if name == "png":
        info = PngImagePlugin.PngInfo()
        if infotext is not None:
            info.add_text(PARAMETERS_KEY, infotext)
        for key, value in (text or {}).items():
            if key in (PARAMETERS_KEY, XMP_PNG_KEY):
                raise ValueError(f"text chunk {key!r} is written by encode_image itself")
            info.add_text(key, value)
        info.add_itxt(XMP_PNG_KEY, packet.decode("utf-8"), zip=False)
        image.save(buffer, format=pillow_format, pnginfo=info)
    else:
        if text:
            raise ValueError("text chunks exist in PNG only")
        extra: dict[str, Any] = {}
        if infotext:
            # A1111's layout (piexif's UserComment "unicode"): a character-code prefix, then UTF-16 big-endian.
            exif = Image.Exif()
            exif.get_ifd(_EXIF_IFD)[_EXIF_USER_COMMENT] = b"UNICODE\x00" + infotext.encode("utf-16-be")
            extra["exif"] = exif.tobytes()
        picture = _without_alpha(image) if name == "jpeg" else image
        picture.save(buffer, format=pillow_format, quality=quality or DEFAULT_QUALITY, xmp=packet, **extra)
    data = buffer.getvalue()
    if signer is not None:
        data = signer.sign(data, mime, provenance, title=title or f"image{suffix}")
    return data


def write_image(
    path: str | os.PathLike[str], image: Image.Image, provenance: Provenance, **options: Any
) -> Path:
    """:func:`encode_image` into ``path``, atomically; the format follows the suffix unless given."""
    target = Path(path)
    options.setdefault("output_format", target.suffix.lstrip(".") or "png")
    options.setdefault("title", target.name)
    data = encode_image(image, provenance, **options)
    return write_bytes_atomic(target, data)


def finish_file(
    path: Path, mime: str, provenance: Provenance, *, title: str, signer: ContentSigner | None = None
) -> None:
    """Add the XMP (and with ``signer``, Content Credentials) to a GIF or MP4 another writer just made at
    ``path`` (the temporary file inside :func:`atelier.files.write_atomic`, so readers never see it unmarked)."""
    data = with_xmp(path.read_bytes(), mime, provenance.source_type)
    if signer is not None:
        data = signer.sign(data, mime, provenance, title=title)
    path.write_bytes(data)


def with_xmp(data: bytes, mime: str, source_type: str) -> bytes:
    """GIF or MP4 bytes with Atelier's XMP packet added where XMP part 3 puts it."""
    packet = xmp_packet(source_type)
    if mime == "image/gif":
        if not data.endswith(b";"):
            raise ValueError("not a complete GIF (no trailer byte)")
        extension = b"\x21\xff\x0bXMP DataXMP" + packet + _GIF_XMP_TRAILER
        return data[:-1] + extension + b";"
    if mime == "video/mp4":
        # A top-level box at the end moves no sample: the offsets in moov stay right.
        return data + struct.pack(">I", 8 + 16 + len(packet)) + b"uuid" + _MP4_XMP_UUID + packet
    raise ValueError(f"with_xmp writes GIF and MP4; {mime} is encoded with its XMP by encode_image")


# -- reading ------------------------------------------------------------------------------------------------------


def declared_source_type(packet: bytes | str) -> str | None:
    """The ``Iptc4xmpExt:DigitalSourceType`` of an XMP packet (attribute or element form), if it has one.

    ``packet`` may be a whole file: formats that store the packet as it is (PNG as Atelier and Adobe write it,
    JPEG, WebP, GIF, MP4) are read by finding it in the bytes."""
    data = packet.encode("utf-8") if isinstance(packet, str) else packet
    start, end = _XMP_START.search(data), _XMP_END.search(data)
    if start is None or end is None or end.start() < start.start():
        return None
    text = data[start.start() : end.end()]
    # XMP never needs a DTD; refusing one rules out entity tricks in a file someone sent.
    if b"<!DOCTYPE" in text or b"<!ENTITY" in text:
        return None
    try:
        root = ElementTree.fromstring(text)
    except ElementTree.ParseError:
        return None
    for description in root.iter(f"{{{_NS_RDF}}}Description"):
        value = description.get(f"{{{_NS_IPTC_EXT}}}DigitalSourceType")
        if value:
            return value.strip()
        for element in description.iter(f"{{{_NS_IPTC_EXT}}}DigitalSourceType"):
            value = element.get(f"{{{_NS_RDF}}}resource") or element.text
            if value and value.strip():
                return value.strip()
    return None


def source_type_of(image: Image.Image) -> str | None:
    """What an opened picture says it is: its XMP's digital source type; else :data:`GENERATED` when it holds
    A1111 infotext (an A1111 generation, or an Atelier one from before disclosure); else None (no claim)."""
    packet = image.info.get(XMP_PNG_KEY) or image.info.get("xmp")
    declared = declared_source_type(packet) if isinstance(packet, bytes | str) else None
    if declared:
        return declared
    return GENERATED if read_infotext(image) else None


def combined_source_type(parts: Iterable[str | None]) -> str:
    """The source type of a composition of ``parts``: :data:`COMPOSITE` when any part is AI-made."""
    return COMPOSITE if any(part in AI_SOURCE_TYPES for part in parts) else MIXED


def sniff_mime(data: bytes) -> str | None:
    """The MIME type of image or video bytes from their signature (for ingredients and conversions)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[4:8] == b"ftyp":
        return "video/mp4"
    return None


def _without_alpha(image: Image.Image) -> Image.Image:
    """JPEG has no transparency: transparent parts become white, as on a product page."""
    if image.mode in ("RGB", "L", "CMYK"):
        return image
    if "A" in image.getbands() or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image.convert("RGB")


@dataclass(frozen=True)
class Converted:
    """A stored picture converted for download: its bytes and MIME type."""

    data: bytes
    mime: str


def convert_image(
    data: bytes,
    output_format: str,
    *,
    quality: int | None = None,
    signer: ContentSigner | None = None,
    title: str = "image",
    max_pixels: int | None = None,
    field: str = "image",
) -> Converted:
    """A stored picture as JPEG, WebP or PNG for upload elsewhere, its disclosure and infotext kept.

    The digital source type is the one the file declares (else :func:`source_type_of`'s reading). With a
    signer, the new file's Content Credentials name the original as its parent (``c2pa.transcoded``), so its
    own credentials stay reachable from the copy.
    """
    name = check_output_format(output_format, quality)
    with open_image(data, field=field, max_pixels=max_pixels or DEFAULT_MAX_PIXELS) as opened:
        infotext = read_infotext(opened)
        source_type = source_type_of(opened)
        opened.load()
        picture = opened.copy()
    if source_type is None:
        raise AtelierError(
            "this file carries no AI disclosure or infotext; only outputs convert", field=field
        )
    provenance = Provenance(
        source_type, ingredients=(Ingredient(title, data, "parentOf"),), action="c2pa.transcoded"
    )
    suffix = OUTPUT_FORMATS[name][2]
    converted = encode_image(
        picture,
        provenance,
        output_format=name,
        quality=quality,
        infotext=infotext,
        signer=signer,
        title=f"{Path(title).stem}{suffix}",
    )
    return Converted(converted, OUTPUT_FORMATS[name][1])
