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


def _runs(column):
    """(start, length) of the runs of ones of a 0/1 column."""
    padded = np.concatenate([[0], column.astype(int), [0]])
    edges = np.flatnonzero(np.diff(padded))
    return [(int(a), int(b - a)) for a, b in zip(edges[::2], edges[1::2])]


def test_straight_horizontal_channel_rows_are_constant():
    # straight (sinuosity 0), horizontal, no branching: every column is the same
    img = make_channel_image((60, 80), n_channels=1, width=5, sinuosity=0.0, branching=0.0,
                             random_state=0)
    assert 0 < img.sum() < img.size                  # not an empty (or full) image
    assert np.all(img == img[:, :1])


def test_straight_vertical_channels_columns_are_constant():
    img = make_channel_image((60, 80), n_channels=2, width=4, orientation=90.0, sinuosity=0.0,
                             branching=0.0, random_state=3)
    assert 0 < img.sum() < img.size
    assert np.all(img == img[:1, :])


@pytest.mark.parametrize("width", [3, 5, 7])
def test_straight_channel_is_width_cells_thick(width):
    """One straight horizontal channel of odd width w: one run of exactly w rows in every column
    (fewer only where the channel is cut by the top or bottom edge)."""
    n_rows = 100
    interior = 0
    for seed in range(12):
        img = make_channel_image((n_rows, 50), n_channels=1, width=width, sinuosity=0.0,
                                 branching=0.0, random_state=seed)
        if not img.any():                           # the line was drawn outside the image
            continue
        runs = _runs(img[:, 0])
        assert len(runs) == 1, (seed, runs)
        start, length = runs[0]
        if 0 < start and start + length < n_rows:
            assert length == width, (seed, runs)
            interior += 1
        else:
            assert length <= width
    assert interior >= 5                            # the check above ran on enough images


@pytest.mark.parametrize("width, cells", [(1, 1), (2, 3), (2.5, 3), (3.9, 3), (4, 5), (8, 9), (8.9, 9), (10, 11)])
def test_straight_channel_thickness_of_any_width_is_as_documented(width, cells):
    """The docstring said "dilated to ``width`` cells"; a straight channel is 2 * floor(width / 2) + 1 cells
    thick (the default width 8 gives 9): documented, and pinned here."""
    from latentinv.metrics import channel_widths

    seen = set()
    for seed in range(6):
        img = make_channel_image((100, 40), n_channels=1, width=width, sinuosity=0.0, branching=0.0,
                                 random_state=seed)
        seen |= set(channel_widths(img, "depth").tolist())       # runs off the top or bottom edge left out
    assert seen == {cells}


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


@pytest.mark.parametrize("threshold", [128, 1.5, -0.1, float("nan"), float("inf"), "0.5", True])
def test_load_image_refuses_a_threshold_outside_the_grey_levels(tmp_path, threshold):
    """Grey levels are in [0, 1]: ``threshold=128`` (a 0-255 habit) made every pixel background, and NaN
    too, without a word."""
    Image.fromarray(np.array([[0, 127, 128, 255]], dtype=np.uint8)).save(tmp_path / "g.png")
    with pytest.raises(ValueError, match=r"load_image: threshold must be None or a grey level in \[0, 1\] "
                                         r"\(0-255 levels / 255\); got "):
        load_image(tmp_path / "g.png", threshold=threshold)
    np.testing.assert_array_equal(load_image(tmp_path / "g.png", threshold=np.float32(0.5)), [[0, 0, 1, 1]])
    np.testing.assert_array_equal(load_image(tmp_path / "g.png", threshold=1), [[0, 0, 0, 1]])


