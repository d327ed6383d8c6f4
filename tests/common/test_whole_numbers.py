"""Ids and counts from request input: ASCII digits within range, anything else refused (None), never a 500."""

import pytest

from common.api import BIGINT_MAX, id_of, whole_number


@pytest.mark.parametrize("raw, expected", [
    ("7", 7), (7, 7), ("9223372036854775807", BIGINT_MAX),
    ("0", None), (0, None), ("-3", None), ("", None), ("7.0", None), (" 7", None), ("1e3", None),
    ("²", None), ("١٢", None), ("9223372036854775808", None), (10**30, None), ("1" * 40, None),
    (True, None), (None, None), ([7], None),
])
def test_an_id_is_ascii_digits_from_one_to_the_largest_bigint(raw, expected):
    assert id_of(raw) == expected


def test_a_whole_number_keeps_to_its_range():
    assert [whole_number(v, 1, 3650) for v in ("1", "3650", "3651", "0", "²")] == [1, 3650, None, None, None]
    assert whole_number("0", 0, 5) == 0
