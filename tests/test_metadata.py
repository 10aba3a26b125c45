"""The metadata column store: rows come back exactly as json.loads gave them; filters and distinct values agree
with plain Python over the dicts."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from fashion_search.metadata import MetadataTable, PackedStrings

ODD_ROWS = [
    {"id": "1", "gender": "Men", "year": 2012, "price": 9.5, "usage": None, "sale": True},
    {},
    {"year": "2012", "gender": "Women", "id": "2"},  # another key order, and a str where an int was
    {"id": 3, "price": 1, "sale": 1.0, "usage": False},  # 1, 1.0 and True are == but not the same value
    {"price": -0.0, "zero": 0.0, "big": 10**30, "tiny": 5e-324, "huge": 1.7976931348623157e308},
    {"name": "Café · 東京 👗", "empty": "", "lone": "\ud800", "nested": [1, {"b": [None, 2.5], "a": "x"}]},
    {"nested": {"z": 1, "a": [True]}, "gender": "Men"},
    {},
    {"gender": "Men", "id": "4", "price": 0.0},  # == the -0.0 above
]


def table_and_expected(rows: list[dict]) -> tuple[MetadataTable, list[dict]]:
    """A table read from JSON lines as load_bundle reads them, and the dicts json.loads gives for those lines."""
    lines = [json.dumps(row, ensure_ascii=False) for row in rows]
    return MetadataTable.from_rows(json.loads(line) for line in lines), [json.loads(line) for line in lines]


def typed(row: dict) -> list:
    """A row's items with each value's type, in key order: == alone would take 1 for 1.0 and True, and 0.0 for -0.0."""
    return [(key, type(value), repr(value)) for key, value in row.items()]


def test_rows_come_back_exactly_as_json_loads_gave_them():
    table, expected = table_and_expected(ODD_ROWS)
    assert len(table) == len(expected)
    assert [typed(row) for row in table] == [typed(row) for row in expected]  # iteration
    assert [typed(table[i]) for i in range(len(table))] == [typed(row) for row in expected]  # indexing
    assert table == expected and expected == table and table != expected[:-1]
    assert table[-1] == expected[-1] and table[2:6] == expected[2:6] and table[::-3] == expected[::-3]
    with pytest.raises(IndexError):
        table[len(expected)]
    with pytest.raises(TypeError):
        table["id"]


def test_nan_comes_back_as_a_float_nan():
    table, _ = table_and_expected([{"score": float("nan")}, {"score": 1.5}, {"score": float("nan")}])
    assert [type(row["score"]) for row in table] == [float, float, float]
    assert math.isnan(table[0]["score"]) and math.isnan(table[2]["score"]) and table[1]["score"] == 1.5


def test_every_row_is_a_fresh_dict():
    table, expected = table_and_expected(ODD_ROWS)
    first = table[5]
    first["name"] = "changed"
    first["nested"][1]["b"].append("changed")
    del table[0]["id"]
    assert table[5] == expected[5] and table[0] == expected[0] and list(table)[5] == expected[5]


def test_rows_are_read_once_from_an_iterator():
    rows = iter([{"a": 1}, {"b": 2}, {"a": 1, "b": 3}])
    assert MetadataTable.from_rows(rows) == [{"a": 1}, {"b": 2}, {"a": 1, "b": 3}]
    assert len(MetadataTable.from_rows(iter([]))) == 0 and MetadataTable.from_rows([]).columns == []


def test_columns_and_distinct_values():
    table, expected = table_and_expected(ODD_ROWS)
    assert table.columns == list(dict.fromkeys(key for row in expected for key in row))
    for column in [*table.columns, "absent"]:
        reference = []
        for row in expected:
            if column in row and not any(typed({0: row[column]}) == typed({0: seen}) for seen in reference):
                reference.append(row[column])
        assert [typed({0: v}) for v in table.distinct(column)] == [typed({0: v}) for v in reference], column


def random_rows(rng: random.Random, n: int) -> list[dict]:
    pool = ["Men", "Women", "Unisex", "", "Black", "0", "1", 0, 1, 2, 1.0, 0.5, True, False, None]
    rows = []
    for _ in range(n):
        row = {column: rng.choice(pool) for column in ("gender", "baseColour", "year") if rng.random() < 0.85}
        if rng.random() < 0.3:
            row = dict(reversed(list(row.items())))
        rows.append(row)
    return rows


@pytest.mark.parametrize("seed", range(5))
def test_matching_agrees_with_python_membership(seed):
    rng = random.Random(seed)
    table, rows = table_and_expected(random_rows(rng, 500))
    choices = ["Men", "Women", "", "0", 0, 1, 1.0, True, False, None, "absent value"]
    for _ in range(40):
        column = rng.choice(["gender", "baseColour", "year", "never a key"])
        chosen = set(rng.sample(choices, rng.randint(0, 4)))
        mask = table.matching(column, chosen)
        assert mask.dtype == bool and mask.shape == (len(rows),)
        assert np.flatnonzero(mask).tolist() == [r for r, row in enumerate(rows) if row.get(column) in chosen]


def test_matching_a_nested_value_against_a_set_is_no_match():
    table, _ = table_and_expected([{"tags": ["a"]}, {"tags": "a"}, {}, {"tags": {"a": 1}}])
    assert table.matching("tags", {"a", "['a']"}).tolist() == [False, True, False, False]
    assert table.matching("tags", [["a"], None]).tolist() == [True, False, True, False]  # a list: plain ==


def test_many_distinct_strings_are_packed_and_read_back():
    names = [f"Product {i} · {'é' * (i % 3)}" for i in range(1000)] + ["\ud83d", ""]
    table, expected = table_and_expected([{"id": str(i), "name": name} for i, name in enumerate(names)])
    assert isinstance(table._values["name"], PackedStrings) and isinstance(table._values["id"], PackedStrings)
    assert table == expected and table.distinct("name") == names
    assert np.flatnonzero(table.matching("name", {names[7], "\ud83d"})).tolist() == [7, 1000]


@pytest.mark.parametrize("strings", [["ab", "", "c" * 70], ["é", "", "x", "\ud800", "👗"], []])
def test_packed_strings_behave_as_a_list(strings):
    packed = PackedStrings(strings)
    assert len(packed) == len(strings) and list(packed) == strings and packed == strings and strings == packed
    assert [packed[i] for i in range(-len(strings), len(strings))] == strings + strings
    assert packed[1:] == strings[1:] and packed != strings + ["more"]
    with pytest.raises(IndexError):
        packed[len(strings)]