def test_load_image_warns_when_the_threshold_leaves_one_value(tmp_path):
    """A 0/1 mask saved as an 8-bit PNG has grey levels 0 and 1/255: thresholded at 0.5 it was an image
    without channel, returned silently (and trained on). It warns, naming the grey levels and the way out;
    an image of one grey level (all background) does not."""
    mask = np.zeros((4, 6), dtype=np.uint8)
    mask[1:3] = 1
    Image.fromarray(mask).save(tmp_path / "mask.png")
    with pytest.warns(UserWarning, match=r"load_image: thresholded at 0\.5, every pixel of .*mask\.png' is 0 "
                                         r"\(grey levels 0 to 0\.003922\).*0/1 mask.*threshold=1/255"):
        img = load_image(tmp_path / "mask.png")
    assert not img.any()
    np.testing.assert_array_equal(load_image(tmp_path / "mask.png", threshold=1 / 255), mask)
    Image.fromarray(np.zeros((4, 6), dtype=np.uint8)).save(tmp_path / "blank.png")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not load_image(tmp_path / "blank.png").any()
        assert load_image(tmp_path / "mask.png", threshold=None).max() == pytest.approx(1 / 255)


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


def test_patch_sampler_keeps_its_own_copy():
    """The sampler kept a float32 image as given: changing the array afterwards (a NaN in it, or another
    image written into the same buffer) changed the training crops past the constructor's checks."""
    image = np.random.default_rng(0).random((30, 20)).astype(np.float32)
    sampler = PatchSampler(image, (7, 5), random_state=0)
    before = sampler.sample(20, random_state=1)
    image[:] = np.nan
    np.testing.assert_array_equal(sampler.sample(20, random_state=1), before)


def test_patch_sampler_errors():
    with pytest.raises(ValueError, match="larger than image"):
        PatchSampler(np.zeros((5, 5)), (6, 2))
    with pytest.raises(ValueError, match="no crop"):
        PatchSampler(np.zeros((5, 5)), (3, 3), exclude=[(0, 0, 5, 5)])


def test_patch_sampler_names_the_shape_of_an_image_that_is_not_2d():
    # a 1-D array was iterated into one 0-D "image" per value, and the error listed every one of
    # their shapes (2500 "()" for a row of the paper's image); now one sentence with the shape
    with pytest.raises(ValueError, match=r"images must be a 2-D array \(n_rows, n_cols\), a stack .* got an "
                                         r"array of shape \(2500,\)\.$"):
        PatchSampler(np.zeros(2500), (5, 5))
    with pytest.raises(ValueError, match=r"images must be a 2-D array .* got an array of shape \(1, 2, 30, 30\)"):
        PatchSampler(np.zeros((1, 2, 30, 30)), (5, 5))
    with pytest.raises(ValueError, match=r"images must be 2-D arrays \(n_rows, n_cols\); got 1 of 2 that are "
                                         r"not, the first \(image 1\) of shape \(30,\)\.$"):
        PatchSampler([np.zeros((30, 30)), np.zeros(30)], (5, 5))
    with pytest.raises(ValueError, match="got no image"):
        PatchSampler([], (5, 5))


@st.composite
def sampler_case(draw):
    """An image shape, a patch shape that fits, and up to 3 exclusion windows inside the image."""
    n_rows, n_cols = draw(st.integers(6, 30)), draw(st.integers(6, 24))
    patch = (draw(st.integers(1, min(9, n_rows))), draw(st.integers(1, min(7, n_cols))))
    windows = []
    for _ in range(draw(st.integers(0, 3))):
        r0, c0 = draw(st.integers(0, n_rows - 1)), draw(st.integers(0, n_cols - 1))
        windows.append((r0, c0, draw(st.integers(1, n_rows - r0)), draw(st.integers(1, n_cols - c0))))
    return (n_rows, n_cols), patch, windows


@settings(max_examples=80, deadline=None)
@given(case=sampler_case(), seed=st.integers(0, 2**31 - 1))
def test_patch_sampler_excludes_exactly_the_overlapping_crops(case, seed):
    """Admissible corners == a brute force over every crop, overlap tested pixel by pixel."""
    image_shape, (h, w), exclude = case
    held_out = np.zeros(image_shape, dtype=bool)        # pixels of the exclusion windows
    for r0, c0, hw, ww in exclude:
        held_out[r0:r0 + hw, c0:c0 + ww] = True
    expected = {(r, c)
                for r in range(image_shape[0] - h + 1)
                for c in range(image_shape[1] - w + 1)
                if not held_out[r:r + h, c:c + w].any()}
    image = np.zeros(image_shape, dtype=np.float32)
    if not expected:
        with pytest.raises(ValueError, match="no crop"):
            PatchSampler(image, (h, w), exclude=exclude)
        return
    sampler = PatchSampler([image, image[:, ::-1].copy()], (h, w), exclude=exclude, random_state=seed)
    for i in (0, 1):
        rows, cols = sampler.admissible_corners(i)
        assert set(zip(rows.tolist(), cols.tolist())) == expected
        assert len(rows) == len(expected)               # no corner listed twice
    assert sampler.n_valid.tolist() == [len(expected)] * 2
    _, rows, cols = sampler.sample_corners(200)
    assert set(zip(rows.tolist(), cols.tolist())) <= expected


