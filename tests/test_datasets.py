"""Tests of latentinv.datasets: procedural images, loaders, patch sampler."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from latentinv.datasets import PatchSampler, load_image, make_channel_image, make_straight_channels


def test_channel_image_seed_density_and_binary():
    a = make_channel_image((200, 150), density=0.3, width=6, random_state=0)
    b = make_channel_image((200, 150), density=0.3, width=6, random_state=0)
    c = make_channel_image((200, 150), density=0.3, width=6, random_state=1)
    assert a.shape == (200, 150)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert set(np.unique(a)) <= {0.0, 1.0}
    # stops as soon as the fraction reaches the target: one channel more at most
    assert 0.3 <= a.mean() < 0.3 + 0.15


def test_channel_image_orientation_and_straight():
    # straight (sinuosity 0), horizontal, no branching: rows are constant
    img = make_channel_image((60, 80), n_channels=1, width=4, sinuosity=0.0, branching=0.0,
                             random_state=2)
    if img.any():
        assert np.all(img == img[:, :1])
    # vertical channels: columns are constant
    img = make_channel_image((60, 80), n_channels=2, width=4, orientation=90.0, sinuosity=0.0,
                             branching=0.0, random_state=3)
    assert np.all(img == img[:1, :])
    # width in cells: one straight horizontal channel is about `width` rows thick
    img = make_channel_image((100, 50), n_channels=20, width=5, sinuosity=0.0, branching=0.0,
                             random_state=4)
    rows = img[:, 0]
    assert rows.sum() % 1 == 0 and rows.sum() >= 5


def test_channel_image_errors():
    with pytest.raises(ValueError, match="make_channel_image: density"):
        make_channel_image((10, 10), density=1.5)
    with pytest.raises(ValueError, match="make_channel_image: shape"):
        make_channel_image((10,))


def test_straight_channels_family():
    X = make_straight_channels(100, (16, 12), 3, random_state=0)
    assert X.shape == (100, 16, 12)
    np.testing.assert_allclose(X.mean(axis=(1, 2)), 3 / 16)
    rows = X[:, :, 0]
    tops = rows.argmax(axis=1)
    np.testing.assert_array_equal(rows.sum(axis=1), 3)
    assert tops.min() >= 0 and tops.max() <= 13 and len(np.unique(tops)) > 5
    np.testing.assert_array_equal(X, make_straight_channels(100, (16, 12), 3, random_state=0))
    with pytest.raises(ValueError, match="width"):
        make_straight_channels(3, (4, 4), 5)


def test_load_image_png_and_npy(tmp_path):
    arr = np.zeros((5, 7), dtype=np.uint8)
    arr[1:3, 2:6] = 255
    arr[4, 0] = 100  # grey below threshold
    Image.fromarray(arr).save(tmp_path / "ti.png")
    img = load_image(tmp_path / "ti.png")
    np.testing.assert_array_equal(img, (arr >= 128).astype(float))
    np.save(tmp_path / "ti.npy", img * 0.5)
    np.testing.assert_array_equal(load_image(tmp_path / "ti.npy"), img * 0.5)
    np.save(tmp_path / "bad.npy", np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="2-D image"):
        load_image(tmp_path / "bad.npy")


def test_patch_sampler_crops_are_subimages():
    rng = np.random.default_rng(0)
    image = rng.random((30, 20)).astype(np.float32)
    sampler = PatchSampler(image, (7, 5), random_state=0)
    which, rows, cols = sampler.sample_corners(50, random_state=1)
    patches = sampler.sample(50, random_state=1)
    assert patches.shape == (50, 7, 5) and patches.dtype == np.float32
    for p, r, c in zip(patches, rows, cols):
        np.testing.assert_array_equal(p, image[r:r + 7, c:c + 5])
    # fresh crops each call, reproducible with a seed
    assert not np.array_equal(sampler.sample(10), sampler.sample(10))
    np.testing.assert_array_equal(sampler.sample(10, random_state=5), sampler.sample(10, random_state=5))
    # every corner, including the last one, is reachable
    assert sampler.n_valid[0] == (30 - 7 + 1) * (20 - 5 + 1)


def test_patch_sampler_errors():
    with pytest.raises(ValueError, match="larger than image"):
        PatchSampler(np.zeros((5, 5)), (6, 2))
    with pytest.raises(ValueError, match="no crop"):
        PatchSampler(np.zeros((5, 5)), (3, 3), exclude=[(0, 0, 5, 5)])


windows = st.tuples(st.integers(-5, 40), st.integers(-5, 30), st.integers(1, 12), st.integers(1, 12))


@settings(max_examples=60, deadline=None)
@given(
    image_shape=st.tuples(st.integers(10, 40), st.integers(8, 30)),
    patch=st.tuples(st.integers(1, 9), st.integers(1, 7)),
    exclude=st.lists(windows, max_size=3),
    seed=st.integers(0, 2**31 - 1),
)
def test_patch_sampler_never_overlaps_exclusion(image_shape, patch, exclude, seed):
    image = np.zeros(image_shape, dtype=np.float32)
    try:
        sampler = PatchSampler([image, image[:, ::-1].copy()], patch, exclude=exclude, random_state=seed)
    except ValueError as err:
        assert "no crop" in str(err)
        return
    which, rows, cols = sampler.sample_corners(200)
    h, w = patch
    assert np.all(rows >= 0) and np.all(cols >= 0)
    assert np.all(rows + h <= image_shape[0]) and np.all(cols + w <= image_shape[1])
    for r0, c0, hw, ww in exclude:
        overlap = (rows < r0 + hw) & (r0 < rows + h) & (cols < c0 + ww) & (c0 < cols + w)
        assert not overlap.any()
    # brute force count of admissible corners
    count = sum(
        1
        for r in range(image_shape[0] - h + 1)
        for c in range(image_shape[1] - w + 1)
        if not any(r < r0 + hw and r0 < r + h and c < c0 + ww and c0 < c + w
                   for r0, c0, hw, ww in exclude)
    )
    assert sampler.n_valid.tolist() == [count, count]


def test_patch_sampler_per_image_windows():
    a, b = np.zeros((10, 10)), np.ones((10, 10))
    sampler = PatchSampler([a, b], (2, 2), exclude=[[(0, 0, 10, 10)], []], random_state=0)
    assert sampler.n_valid.tolist() == [0, 81]
    assert np.all(sampler.sample(20) == 1)
