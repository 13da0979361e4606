"""The training rights record: rights.toml checked, found in folders and zips, written into the LoRA's metadata."""

from __future__ import annotations

import datetime as dt
import json
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from atelier.cli import main
from atelier.errors import AtelierError
from atelier.training import RightsRecord, find_rights, parse_rights, read_rights
from atelier.training.config import TrainConfig
from atelier.training.lora_files import RunInfo, kohya_metadata, save_kohya_lora, to_kohya_state_dict

PEOPLE = """
owner = "Acme Retail GmbH"
depicts_people = true
notes = "shoot of 2026-01-30"

[[consent]]
person = "Jane Doe"
reference = "MR-2026-014"
date = 2026-02-02
"""
PEOPLE_WITHOUT_CONSENT = 'owner = "Acme Retail GmbH"\ndepicts_people = true\n'
PACKSHOTS = 'owner = "Acme Retail GmbH"\ndepicts_people = false\n'


def _write(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "rights.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_rights_file_with_consent_is_read_with_its_dates(tmp_path: Path) -> None:
    record = read_rights(_write(tmp_path, PEOPLE))
    assert record.owner == "Acme Retail GmbH" and record.depicts_people
    assert record.consent[0].person == "Jane Doe" and record.consent[0].date == dt.date(2026, 2, 2)
    assert record.to_dict() == {
        "owner": "Acme Retail GmbH",
        "depicts_people": True,
        "consent": [{"person": "Jane Doe", "reference": "MR-2026-014", "date": "2026-02-02"}],
        "notes": "shoot of 2026-01-30",
        "source": "rights.toml",
    }
    # The form stored in a job's payload reads back to the same record.
    assert RightsRecord.from_dict(record.to_dict(), where="job") == record


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"owner": "Acme", "depicts_people": True}, "rights.consent"),
        ({"owner": "Acme", "depicts_people": True, "consent": []}, "rights.consent"),
        ({"depicts_people": False}, "rights.owner"),
        ({"owner": "  ", "depicts_people": False}, "rights.owner"),
        ({"owner": "Acme", "depicts_people": "no"}, "rights.depicts_people"),
        ({"owner": "Acme", "depicts_people": False, "ownr": "x"}, "rights.ownr"),
        (
            {"owner": "Acme", "depicts_people": True, "consent": [{"person": "J", "reference": "R"}]},
            "rights.consent[0].date",
        ),
        (
            {
                "owner": "Acme",
                "depicts_people": True,
                "consent": [{"person": "J", "reference": "R", "date": "2026-13-01"}],
            },
            "rights.consent[0].date",
        ),
        (
            {"owner": "Acme", "depicts_people": True, "consent": [{"person": "J", "date": "2026-01-01"}]},
            "rights.consent[0].reference",
        ),
        (
            {
                "owner": "Acme",
                "depicts_people": True,
                "consent": [{"person": "J", "reference": "R", "date": "2999-01-01"}],
            },
            "rights.consent[0].date",
        ),
    ],
)
def test_a_bad_rights_record_is_one_error_naming_the_field(data: dict, field: str) -> None:
    with pytest.raises(AtelierError) as caught:
        parse_rights(data, where="rights.toml")
    assert caught.value.field == field
    assert "\n" not in str(caught.value)


def test_rights_toml_is_found_at_the_root_or_in_the_one_top_folder(tmp_path: Path) -> None:
    _write(tmp_path / "flat", PACKSHOTS)
    assert find_rights(tmp_path / "flat").owner == "Acme Retail GmbH"
    _write(tmp_path / "wrapped" / "parka", PEOPLE)
    assert find_rights(tmp_path / "wrapped").depicts_people
    (tmp_path / "none").mkdir()
    assert find_rights(tmp_path / "none") is None

    archive = tmp_path / "parka.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("parka/0.png", b"not read here")
        handle.writestr("parka/rights.toml", PEOPLE)
    found = find_rights(archive)
    assert found.consent[0].reference == "MR-2026-014" and found.source == "rights.toml in parka.zip"

    refused = tmp_path / "refused.zip"
    with zipfile.ZipFile(refused, "w") as handle:
        handle.writestr("rights.toml", PEOPLE_WITHOUT_CONSENT)
    with pytest.raises(AtelierError) as caught:
        find_rights(refused)
    assert caught.value.field == "rights.consent"


def test_the_record_is_written_into_the_lora_metadata(tmp_path: Path) -> None:
    record = read_rights(_write(tmp_path, PEOPLE))
    run = RunInfo(
        family="sd15",
        base_model_name="base.safetensors",
        base_model_hash=None,
        resolution=(64, 64),
        num_train_images=4,
        num_reg_images=0,
        num_batches_per_epoch=2,
        num_epochs=1,
        max_train_steps=2,
        total_batch_size=2,
        seed=1,
        optimizer="torch.optim.AdamW",
        mixed_precision="no",
        session_id=1,
        training_started_at=1_700_000_000.0,
    )
    module = "down_blocks.0.attentions.0.proj_in"
    tensors = to_kohya_state_dict(
        family="sd15",
        unet={f"{module}.lora_A.weight": torch.randn(4, 8), f"{module}.lora_B.weight": torch.randn(8, 4)},
        text_encoders=[None],
        alpha=4.0,
        layers_per_block=2,
    )
    config = TrainConfig(output_name="parka")
    path = save_kohya_lora(
        tmp_path / "parka.safetensors",
        tensors,
        kohya_metadata(config, replace(run, rights=record), epoch=1, steps=2),
    )
    with safe_open(str(path), framework="pt") as handle:
        stored = handle.metadata()
    assert json.loads(stored["atelier.rights"]) == record.to_dict()
    assert "atelier.rights" not in kohya_metadata(config, run, epoch=1, steps=2)


def test_the_cli_refuses_training_people_without_consent_in_one_line(tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    _write(data, PEOPLE_WITHOUT_CONSENT)
    code = main(["train", str(data), "--base", str(tmp_path / "base.safetensors")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "consent" in err
    rights = _write(tmp_path / "elsewhere", "owner = 1\n")
    code = main(["train", str(data), "--base", str(tmp_path / "base.safetensors"), "--rights", str(rights)])
    assert code == 2 and "rights.owner" in capsys.readouterr().err