@settings(max_examples=60, deadline=None)
@given(image_shape=st.tuples(st.integers(5, 30), st.integers(5, 30)),
       window=st.tuples(st.integers(-5, 35), st.integers(-5, 35), st.integers(1, 12), st.integers(1, 12)))
def test_patch_sampler_rejects_windows_outside_the_image(image_shape, window):
    r0, c0, hw, ww = window
    inside = r0 >= 0 and c0 >= 0 and r0 + hw <= image_shape[0] and c0 + ww <= image_shape[1]
    image = np.zeros(image_shape)
    if inside:
        PatchSampler(image, (1, 1), exclude=[window] if hw * ww < image.size else [])
    else:
        with pytest.raises(ValueError, match=r"PatchSampler: exclusion window .* lies outside image 0 "
                                             rf"of shape \({image_shape[0]}, {image_shape[1]}\)"):
            PatchSampler(image, (1, 1), exclude=[window])


def test_patch_sampler_rejects_malformed_windows():
    image = np.zeros((20, 20))
    with pytest.raises(ValueError, match=r"must have 4 entries .* got \(0, 0, 5\) with 3"):
        PatchSampler(image, (3, 3), exclude=[(0, 0, 5)])
    with pytest.raises(ValueError, match=r"must have 4 entries .* with 5"):
        PatchSampler(image, (3, 3), exclude=[(0, 0, 5, 5, 1)])
    with pytest.raises(ValueError, match="must be integers"):
        PatchSampler(image, (3, 3), exclude=[(0, 0, 2.5, 3)])
    with pytest.raises(ValueError, match="sizes must be >= 1"):
        PatchSampler(image, (3, 3), exclude=[(0, 0, 0, 3)])
    with pytest.raises(ValueError, match="one list of windows per image"):
        PatchSampler([image, image], (3, 3), exclude=[[(0, 0, 2, 2)], [], []])
    with pytest.raises(ValueError, match="image_index must be in"):
        PatchSampler(image, (3, 3)).admissible_corners(1)


def test_patch_sampler_draws_every_admissible_corner():
    """The draws cover the admissible corners, the last one included, and only them."""
    sampler = PatchSampler(np.zeros((5, 6)), (3, 3), exclude=[(0, 0, 1, 1)], random_state=0)
    rows, cols = sampler.admissible_corners()
    admissible = set(zip(rows.tolist(), cols.tolist()))
    assert len(admissible) == 3 * 4 - 1 and (2, 3) in admissible
    _, r, c = sampler.sample_corners(2000)
    assert set(zip(r.tolist(), c.tolist())) == admissible


def test_patch_sampler_per_image_windows():
    a, b = np.zeros((10, 10)), np.ones((10, 10))
    sampler = PatchSampler([a, b], (2, 2), exclude=[[(0, 0, 10, 10)], []], random_state=0)
    assert sampler.n_valid.tolist() == [0, 81]
    assert np.all(sampler.sample(20) == 1)


# -- the bundled training image ---------------------------------------------------------------------
_SHARED = __import__("pathlib").Path(__file__).resolve().parents[2] / "shared" / "data"


def test_bundled_training_image_is_the_papers():
    """2500 x 2500, binary; equal pixel for pixel to the paper's PNG where that is beside the repository;
    the license ships beside it."""
    from importlib.resources import files

    from latentinv.datasets import load_channels_ti

    ti = load_channels_ti()
    assert ti.shape == (2500, 2500) and ti.dtype == np.float64
    assert set(np.unique(ti)) == {0.0, 1.0}
    assert "MIT License" in (files("latentinv") / "data" / "channels_ti" / "LICENSE.txt").read_text()
    if not (_SHARED / "channels_ti.png").is_file():
        pytest.skip("../shared/data/channels_ti.png absent: the comparison with the paper's file is skipped")
    np.testing.assert_array_equal(ti, load_image(_SHARED / "channels_ti.png"))


