"""Settings, the model registry's naming rules, API keys and untrusted images."""

from __future__ import annotations

import base64
import io
import pickle

import pytest
from PIL import Image

from atelier.cli import main
from atelier.errors import AtelierError, ConflictError, NotFoundError, UnsafeFileError
from atelier.service.config import StudioConfig, is_loopback_host
from atelier.service.database import open_database
from atelier.service.registry import (
    ModelFileInfo,
    ModelRegistry,
    StudioSettings,
    check_model_name,
    inspect_model,
)
from atelier.service.security import AccessPolicy, ApiKeyStore, decode_image, key_from_headers


def test_embedded_defaults_live_in_one_data_folder(tmp_path):
    config = StudioConfig.for_data_dir(tmp_path / "studio")
    assert config.database_url == f"sqlite:///{tmp_path / 'studio' / 'atelier.db'}"
    assert config.storage_url == str(tmp_path / "studio")
    assert config.cache_dir == tmp_path / "studio" / "cache"
    # One generation worker stays warm; training gets a lane of its own.
    assert (config.host, config.port, config.min_workers, config.max_train_workers) == (
        "127.0.0.1",
        7860,
        1,
        1,
    )


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"min_workers": 3, "max_workers": 1}, "min_workers"),
        ({"port": 70000}, "port"),
        ({"lease_seconds": 0}, "lease_seconds"),
        ({"progress_seconds": 40.0}, "progress_seconds"),
        ({"no_such_setting": 1}, "no_such_setting"),
    ],
)
def test_impossible_settings_are_refused(tmp_path, overrides, field):
    with pytest.raises(AtelierError) as refused:
        StudioConfig.for_data_dir(tmp_path, **overrides)
    assert refused.value.field == field


@pytest.mark.parametrize(
    ("host", "loopback"),
    [("127.0.0.1", True), ("localhost", True), ("::1", True), ("0.0.0.0", False), ("192.168.1.4", False)],
)
def test_loopback_hosts(host, loopback):
    assert is_loopback_host(host) is loopback


@pytest.mark.parametrize("name", ["../etc/passwd", "a/b", "a\\b", ".hidden", "x:y", "<x>", "", " padded"])
def test_model_names_cannot_name_folders_or_break_tags(name):
    with pytest.raises(UnsafeFileError):
        check_model_name(name)


def _info(kind: str = "checkpoint", sha: str = "a" * 64) -> ModelFileInfo:
    return ModelFileInfo(kind, "sd15", "sd15", sha, None, 10)


def test_registry_lookups_and_name_conflicts(database_url):
    registry = ModelRegistry(open_database(database_url))
    demo = registry.register(
        name="demo",
        storage_key="models/demo",
        info=_info(sha="d" * 64),
        version="v1",
        source="demo",
        label="demo!",
    )
    real = registry.register(
        name="shoes", storage_key="models/sd/shoes.safetensors", info=_info(), version="v1"
    )
    assert demo.title == "demo (demo!) [dddddddddd]"
    assert real.title == "sd/shoes.safetensors [aaaaaaaaaa]"
    for alias in ("shoes", real.title, "sd/shoes.safetensors", "aaaaaaaaaa", "a" * 64, "shoes [aaaaaaaaaa]"):
        assert registry.find_checkpoint(alias).name == "shoes"
    assert registry.default_checkpoint().name == "shoes"
    assert registry.default_checkpoint(preferred=demo.title).name == "demo"
    with pytest.raises(AtelierError, match="already registered"):
        registry.register(
            name="shoes", storage_key="models/other/shoes.safetensors", info=_info(), version="v1"
        )
    # One name, one model: a LoRA may not take a checkpoint's name (it made "<lora:shoes>" and the checkpoint
    # "shoes" ambiguous, and training wrote it over the checkpoint's file).
    with pytest.raises(ConflictError, match="names are unique across checkpoints and LoRAs"):
        registry.register(
            name="shoes", storage_key="models/loras/shoes.safetensors", info=_info("lora"), version="v1"
        )
    registry.register(
        name="shoes-style",
        storage_key="models/loras/shoes-style.safetensors",
        info=_info("lora"),
        version="v1",
    )
    assert registry.get("shoes-style", "lora").storage_key == "models/loras/shoes-style.safetensors"
    kept = registry.register(
        name="demo", storage_key="models/demo", info=_info(sha="d" * 64), version="v2", keep_source=True
    )
    assert (kept.source, kept.label, kept.version) == ("demo", "demo!", "v2")
    with pytest.raises(NotFoundError) as missing:
        registry.get("boots", "lora")
    assert missing.value.field == "lora" and "shoes" in str(missing.value)
    assert registry.remove("models/demo")
    assert [record.name for record in registry.list("checkpoint")] == ["shoes"]


