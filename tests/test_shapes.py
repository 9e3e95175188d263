"""Array shapes: sizes rounded up, centred zero padding and cropping back."""
import numpy as np
import pytest

import shapes
import volumes


def test_padding_makes_sizes_divisible_and_crop_undoes_it():
    volume = np.random.default_rng(0).random((2, 20, 33))
    shape = shapes.padded_shape(volume.shape[1:], 16)
    padding = shapes.padding_to_shape(volume.shape[1:], shape)
    padded = shapes.pad(volume, padding)
    assert shape == (32, 48) and padded.shape == (2, 32, 48)
    assert padding == [(6, 6), (7, 8)]  # centred
    np.testing.assert_array_equal(shapes.crop(padded, padding), volume)


def test_volumes_larger_than_the_target_shape_are_refused():
    with pytest.raises(volumes.DataError, match="do not fit the model's input shape"):
        shapes.padding_to_shape((20, 40), (32, 32))


def test_slabs_cover_an_axis_in_order_in_nearly_equal_pieces():
    pieces = shapes.slabs(10, 4)
    assert pieces == [slice(0, 3), slice(3, 6), slice(6, 8), slice(8, 10)]
    assert shapes.slabs(2, 4) == [slice(0, 1), slice(1, 2)]  # no empty piece
