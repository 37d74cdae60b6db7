"""``.npy`` members decode exactly as ``np.load(allow_pickle=False)`` would, only faster."""

import io

import numpy as np
import pytest

from fmboost.data.shards import decode_array, encode_array, parse_npy_header


def npy_bytes(array: np.ndarray, version: tuple[int, int] | None = None) -> bytes:
    buffer = io.BytesIO()
    if version is None:
        np.save(buffer, array, allow_pickle=True)
    else:
        np.lib.format.write_array(buffer, array, version=version)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "array",
    [
        np.arange(24, dtype=np.float16).reshape(2, 3, 4),
        np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4)),
        np.zeros((0, 4), dtype=np.float64),
    ],
)
def test_decoding_matches_numpy_for_every_layout(array):
    for version in (None, (2, 0)):
        data = npy_bytes(array, version)
        decoded = decode_array(data)
        expected = np.load(io.BytesIO(data), allow_pickle=False)
        assert decoded.dtype == expected.dtype and decoded.shape == expected.shape
        np.testing.assert_array_equal(decoded, expected)


def test_each_distinct_header_is_parsed_once():
    parse_npy_header.cache_clear()
    for seed in range(5):
        decode_array(encode_array(np.random.default_rng(seed).random((4, 8, 8))))
    assert (parse_npy_header.cache_info().misses, parse_npy_header.cache_info().hits) == (1, 4)


def test_object_arrays_and_truncated_data_are_refused():
    with pytest.raises(ValueError, match="allow_pickle"):
        decode_array(npy_bytes(np.array([{"a": 1}], dtype=object)))
    with pytest.raises(ValueError):
        decode_array(encode_array(np.ones((4, 4)))[:-5])