@pytest.mark.parametrize("name", ["mc1", "mc2", "mc3"])
def test_paper_truths_are_crops_of_the_bundled_image(name):
    from latentinv.datasets import PAPER_TRUTH_WINDOWS, load_paper_truth

    truth = load_paper_truth(name)
    assert truth.shape == PAPER_TRUTH_WINDOWS[name][2:] == (129, 65)
    path = _SHARED / "paper_test_models" / f"{name}.npy"
    if not path.is_file():
        pytest.skip(f"{path} absent: the comparison with the published test model is skipped")
    np.testing.assert_array_equal(truth, np.load(path))


def test_damaged_training_image_raises(tmp_path, monkeypatch):
    import latentinv.datasets as ds

    data = bytearray(ds._channels_ti_path().read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "ti.png").write_bytes(bytes(data))
    monkeypatch.setattr(ds, "_channels_ti_path", lambda: tmp_path / "ti.png")
    with pytest.raises(ValueError, match="damaged or was replaced"):
        ds.load_channels_ti()
    with pytest.raises(ValueError, match="name must be one of"):
        ds.load_paper_truth("mc4")


# -- the held-out band of the bundled image (the default prior's unseen truths) -----------------------
def test_held_out_corners_lie_in_the_window_and_are_seeded():
    from latentinv.datasets import HELD_OUT_WINDOW, held_out_corner

    assert HELD_OUT_WINDOW == (2200, 0, 300, 2500)           # rows 2200-2499, every column
    corners = np.array([held_out_corner(s) for s in range(3000)])
    assert corners.dtype.kind == "i"
    # every crop of 129 x 65 inside rows 2200-2499 and the 2500 columns, both ends reached
    assert corners[:, 0].min() == 2200 and corners[:, 0].max() == 2500 - 129
    assert corners[:, 1].min() < 20 and corners[:, 1].max() > 2500 - 65 - 20
    assert corners[:, 1].max() <= 2500 - 65
    assert held_out_corner(7) == held_out_corner(7) != held_out_corner(8)
    assert held_out_corner(np.random.default_rng(7)) == held_out_corner(7)
    r, c = held_out_corner(1, shape=(300, 10))               # the whole band's height
    assert r == 2200 and 0 <= c <= 2490


def test_held_out_corners_reach_the_last_row_and_column():
    """Both ends of each range are drawn: with a crop one row and one column smaller than the held-out
    window, its four corners."""
    from latentinv.datasets import HELD_OUT_WINDOW, held_out_corner

    r0, c0, h, w = HELD_OUT_WINDOW
    corners = {held_out_corner(seed, shape=(h - 1, w - 1)) for seed in range(64)}
    assert corners == {(r0, c0), (r0, c0 + 1), (r0 + 1, c0), (r0 + 1, c0 + 1)}


def test_held_out_crop_is_the_image_inside_the_window():
    from latentinv.datasets import held_out_corner, load_channels_ti, load_held_out_crop

    ti = load_channels_ti()
    for seed in range(3):
        r, c = held_out_corner(seed)
        crop = load_held_out_crop(r, c)
        assert crop.shape == (129, 65) and crop.dtype == np.float64
        np.testing.assert_array_equal(crop, ti[r:r + 129, c:c + 65])
    np.testing.assert_array_equal(load_held_out_crop(2371, 2435), ti[2371:2500, 2435:2500])  # last corner
    np.testing.assert_array_equal(load_held_out_crop(2200, 0, shape=(10, 20)), ti[2200:2210, :20])


