"""Storage behaviour, each test run on a local folder and on S3 (moto's server; see conftest.storage)."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from atelier.errors import AtelierError, NotFoundError, UnsafeFileError
from atelier.service.storage import BUCKETS, TEMP_PREFIX, LocalStorage, open_storage

UNSAFE_KEYS = [
    "/etc/passwd",
    "../outside.txt",
    "models/../../outside.txt",
    "models/./model.safetensors",
    "models//model.safetensors",
    "models\\model.safetensors",
    "models/model\x00.safetensors",
    "models/line\nbreak.png",
    f"outputs/{TEMP_PREFIX}partial.png",
    "",
]


def test_buckets_are_the_three_top_level_folders():
    assert BUCKETS == ("training-data", "models", "outputs")


def test_put_and_get_bytes(storage):
    storage.put_bytes("outputs/run-1/shoe.png", b"first")
    assert storage.get_bytes("outputs/run-1/shoe.png") == b"first"
    storage.put_bytes("outputs/run-1/shoe.png", b"replaced")
    assert storage.get_bytes("outputs/run-1/shoe.png") == b"replaced"


def test_missing_objects_raise_not_found(storage, tmp_path):
    with pytest.raises(NotFoundError, match="outputs/missing.png"):
        storage.get_bytes("outputs/missing.png")
    with pytest.raises(NotFoundError):
        storage.delete("outputs/missing.png")
    destination = tmp_path / "downloads" / "missing.png"
    with pytest.raises(NotFoundError):
        storage.get_file("outputs/missing.png", destination)
    assert not destination.exists()
    assert os.listdir(destination.parent) == []


def test_put_file_and_get_file(storage, tmp_path):
    source = tmp_path / "lora.safetensors"
    source.write_bytes(os.urandom(300_000))
    storage.put_file("models/lora/shoes.safetensors", source)
    destination = tmp_path / "downloads" / "shoes.safetensors"
    returned = storage.get_file("models/lora/shoes.safetensors", destination)
    assert returned == destination
    assert destination.read_bytes() == source.read_bytes()
    assert os.listdir(destination.parent) == ["shoes.safetensors"]


def test_put_file_of_missing_source_raises_not_found(storage, tmp_path):
    with pytest.raises(NotFoundError, match="does not exist"):
        storage.put_file("models/x.safetensors", tmp_path / "nope.safetensors")


def test_exists_and_delete(storage):
    storage.put_bytes("training-data/shoes/001.png", b"png")
    assert storage.exists("training-data/shoes/001.png")
    assert not storage.exists("training-data/shoes/002.png")
    assert not storage.exists("training-data/shoes")
    storage.delete("training-data/shoes/001.png")
    assert not storage.exists("training-data/shoes/001.png")
    assert storage.list("training-data") == []


def test_list_returns_objects_under_a_folder_sorted_by_key(storage):
    before = datetime.now(UTC) - timedelta(seconds=5)
    storage.put_bytes("outputs/b/2.png", b"22")
    storage.put_bytes("outputs/a.png", b"1")
    storage.put_bytes("outputs/b/1.png", b"333")
    storage.put_bytes("models/base.safetensors", b"model")
    listed = storage.list("outputs")
    assert [(item.key, item.size) for item in listed] == [
        ("outputs/a.png", 1),
        ("outputs/b/1.png", 3),
        ("outputs/b/2.png", 2),
    ]
    for item in listed:
        assert item.mtime.tzinfo is not None
        assert before <= item.mtime <= datetime.now(UTC) + timedelta(seconds=5)
    assert [item.key for item in storage.list("outputs/b/")] == ["outputs/b/1.png", "outputs/b/2.png"]
    assert [item.key for item in storage.list("")] == [
        "models/base.safetensors",
        "outputs/a.png",
        "outputs/b/1.png",
        "outputs/b/2.png",
    ]
    assert storage.list("training-data") == []
    assert storage.list("outputs/nothing-here") == []


def test_object_version_changes_when_content_is_replaced(storage):
    storage.put_bytes("training-data/shoes/001.png", b"v1")
    (first,) = storage.list("training-data/shoes")
    storage.put_bytes("training-data/shoes/001.png", b"version two")
    (second,) = storage.list("training-data/shoes")
    assert first.version != second.version
    (again,) = storage.list("training-data/shoes")
    assert again.version == second.version


@pytest.mark.parametrize("key", UNSAFE_KEYS)
def test_unsafe_keys_are_refused_by_every_operation(storage, tmp_path, key):
    operations = [
        lambda: storage.put_bytes(key, b"x"),
        lambda: storage.get_bytes(key),
        lambda: storage.get_file(key, tmp_path / "out"),
        lambda: storage.exists(key),
        lambda: storage.delete(key),
        lambda: storage.local_path(key),
        lambda: storage.url_for(key),
    ]
    for operation in operations:
        with pytest.raises(UnsafeFileError):
            operation()
    with pytest.raises(UnsafeFileError):
        storage.list(key or "/")
    assert storage.list("") == []


@pytest.mark.parametrize("key", ["secrets/key.txt", "models", "outputs/"])
def test_keys_outside_a_bucket_file_are_refused(storage, key):
    with pytest.raises(AtelierError) as caught:
        storage.put_bytes(key, b"x")
    assert caught.value.field == "key"


def test_local_path_is_the_real_file_for_local_storage_only(storage):
    storage.put_bytes("models/base.safetensors", b"weights")
    path = storage.local_path("models/base.safetensors")
    if isinstance(storage, LocalStorage):
        assert path.read_bytes() == b"weights"
        assert storage.url_for("models/base.safetensors") == path.as_uri()
    else:
        assert path is None
        assert storage.url_for("models/base.safetensors").startswith("s3://atelier-")
        assert storage.url_for("models/base.safetensors").endswith("/studio/models/base.safetensors")


def test_local_writes_leave_no_temporary_files(tmp_path):
    storage = open_storage(str(tmp_path / "storage"))
    storage.put_bytes("outputs/run/a.png", b"a")
    source = tmp_path / "b.png"
    source.write_bytes(b"b")
    storage.put_file("outputs/run/b.png", source)
    assert sorted(os.listdir(tmp_path / "storage" / "outputs" / "run")) == ["a.png", "b.png"]


def test_local_list_ignores_temporary_files_of_writes_in_progress(tmp_path):
    storage = open_storage(str(tmp_path / "storage"))
    storage.put_bytes("training-data/shoes/001.png", b"done")
    (tmp_path / "storage" / "training-data" / "shoes" / f"{TEMP_PREFIX}002.png").write_bytes(b"half")
    assert [item.key for item in storage.list("training-data")] == ["training-data/shoes/001.png"]


def test_local_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    storage = open_storage(str(tmp_path / "storage"))
    storage.put_bytes("models/base.safetensors", b"old weights")

    def refuse_rename(source, destination):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse_rename)
    with pytest.raises(OSError, match="No space left"):
        storage.put_bytes("models/base.safetensors", b"new weights")
    monkeypatch.undo()
    assert storage.get_bytes("models/base.safetensors") == b"old weights"
    assert os.listdir(tmp_path / "storage" / "models") == ["base.safetensors"]


def test_local_symlink_leading_outside_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"secret")
    storage = open_storage(str(tmp_path / "storage"))
    (tmp_path / "storage" / "outputs").mkdir()
    (tmp_path / "storage" / "outputs" / "link").symlink_to(outside)
    with pytest.raises(UnsafeFileError, match="outside"):
        storage.get_bytes("outputs/link/secret.txt")
    with pytest.raises(UnsafeFileError):
        storage.put_bytes("outputs/link/planted.txt", b"x")
    assert not (outside / "planted.txt").exists()


def test_open_storage_accepts_file_urls_and_plain_paths(tmp_path):
    folder = tmp_path / "product shots"
    by_url = open_storage(folder.as_uri())
    by_url.put_bytes("outputs/a.png", b"a")
    by_path = open_storage(str(folder))
    assert by_path.get_bytes("outputs/a.png") == b"a"
    assert by_path.local_path("outputs/a.png") == (folder / "outputs" / "a.png").resolve()
    assert open_storage(f"file://localhost{folder.as_posix()}").get_bytes("outputs/a.png") == b"a"


@pytest.mark.parametrize(
    ("url", "options"),
    [
        ("", {}),
        ("gs://bucket/prefix", {}),
        ("file://relative/path", {}),
        ("s3://", {}),
        ("/srv/atelier", {"endpoint_url": "http://127.0.0.1:9000"}),
    ],
)
def test_open_storage_refuses_bad_urls(url, options, tmp_path):
    with pytest.raises(AtelierError) as caught:
        open_storage(url, **options)
    assert caught.value.field == "url"


def test_s3_objects_are_visible_to_a_second_client(s3_storage, s3_endpoint):
    other = open_storage(f"s3://{s3_storage.root}", endpoint_url=s3_endpoint)
    assert other.list("outputs") == []
    s3_storage.put_bytes("outputs/new.png", b"new")
    assert [item.key for item in other.list("outputs")] == ["outputs/new.png"]
    assert other.list("outputs")[0].etag


def test_get_file_replaces_an_existing_download(storage, tmp_path):
    storage.put_bytes("outputs/a.png", b"fresh")
    destination = Path(tmp_path / "a.png")
    destination.write_bytes(b"stale")
    storage.get_file("outputs/a.png", destination)
    assert destination.read_bytes() == b"fresh"
