"""Safe extraction of uploaded training zips."""

from __future__ import annotations

import io
import stat
import struct
import warnings
import zipfile
from pathlib import Path

import pytest

from atelier.errors import AtelierError, UnsafeFileError
from atelier.training.archive import extract_zip


def _zip(path: Path, entries: dict[str, bytes], *, compression: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return path


def _assert_nothing_left(tmp_path: Path, dest: Path) -> None:
    assert not dest.exists()
    if dest.parent.exists():
        assert [p.name for p in dest.parent.iterdir() if ".partial-" in p.name] == []


def test_extracts_the_seed_layout_and_skips_macos_clutter(tmp_path: Path) -> None:
    archive = _zip(
        tmp_path / "training_data.zip",
        {
            "./": b"",
            "sample/": b"",
            "sample/1.png": b"png-bytes-1",
            "sample/1.txt": b"photo of wta woman, smiling",
            "sample/.DS_Store": b"junk",
            "__MACOSX/sample/._1.png": b"resource fork",
        },
    )
    dest = extract_zip(archive, tmp_path / "jobs" / "42" / "data")

    assert dest == tmp_path / "jobs" / "42" / "data"
    assert (dest / "sample" / "1.png").read_bytes() == b"png-bytes-1"
    assert (dest / "sample" / "1.txt").read_text() == "photo of wta woman, smiling"
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")) == [
        "sample",
        "sample/1.png",
        "sample/1.txt",
    ]


def test_extracted_files_are_never_executable(tmp_path: Path) -> None:
    info = zipfile.ZipInfo("run.sh")
    info.external_attr = (stat.S_IFREG | 0o755) << 16
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as archive:
        archive.writestr(info, b"#!/bin/sh\n")
    dest = extract_zip(tmp_path / "a.zip", tmp_path / "out")
    assert (dest / "run.sh").stat().st_mode & 0o111 == 0


@pytest.mark.parametrize(
    "name",
    [
        "../evil.txt",
        "sample/../../evil.txt",
        "/etc/evil.txt",
        "C:/evil.txt",
        "c:evil.txt",
        "..\\evil.txt",
        "a\\..\\..\\evil.txt",
    ],
)
def test_entries_escaping_the_folder_are_refused(tmp_path: Path, name: str) -> None:
    archive = _zip(tmp_path / "bad.zip", {"ok.txt": b"fine", name: b"pwned"})
    dest = tmp_path / "inner" / "out"
    with pytest.raises(UnsafeFileError) as excinfo:
        extract_zip(archive, dest)
    assert repr(name) in str(excinfo.value)
    _assert_nothing_left(tmp_path, dest)
    assert not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "inner" / "evil.txt").exists()


def test_backslash_separators_from_windows_tools_are_folders(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "win.zip", {"sample\\1.txt": b"caption"})
    dest = extract_zip(archive, tmp_path / "out")
    assert (dest / "sample" / "1.txt").read_bytes() == b"caption"


def test_symlink_entries_are_refused(tmp_path: Path) -> None:
    link = zipfile.ZipInfo("sample/link.png")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(tmp_path / "link.zip", "w") as archive:
        archive.writestr("sample/1.png", b"data")
        archive.writestr(link, "/etc/passwd")
    dest = tmp_path / "out"
    with pytest.raises(UnsafeFileError, match="link.png.*symbolic link"):
        extract_zip(tmp_path / "link.zip", dest)
    _assert_nothing_left(tmp_path, dest)


def test_declared_size_over_the_limit_is_refused_before_writing(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "big.zip", {"a.bin": b"x" * 6000, "b.bin": b"y" * 6000})
    dest = tmp_path / "out"
    with pytest.raises(UnsafeFileError, match="b.bin"):
        extract_zip(archive, dest, max_total_bytes=10_000)
    _assert_nothing_left(tmp_path, dest)


def test_highly_compressed_entry_is_refused_as_a_bomb(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "bomb.zip", {"zeros.png": bytes(20 * 1024**2)})
    dest = tmp_path / "out"
    with pytest.raises(UnsafeFileError, match="zeros.png.*compression ratio"):
        extract_zip(archive, dest)
    _assert_nothing_left(tmp_path, dest)


