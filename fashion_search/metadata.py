"""Per-row product metadata held as columns: a few MB for a 44k-row catalogue instead of ~64 MB of dicts.

`MetadataTable` is a read-only sequence of dicts: `table[row]` builds a fresh dict equal to the one `json.loads`
gave for that row (same keys in the same order, same values and value types; a key a row lacks stays absent).
Underneath, each column is an int32 code per row (ABSENT where the row lacks the key) and the list of its distinct
values; each distinct key order is kept once, with an int32 code per row. Filtering and the distinct values of a
column work on the codes, without building any dict.

`PackedStrings` holds many strings as one UTF-8 buffer and offsets: a near-unique column's values (ids, product
names), and the bundle's source digests.
"""

from __future__ import annotations

import json
from array import array
from collections.abc import Collection, Iterable, Iterator, Sequence

import numpy as np

ABSENT = -1  # the code of a row that lacks the column's key
PACK_FROM = 256  # distinct strings from which a column's values are packed into one buffer


class PackedStrings(Sequence):
    """A read-only sequence of str kept as one UTF-8 buffer and int64 offsets: ~1/3 of a list of short str."""

    __slots__ = ("_data", "_offsets")

    def __init__(self, strings: Sequence[str]):
        joined = "".join(strings)
        if joined.isascii():  # one byte per character: the lengths are the str lengths
            self._data = joined.encode("ascii")
            lengths = map(len, strings)
        else:
            encoded = [text.encode("utf-8", "surrogatepass") for text in strings]  # JSON may hold lone surrogates
            self._data = b"".join(encoded)
            lengths = map(len, encoded)
        self._offsets = np.zeros(len(strings) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(lengths, dtype=np.int64, count=len(strings)), out=self._offsets[1:])

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        i = range(len(self))[index]  # the int check, negative indexes and IndexError of a list
        return self._data[self._offsets[i] : self._offsets[i + 1]].decode("utf-8", "surrogatepass")

    def __iter__(self) -> Iterator[str]:
        data, offsets = self._data, self._offsets.tolist()
        for start, end in zip(offsets, offsets[1:]):
            yield data[start:end].decode("utf-8", "surrogatepass")

    def __eq__(self, other) -> bool:
        return _equal_sequences(self, other)

    __hash__ = None

    def __repr__(self) -> str:
        return f"<PackedStrings: {len(self)} strings, {len(self._data)} bytes>"