def test_settings_are_shared_through_the_database(database_url):
    database = open_database(database_url)
    StudioSettings(database).update({"sd_model_checkpoint": "shoes [aaaa]", "CLIP_stop_at_last_layers": 2})
    StudioSettings(database).update({"CLIP_stop_at_last_layers": 1})
    assert StudioSettings(database).all() == {
        "sd_model_checkpoint": "shoes [aaaa]",
        "CLIP_stop_at_last_layers": 1,
    }


def test_pickles_are_refused_without_being_opened(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    for suffix in (".ckpt", ".pt", ".bin", ".pth"):
        path = tmp_path / f"model{suffix}"
        path.write_bytes(pickle.dumps(Exploit()))
        with pytest.raises(UnsafeFileError):
            inspect_model(path)
    assert not marker.exists()


def test_files_that_are_not_models_are_refused(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(
        b"\x10\x00\x00\x00\x00\x00\x00\x00" + b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'
    )
    with pytest.raises(AtelierError):
        inspect_model(junk)


def test_api_keys_are_stored_hashed_and_can_be_revoked(database_url):
    database = open_database(database_url)
    keys = ApiKeyStore(database)
    assert not keys.any_active()
    key, secret = keys.create("marketing")
    assert secret.startswith("atk_") and len(secret) > 40
    with database.connect() as conn:
        stored = [str(value) for row in conn.exec_driver_sql("SELECT * FROM api_keys") for value in row]
    assert secret not in stored
    assert keys.verify(secret).name == "marketing"
    assert keys.verify(secret + "x") is None
    with pytest.raises(AtelierError):
        keys.create("marketing")
    policy = AccessPolicy(keys, always_required=False, cache_seconds=0)
    assert policy.allows(secret) and not policy.allows(None) and not policy.allows("atk_guess")
    keys.revoke("marketing")
    assert keys.verify(secret) is None
    assert policy.allows(None)  # no active key left: open again on loopback
    assert not AccessPolicy(keys, always_required=True).allows(None)


def test_keys_are_read_from_the_usual_headers():
    basic = base64.b64encode(b"webui:atk_secret").decode()
    assert key_from_headers({"authorization": "Bearer atk_secret"}) == "atk_secret"
    assert key_from_headers({"x-api-key": "atk_secret"}) == "atk_secret"
    assert key_from_headers({"authorization": f"Basic {basic}"}) == "atk_secret"
    assert key_from_headers({"authorization": "Basic !!!"}) is None
    assert key_from_headers({}) is None


def test_keys_command_line(tmp_path, capsys):
    data = str(tmp_path / "studio")
    assert main(["keys", "create", "laptop", "--data", data]) == 0
    secret = capsys.readouterr().out.splitlines()[0]
    assert main(["keys", "list", "--data", data, "--json"]) == 0
    listed = capsys.readouterr().out
    assert "laptop" in listed and secret not in listed
    assert main(["keys", "revoke", "laptop", "--data", data]) == 0
    assert main(["keys", "revoke", "nobody", "--data", data]) == 2
    assert "no API key named" in capsys.readouterr().err


def _png(width: int, height: int, mode: str = "1") -> str:
    buffer = io.BytesIO()
    Image.new(mode, (width, height)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_untrusted_images_are_checked_before_decoding():
    assert decode_image("data:image/png;base64," + _png(8, 8, "RGB"), field="init", max_pixels=100).size == (
        8,
        8,
    )
    with pytest.raises(AtelierError, match="pixels") as too_big:
        decode_image(_png(12_000, 12_000), field="init_images", max_pixels=4096 * 4096)
    assert too_big.value.field == "init_images"
    for bad in ("%%%", base64.b64encode(b"not an image").decode(), "", 42):
        with pytest.raises(AtelierError) as refused:
            decode_image(bad, field="mask", max_pixels=100)
        assert refused.value.field == "mask"