def _understate_size(path: Path, name: str, new_size: int) -> None:
    """Rewrite the uncompressed size in both headers of ``name``, as a hostile archive would."""
    data = bytearray(path.read_bytes())
    encoded = name.encode()
    local = data.find(b"PK\x03\x04")
    while local != -1:
        name_length = struct.unpack_from("<H", data, local + 26)[0]
        if data[local + 30 : local + 30 + name_length] == encoded:
            struct.pack_into("<I", data, local + 22, new_size)
        local = data.find(b"PK\x03\x04", local + 4)
    central = data.find(b"PK\x01\x02")
    while central != -1:
        name_length = struct.unpack_from("<H", data, central + 28)[0]
        if data[central + 46 : central + 46 + name_length] == encoded:
            struct.pack_into("<I", data, central + 24, new_size)
        central = data.find(b"PK\x01\x02", central + 4)
    path.write_bytes(bytes(data))


def test_header_that_understates_the_size_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "liar.zip", {"ok.txt": b"fine", "liar.png": bytes(range(256)) * 400})
    _understate_size(archive, "liar.png", 10)
    dest = tmp_path / "out"
    with pytest.raises(AtelierError, match="liar.png"):
        extract_zip(archive, dest)
    _assert_nothing_left(tmp_path, dest)


def test_too_many_entries_are_refused(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "many.zip", {f"{index}.txt": b"c" for index in range(30)})
    with pytest.raises(UnsafeFileError, match="30 entries"):
        extract_zip(archive, tmp_path / "out", max_files=20)


def test_a_file_that_is_not_a_zip_is_a_clear_error(tmp_path: Path) -> None:
    fake = tmp_path / "training_data.zip"
    fake.write_bytes(b"this is a text file, not a zip")
    with pytest.raises(AtelierError, match="training_data.zip is not a valid zip"):
        extract_zip(fake, tmp_path / "out")
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(_zip(tmp_path / "whole.zip", {"a.txt": b"a" * 100}).read_bytes()[:-30])
    with pytest.raises(AtelierError, match="truncated.zip"):
        extract_zip(truncated, tmp_path / "out2")


def test_encrypted_entries_are_refused(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "enc.zip", {"secret.png": b"data"})
    # The standard library cannot encrypt, so set the "encrypted" flag bit in both headers by hand.
    data = bytearray(archive.read_bytes())
    local = data.find(b"PK\x03\x04")
    central = data.find(b"PK\x01\x02")
    data[local + 6] |= 0x1
    data[central + 8] |= 0x1
    archive.write_bytes(bytes(data))
    with pytest.raises(AtelierError, match="secret.png.*encrypted"):
        extract_zip(archive, tmp_path / "out")


def test_duplicate_entries_are_refused(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns about the duplicate name it writes
        archive = _zip(tmp_path / "dup.zip", {"a.txt": b"first"})
        with zipfile.ZipFile(archive, "a") as handle:
            handle.writestr("a.txt", b"second")
    with pytest.raises(UnsafeFileError, match="a.txt.*twice"):
        extract_zip(archive, tmp_path / "out")


def test_destination_with_content_is_left_alone(tmp_path: Path) -> None:
    archive = _zip(tmp_path / "a.zip", {"a.txt": b"new"})
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "keep.txt").write_text("old")
    with pytest.raises(AtelierError, match="not empty"):
        extract_zip(archive, dest)
    assert (dest / "keep.txt").read_text() == "old"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (extract_zip(archive, empty) / "a.txt").read_bytes() == b"new"


def test_data_beyond_the_declared_size_is_refused_while_streaming(tmp_path: Path, monkeypatch) -> None:
    # zipfile itself stops at the declared size; this stands in for a reader that would not.
    archive = _zip(tmp_path / "a.zip", {"small.png": b"0123456789"})
    monkeypatch.setattr(
        zipfile.ZipFile, "open", lambda self, info, *args, **kwargs: io.BytesIO(b"x" * 50_000)
    )
    dest = tmp_path / "out"
    with pytest.raises(UnsafeFileError, match="small.png.*more data than its header declares"):
        extract_zip(archive, dest)
    _assert_nothing_left(tmp_path, dest)
