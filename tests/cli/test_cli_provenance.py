"""`atelier provenance FILE`: a missing file is one line (exit 2); a file carrying nothing says so (exit 1).

The full answer (sidecar, disclosure, LoRA rights, who asked) is tested on a studio's output in
tests/service/test_rights_api.py.
"""

from __future__ import annotations

import json

from PIL import Image

from atelier.cli import main


def test_a_missing_file_is_one_line_and_exit_code_2(tmp_path, capsys):
    assert main(["provenance", str(tmp_path / "nope.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: file not found") and err.count("\n") == 1


def test_a_plain_photo_has_no_provenance(tmp_path, capsys):
    photo = tmp_path / "photo.png"
    Image.new("RGB", (8, 8), "white").save(photo)
    assert main(["provenance", str(photo)]) == 1
    assert "no provenance" in capsys.readouterr().out
    assert main(["provenance", str(photo), "--json"]) == 1
    answer = json.loads(capsys.readouterr().out)
    assert answer["found_in"] == [] and answer["asked_by"] is None and answer["loras"] == []
