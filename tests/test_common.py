"""The shared helpers of dcase_t6.common: the JSON document contract and the duplicate-finder."""

import pytest

from dcase_t6.common.duplicates import duplicates, first_duplicate
from dcase_t6.common.errors import UserError
from dcase_t6.common.jsonfile import read_json, write_json


def test_read_json_names_the_file_and_the_remedy_for_a_missing_or_malformed_file(tmp_path):
    path = tmp_path / "doc.json"
    with pytest.raises(UserError, match="doc.json: file not found; make it"):
        read_json(path, "make it")
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(UserError, match="doc.json: not JSON .*; make it"):
        read_json(path, "make it")
    write_json({"b": 1, "a": "é"}, path, sort_keys=True)
    assert path.read_text(encoding="utf-8") == '{\n  "a": "é",\n  "b": 1\n}\n'
    assert read_json(path, "make it") == {"a": "é", "b": 1}


def test_duplicates_in_the_order_a_reader_meets_them():
    assert first_duplicate(["a", "b", "c"]) is None and duplicates([]) == []
    found = duplicates(["a", "b", "b", "a", "a"])
    assert [(d.value, d.positions) for d in found] == [("b", (1, 2)), ("a", (0, 3, 4))]
    assert (found[0].first, found[0].second) == (1, 2)
    assert first_duplicate(x for x in "xyzy").value == "y"