class _Nested:
    """A JSON list or object value, kept as its JSON text: each row gets a fresh copy, never a shared one."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text


class MetadataTable(Sequence):
    """Rows of metadata (dicts of JSON values) stored as columns; build it with `from_rows`."""

    __slots__ = ("_n", "_codes", "_values", "_orders", "_order_codes")

    def __init__(self, n, codes, values, orders, order_codes):
        self._n: int = n
        self._codes: dict[str, np.ndarray] = codes  # column -> (n,) int32 index into _values[column], or ABSENT
        self._values: dict[str, Sequence] = values  # column -> its distinct values (a _Nested for a list or object)
        self._orders: list[tuple[str, ...]] = orders  # each distinct key order
        self._order_codes: np.ndarray = order_codes  # (n,) int32 index into _orders

    @classmethod
    def from_rows(cls, rows: Iterable[dict]) -> MetadataTable:
        """Encode `rows` one at a time, so a caller can stream them without ever holding a list of dicts."""
        # column -> (codes of the rows that have the key, {value key: code}, distinct values)
        building: dict[str, tuple[array, dict, list]] = {}
        orders: dict[tuple[str, ...], tuple[int, list]] = {}  # key order -> (its code, its columns' building state)
        order_codes = array("i")
        for row in rows:
            order = tuple(row)
            known_order = orders.get(order)
            if known_order is None:
                states = [building.setdefault(column, (array("i"), {}, [])) for column in order]
                known_order = orders[order] = (len(orders), states)
            order_codes.append(known_order[0])
            for (column_codes, known, distinct), value in zip(known_order[1], row.values()):
                key = value if type(value) is str else _key(value)
                code = known.get(key)
                if code is None:
                    code = known[key] = len(distinct)
                    distinct.append(_Nested(key[1]) if type(value) in (list, dict) else value)
                column_codes.append(code)
        n = len(order_codes)
        order_codes = np.frombuffer(order_codes, dtype=np.int32).copy()
        codes, values = {}, {}
        for column, (column_codes, _, distinct) in building.items():
            having = [code for order, (code, _) in orders.items() if column in order]
            codes[column] = np.full(n, ABSENT, dtype=np.int32)
            codes[column][np.isin(order_codes, having)] = np.frombuffer(column_codes, dtype=np.int32)
            many_strings = len(distinct) >= PACK_FROM and all(type(value) is str for value in distinct)
            values[column] = PackedStrings(distinct) if many_strings else distinct
        return cls(n, codes, values, list(orders), order_codes)

    @classmethod
    def of(cls, rows: Iterable[dict]) -> MetadataTable:
        """`rows` itself if it is a table, else a table of it (a Bundle may still be made with a list of dicts)."""
        return rows if isinstance(rows, MetadataTable) else cls.from_rows(rows)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[row] for row in range(*index.indices(self._n))]
        row = range(self._n)[index]  # the int check, negative indexes and IndexError of a list
        values, codes = self._values, self._codes
        return {column: _fresh(values[column][codes[column][row]]) for column in self._orders[self._order_codes[row]]}

    def __iter__(self) -> Iterator[dict]:
        values = self._values
        codes = {column: column_codes.tolist() for column, column_codes in self._codes.items()}
        for row, order in enumerate(self._order_codes.tolist()):
            yield {column: _fresh(values[column][codes[column][row]]) for column in self._orders[order]}

    def __eq__(self, other) -> bool:
        return _equal_sequences(self, other)

    __hash__ = None

    def __repr__(self) -> str:
        return f"<MetadataTable: {self._n} rows, columns {list(self._codes)}>"

    @property
    def columns(self) -> list[str]:
        """Every key that some row has, in order of first appearance."""
        return list(self._codes)

    def distinct(self, column: str) -> list:
        """The distinct values `column` takes in the rows that have it, in order of first appearance ([] if none)."""
        return [_fresh(value) for value in self._values.get(column, ())]

    def matching(self, column: str, chosen: Collection) -> np.ndarray:
        """A boolean mask of the rows where `row.get(column) in chosen`, testing each distinct value once.

        A row that lacks the key counts as None, as with `row.get`. A list or object value counts as not in
        `chosen` where `in` would raise TypeError (a set): equality with any hashable member would say no too.
        """
        distinct = self.distinct(column)
        lookup = np.empty(len(distinct) + 1, dtype=bool)  # indexed by code; the last slot is ABSENT's (-1)
        for code, value in enumerate(distinct):
            lookup[code] = _among(value, chosen)
        lookup[ABSENT] = _among(None, chosen)
        codes = self._codes.get(column)
        return np.full(self._n, lookup[ABSENT]) if codes is None else lookup[codes]


def _key(value) -> tuple:
    """The dict key of a value other than a str: tells apart what == would not (1, 1.0, True; 0.0, -0.0; NaNs)."""
    kind = type(value)
    if kind is list or kind is dict:
        return kind, json.dumps(value, ensure_ascii=False)
    return kind, repr(value)


def _fresh(value):
    return json.loads(value.text) if type(value) is _Nested else value


def _among(value, chosen: Collection) -> bool:
    try:
        return value in chosen
    except TypeError:  # an unhashable value tested against a set
        return False


def _equal_sequences(mine: Sequence, other) -> bool:
    """As a list compares: equal to a list (or another of its kind) with equal items in the same order."""
    if not isinstance(other, (list, type(mine))):
        return NotImplemented
    return len(mine) == len(other) and all(a == b for a, b in zip(mine, other))