@pytest.mark.parametrize("args, message", [
    ((2199, 0), r"row0 must be in \[2200, 2371\] so that the 129 x 65 crop lies inside the held-out window "
                r"\(2200, 0, 300, 2500\) .*got 2199"),           # one row of it could be a training row
    ((2372, 0), r"row0 must be in \[2200, 2371\].*got 2372"),     # past the image's last row
    ((2200, 2436), r"col0 must be in \[0, 2435\].*got 2436"),
    ((2200, -1), r"col0 must be in \[0, 2435\].*got -1"),
    ((2200.0, 0), r"row0 must be an integer; got 2200.0"),
    ((True, 0), r"row0 must be an integer; got True"),
])
def test_held_out_crop_outside_the_window_is_refused(args, message):
    from latentinv.datasets import load_held_out_crop

    with pytest.raises(ValueError, match="load_held_out_crop: " + message):
        load_held_out_crop(*args)


def test_held_out_shapes_are_checked():
    from latentinv.datasets import held_out_corner, load_held_out_crop

    with pytest.raises(ValueError, match=r"held_out_corner: shape must fit in the held-out window of "
                                         r"300 x 2500 cells .*got \(301, 65\)"):
        held_out_corner(0, shape=(301, 65))
    with pytest.raises(ValueError, match=r"load_held_out_crop: shape must be a pair of positive ints"):
        load_held_out_crop(2200, 0, shape=(0, 65))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), h=st.integers(1, 9), w=st.integers(1, 9), n=st.integers(0, 20),
       two_images=st.booleans())
def test_patch_sampler_tensor_crops_are_its_numpy_crops(seed, h, w, n, two_images):
    import torch
    rng = np.random.default_rng(seed)
    images = [rng.random((12, 15)).astype(np.float32)]
    if two_images:
        images.append(rng.random((10, 9)).astype(np.float32))
    sampler = PatchSampler(images, (h, w), exclude=[(2, 3, 2, 2)] if h < 9 and w < 9 else None)
    want = sampler.sample(n, random_state=np.random.default_rng(seed + 1))
    got = sampler.sample_tensor(n, random_state=np.random.default_rng(seed + 1), device="cpu")
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32 and got.shape == (n, h, w)
    np.testing.assert_array_equal(got.numpy(), want)      # the same crops, exactly


# -- input validation: every bad parameter is refused, by name ---------------------------------------
_BAD_CHANNEL_IMAGE_ARGS = [
    (dict(n_channels=-1), r"n_channels must be an integer in \[1, 1000\] \(MAX_CHANNELS\) or None; got -1"),
    (dict(n_channels=0), r"n_channels must be an integer in \[1, 1000\].*got 0"),
    (dict(n_channels=10**7), r"n_channels must be an integer in \[1, 1000\].*got 10000000"),
    (dict(n_channels=2.5), r"n_channels must be an integer .*got 2.5"),
    (dict(n_channels=2.0), r"n_channels must be an integer .*got 2.0"),
    (dict(n_channels=True), r"n_channels must be an integer .*got True"),
    (dict(n_channels="3"), r"n_channels must be an integer .*got '3'"),
    (dict(sinuosity=float("nan")), r"sinuosity must be a finite number >= 0; got nan"),
    (dict(sinuosity=-0.1), r"sinuosity must be a finite number >= 0; got -0.1"),
    (dict(wavelength=0), r"wavelength must be None or a finite number of cells in \(0, 141.421\] "
                         r"\(10 times the image's diagonal\); got 0"),
    (dict(wavelength=-5.0), r"wavelength must be .*got -5.0"),
    (dict(wavelength=1e9), r"wavelength must be .*got 1000000000.0"),
    (dict(orientation=float("inf")), r"orientation must be a finite angle in degrees; got inf"),
    (dict(orientation="east"), r"orientation must be a finite angle in degrees; got 'east'"),
    (dict(width=float("inf")), r"width must be a finite number of cells in \(0, 141.421\].*got inf"),
    (dict(width=0), r"width must be .*got 0"),
    (dict(width=1e9), r"width must be .*got 1000000000.0"),
    (dict(width="3"), r"width must be .*got '3'"),
    (dict(width=True), r"width must be .*got True"),
    (dict(density=float("nan")), r"density must be a number in \(0, 1\); got nan"),
    (dict(density="0.3"), r"density must be a number in \(0, 1\); got '0.3'"),
    (dict(branching=float("nan")), r"branching must be a probability in \[0, 1\]; got nan"),
    (dict(branching=1.5), r"branching must be a probability in \[0, 1\]; got 1.5"),
    (dict(shape=(10.5, 10)), r"shape must be a pair of positive ints \(n_rows, n_cols\); got \(10.5, 10\)"),
    (dict(shape=(10.0, 10)), r"shape must be a pair of positive ints .*got \(10.0, 10\)"),
    (dict(shape="ab"), r"shape must be a pair \(n_rows, n_cols\); got 'ab'"),
    (dict(shape=10), r"shape must be a pair \(n_rows, n_cols\); got 10"),
    (dict(shape=(10, 10, 1)), r"shape must be a pair \(n_rows, n_cols\); got \(10, 10, 1\)"),
    (dict(shape=(True, 10)), r"shape must be a pair of positive ints .*got \(True, 10\)"),
    (dict(random_state=-1), r"random_state must be None, an int >= 0, a numpy Generator or a numpy "
                            r"RandomState; got -1"),
    (dict(random_state="x"), r"random_state must be None, an int >= 0.*got 'x'"),
    (dict(random_state=1.5), r"random_state must be None, an int >= 0.*got 1.5"),
]


