"""The catalog CSV (one row per product) and its photos, read with limits and checked per row."""

from __future__ import annotations

import csv
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from atelier.campaign.batch.scenes import MAX_PHOTO_PIXELS
from atelier.errors import AtelierError
from atelier.images import open_image


@dataclass(frozen=True)
class CatalogRow:
    line: int  # in the CSV file, for messages about rows without a usable SKU
    values: dict[str, str]
    extra_values: int = 0  # cells beyond the header's columns

    @property
    def sku(self) -> str:
        return self.values.get("sku", "")


@dataclass(frozen=True)
class Catalog:
    path: Path
    columns: tuple[str, ...]
    rows: tuple[CatalogRow, ...]

    @property
    def folder(self) -> Path:
        return self.path.parent


def load_catalog(path: str | os.PathLike[str]) -> Catalog:
    """Read a catalog CSV (UTF-8, a BOM as Excel writes it is fine); raise AtelierError if it is unusable."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise AtelierError(f"catalog not found: {path}", field="catalog") from None
    except UnicodeDecodeError:
        raise AtelierError(
            f"catalog {path} is not UTF-8 text; save it as CSV UTF-8", field="catalog"
        ) from None
    except OSError as exc:
        raise AtelierError(f"cannot read catalog {path}: {exc}", field="catalog") from None
    try:
        reader = csv.reader(io.StringIO(text, newline=""))
        header = next(reader, None)
        if header is None or not any(cell.strip() for cell in header):
            raise AtelierError(f"catalog {path} is empty; its first line names the columns", field="catalog")
        columns = tuple(cell.strip() for cell in header)
        for number, column in enumerate(columns, start=1):
            if not column:
                raise AtelierError(f"catalog {path}: column {number} has no name", field="catalog")
            if columns.index(column) != number - 1:
                raise AtelierError(f"catalog {path}: column {column!r} appears twice", field="catalog")
        if "sku" not in columns:
            raise AtelierError(
                f"catalog {path} needs a 'sku' column; its columns are: {', '.join(columns)}", field="catalog"
            )
        rows = []
        for cells in reader:
            if not any(cell.strip() for cell in cells):
                continue
            values = {column: "" for column in columns}
            values.update({column: cell.strip() for column, cell in zip(columns, cells, strict=False)})
            extra = sum(1 for cell in cells[len(columns) :] if cell.strip())
            rows.append(CatalogRow(reader.line_num, values, extra))
    except csv.Error as exc:
        raise AtelierError(f"catalog {path} is not valid CSV: {exc}", field="catalog") from None
    if not rows:
        raise AtelierError(f"catalog {path} has no rows", field="catalog")
    return Catalog(path, columns, tuple(rows))


@dataclass(frozen=True)
class PhotoFile:
    """A product photo or mask named by a row, checked once while planning and decoded only to generate."""

    path: Path
    relative: str  # as written in the catalog
    sha256: str
    size: tuple[int, int]

    def open(self, what: str) -> Image.Image:
        data = _read_file(self.path, self.relative, what)
        if hashlib.sha256(data).hexdigest() != self.sha256:
            raise AtelierError(f"{what} {self.relative} changed while the batch ran; run the batch again")
        return decode_photo(data, self.relative, what, load=True)


def _read_file(path: Path, relative: str, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise AtelierError(f"{what} not found: {relative}", field=what) from None
    except OSError as exc:
        raise AtelierError(f"cannot read {what} {relative}: {exc.strerror}", field=what) from None


def decode_photo(data: bytes, relative: str, what: str, *, load: bool) -> Image.Image:
    return open_image(data, field=what, label=f"{what} {relative}", max_pixels=MAX_PHOTO_PIXELS, load=load)


def _photo(catalog: Catalog, relative: str, what: str) -> tuple[PhotoFile, Image.Image]:
    """The checked file, and the image with only its header read (its pixels are decoded to generate).

    The catalog is the user's own file (batches run from the CLI only), so a photo may be anywhere they can
    read: relative to the catalog's folder, or absolute.
    """
    path = (catalog.folder.resolve() / Path(relative).expanduser()).resolve()
    data = _read_file(path, relative, what)
    header = decode_photo(data, relative, what, load=False)
    return PhotoFile(path, relative, hashlib.sha256(data).hexdigest(), header.size), header
