"""Strict JSON in every user file (issue 22, "values that pass and mean nothing"): a key given twice,
NaN / Infinity / a float beyond range and an integer longer than Python parses are one line naming
the key and the file (main kept the last key, took NaN, and raised a ValueError traceback)."""

import json

import pytest

from dysink_deploy.errors import DysinkError
from dysink_deploy.jsonfile import read_json_object

CASES = [
    ('{"shift": 5.0, "shift": 7.0}', "key 'shift' is given twice"),
    ('{"gate_threshold": NaN}', "gate_threshold is the non-finite number NaN"),
    ('{"a": {"b": [1, -Infinity]}}', "a.b[1] is the non-finite number -Infinity"),
    ('{"shift": 1e400}', "shift is the number 1e400"),
    ('{"seed": ' + "9" * 5000 + "}", "seed is an integer of 5000 digits"),
]


@pytest.mark.parametrize("text,message", CASES)
def test_settings_file_refuses_non_strict_json(tmp_path, text, message):
    path = tmp_path / "settings.json"
    path.write_text(text)
    with pytest.raises(DysinkError) as info:
        read_json_object(str(path), "--config")
    line = str(info.value)
    assert "\n" not in line and message in line and str(path) in line


def test_plain_json_still_reads(tmp_path):
    path = tmp_path / "settings.json"
    data = {"shift": 5.0, "steps": [1000, 750], "seed": 2**63 - 1, "flag": True, "none": None}
    path.write_text(json.dumps(data))
    assert read_json_object(str(path), "--config") == data


def test_bundle_manifest_with_a_duplicate_key_is_one_line(tmp_path):
    from dysink_deploy.bundle import Bundle
    (tmp_path / "bundle.json").write_text('{"format_version": 1, "format_version": 2}')
    with pytest.raises(DysinkError, match="key 'format_version' is given twice"):
        Bundle.load(tmp_path)