@pytest.mark.parametrize("kwargs, message", _BAD_CHANNEL_IMAGE_ARGS,
                         ids=[",".join(f"{k}={v!r}" for k, v in kw.items()) for kw, _ in _BAD_CHANNEL_IMAGE_ARGS])
def test_channel_image_refuses_bad_parameters_by_name(kwargs, message):
    kwargs = dict(dict(shape=(10, 10), random_state=0), **kwargs)
    with pytest.raises(ValueError, match="make_channel_image: " + message):
        make_channel_image(**kwargs)


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(["width", "orientation", "sinuosity", "wavelength", "density", "branching"]),
       value=st.sampled_from([float("nan"), float("inf"), -float("inf"), np.float32("nan"), 10**400]))
def test_channel_image_refuses_non_finite_numbers(name, value):
    with pytest.raises(ValueError, match=f"make_channel_image: {name} must be .*; got "):
        make_channel_image((12, 12), **{name: value}, random_state=0)


@settings(max_examples=25, deadline=None)
@given(shape=st.tuples(st.integers(1, 30), st.integers(1, 30)), n_channels=st.one_of(st.none(), st.integers(1, 5)),
       width=st.floats(0.1, 1.0), orientation=st.floats(-720, 720), sinuosity=st.floats(0, 3),
       wavelength=st.one_of(st.none(), st.floats(0.1, 1.0)), seed=st.integers(0, 2**32))
def test_channel_image_accepts_its_whole_domain(shape, n_channels, width, orientation, sinuosity, wavelength,
                                                seed):
    """Every value in the documented ranges (widths and wavelengths as fractions of their upper bound, 10 times
    the diagonal) gives a binary image of the shape asked for, without warnings."""
    import warnings

    bound = 10 * np.hypot(*shape)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        img = make_channel_image(shape, n_channels=n_channels, width=width * bound, orientation=orientation,
                                 sinuosity=sinuosity, wavelength=None if wavelength is None else wavelength * bound,
                                 random_state=np.uint32(seed % 2**32))
    assert img.shape == shape and set(np.unique(img)) <= {0.0, 1.0}


def test_channel_image_max_channels_is_the_density_cap():
    from latentinv.datasets import MAX_CHANNELS

    assert MAX_CHANNELS == 1000
    img = make_channel_image((8, 8), n_channels=MAX_CHANNELS, width=1, random_state=0)   # allowed, fast
    assert img.shape == (8, 8)


@pytest.mark.parametrize("args, kwargs, message", [
    ((3.0,), {}, r"n_samples must be an integer >= 0; got 3.0"),
    (("3",), {}, r"n_samples must be an integer >= 0; got '3'"),
    ((True,), {}, r"n_samples must be an integer >= 0; got True"),
    ((-1,), {}, r"n_samples must be an integer >= 0; got -1"),
    ((3,), dict(width=2.5), r"width must be an integer in \[1, n_rows=16\] rows; got 2.5"),
    ((3,), dict(width=3.0), r"width must be an integer in \[1, n_rows=16\] rows; got 3.0"),
    ((3,), dict(width="3"), r"width must be an integer in \[1, n_rows=16\] rows; got '3'"),
    ((3,), dict(width=True), r"width must be an integer in \[1, n_rows=16\] rows; got True"),
    ((3,), dict(width=0), r"width must be an integer in \[1, n_rows=16\] rows; got 0"),
    ((3,), dict(shape=(16.0, 16)), r"shape must be a pair of positive ints"),
    ((3,), dict(random_state=-2), r"random_state must be None, an int >= 0.*got -2"),
])
def test_straight_channels_refuse_non_integers(args, kwargs, message):
    with pytest.raises(ValueError, match="make_straight_channels: " + message):
        make_straight_channels(*args, **kwargs)


def test_straight_channels_accept_numpy_integers_and_zero_samples():
    X = make_straight_channels(np.int64(4), (np.int32(8), 5), np.int16(2), random_state=np.int64(1))
    np.testing.assert_array_equal(X, make_straight_channels(4, (8, 5), 2, random_state=1))
    assert make_straight_channels(0, (8, 5)).shape == (0, 8, 5)


@pytest.mark.parametrize("n_samples", [-1, 2.5, 2.0, "2", True, None])
@pytest.mark.parametrize("method", ["sample", "sample_corners", "sample_tensor"])
def test_patch_sampler_refuses_bad_counts(method, n_samples):
    sampler = PatchSampler(np.zeros((10, 10)), (3, 3), random_state=0)
    with pytest.raises(ValueError, match=rf"PatchSampler: n_samples must be an integer >= 0; got "
                                         rf"{__import__('re').escape(repr(n_samples))}\."):
        getattr(sampler, method)(n_samples)


def test_patch_sampler_zero_and_numpy_counts():
    sampler = PatchSampler(np.zeros((10, 10)), (3, 4), random_state=0)
    assert sampler.sample(0).shape == (0, 3, 4)
    assert sampler.sample(np.int64(2)).shape == (2, 3, 4)
    with pytest.raises(ValueError, match=r"PatchSampler: image_index must be in \[0, 1\); got 0.0"):
        sampler.admissible_corners(0.0)


@pytest.mark.parametrize("random_state", [-1, "x", 1.5, True, [1, 2], object()])
def test_bad_random_states_are_named(random_state):
    from latentinv.datasets import held_out_corner

    expected = r"random_state must be None, an int >= 0, a numpy Generator or a numpy RandomState; got "
    with pytest.raises(ValueError, match="held_out_corner: " + expected):
        held_out_corner(random_state)
    with pytest.raises(ValueError, match="PatchSampler: " + expected):
        PatchSampler(np.zeros((10, 10)), (3, 3), random_state=random_state)
    sampler = PatchSampler(np.zeros((10, 10)), (3, 3))
    for method in (sampler.sample, sampler.sample_corners, sampler.sample_tensor):
        with pytest.raises(ValueError, match="PatchSampler: " + expected):
            method(2, random_state=random_state)


def test_accepted_random_states_are_the_documented_ones():
    from latentinv.datasets import held_out_corner

    assert held_out_corner(None) is not None
    assert held_out_corner(np.int64(7)) == held_out_corner(7) == held_out_corner(np.random.default_rng(7))
    assert held_out_corner(np.random.RandomState(3)) == held_out_corner(np.random.RandomState(3))
    assert held_out_corner(2**70) == held_out_corner(2**70)                  # big seeds are seeds


def test_a_density_that_max_channels_cannot_reach_warns():
    with pytest.warns(UserWarning, match=r"1000 channels \(MAX_CHANNELS\) reach a channel fraction of 0\.97"):
        image = make_channel_image((300, 300), density=0.99, width=1.0, random_state=0)
    assert 0.96 < image.mean() < 0.99


def _interior_pieces(image):
    """8-connected channel pieces that touch no image border."""
    from scipy import ndimage

    labels, n = ndimage.label(image > 0.5, structure=np.ones((3, 3)))
    on_border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return n - np.count_nonzero(on_border)


@settings(max_examples=40, deadline=None)
@given(n_rows=st.integers(20, 120), n_cols=st.integers(20, 120), width=st.floats(1.0, 10.0),
       sinuosity=st.floats(0.0, 50.0), orientation=st.floats(-180.0, 180.0),
       seed=st.integers(0, 2**16))
def test_channels_are_continuous_at_any_sinuosity(n_rows, n_cols, width, sinuosity, orientation, seed):
    """Every channel crosses the image, so each of its pieces reaches a border; an interior piece is
    a dot of a broken channel (sinuosity 5 at width 1 once gave hundreds: the centreline, sampled
    every half cell along its direction, has segments far longer than a channel width). Without
    branches, which may stand apart from their parent and end inside the image (documented)."""
    image = make_channel_image((n_rows, n_cols), n_channels=3, width=width, sinuosity=sinuosity,
                               orientation=orientation, branching=0.0, random_state=seed)
    assert _interior_pieces(image) == 0


def test_extreme_sinuosity_stays_bounded_and_continuous():
    """A meander swinging 1e6 wavelengths outside the image costs no more than one inside it."""
    image = make_channel_image((200, 150), n_channels=3, width=1.0, sinuosity=1e6, branching=0.0,
                               random_state=0)
    assert image.any() and _interior_pieces(image) == 0


@settings(max_examples=25, deadline=None)
@given(width=st.floats(0.2, 10.0), density=st.floats(0.05, 0.6), sinuosity=st.floats(0.0, 3.0),
       orientation=st.floats(-90.0, 90.0), seed=st.integers(0, 2**16))
def test_channel_image_stops_at_the_first_channel_that_reaches_density(width, density, sinuosity,
                                                                       orientation, seed):
    """The channels are drawn in the same order whatever stops them, so the image made for ``density``
    is the one of ``n_channels=k`` for the first k whose fraction reaches ``density``. The cheap bound
    (centreline cells x width) that gated the exact check is no bound below 1 cell or across a diagonal:
    width 0.3 and density 0.25 gave a fraction of 0.83 (the check never ran before the 1000th channel)."""
    kw = dict(shape=(48, 40), width=width, sinuosity=sinuosity, orientation=orientation, random_state=seed)
    image = make_channel_image(density=density, **kw)
    k, previous = 0, np.zeros(kw["shape"])
    while previous.mean() < density:
        k += 1
        current = make_channel_image(n_channels=k, **kw)
        if current.mean() >= density:
            break
        previous = current
    assert previous.mean() < density <= image.mean()
    np.testing.assert_array_equal(image, current)


def test_patch_sampler_takes_the_windows_of_a_mapping_and_of_an_iterator():
    """``exclude=PAPER_TRUTH_WINDOWS`` (the dict the docs name) was refused as "3 entries" per image (its
    keys were read as windows); a generator of windows raised a TypeError (no len)."""
    from latentinv.datasets import PAPER_TRUTH_WINDOWS, load_channels_ti

    ti = load_channels_ti()
    expected = PatchSampler(ti, (129, 65), exclude=list(PAPER_TRUTH_WINDOWS.values()))
    for exclude in (PAPER_TRUTH_WINDOWS, dict(PAPER_TRUTH_WINDOWS), iter(PAPER_TRUTH_WINDOWS.values()),
                    (w for w in PAPER_TRUTH_WINDOWS.values())):
        sampler = PatchSampler(ti, (129, 65), exclude=exclude)
        assert sampler.exclude == expected.exclude == [list(PAPER_TRUTH_WINDOWS.values())]
        np.testing.assert_array_equal(sampler.n_valid, expected.n_valid)
    two = PatchSampler([ti[:600, :600], ti[:500, :500]], (129, 65), exclude=[{"a": (0, 0, 10, 10)}, None])
    assert two.exclude == [[(0, 0, 10, 10)], []]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_patch_sampler_names_a_window_that_is_not_finite(bad):
    with pytest.raises(ValueError, match=r"PatchSampler: exclusion window entries must be integers \(cells\); "
                                         r"got \(.*, 0, 2, 2\) for image 0"):
        PatchSampler(np.zeros((10, 10)), (5, 5), exclude=[(bad, 0, 2, 2)])
