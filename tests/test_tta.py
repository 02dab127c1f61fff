import numpy as np
import pytest
import torch

from pipeline.tta import POLICIES, make_view, merge, policies_within, stack_views


def test_ten_crop_views_are_the_standard_crops():
    x = torch.arange(2 * 3 * 10 * 10, dtype=torch.float32).view(2, 3, 10, 10)
    assert torch.equal(make_view(x, "tl", 8), x[..., :8, :8])
    assert torch.equal(make_view(x, "br", 8), x[..., 2:, 2:])
    assert torch.equal(make_view(x, "center", 8), x[..., 1:9, 1:9])
    assert torch.equal(make_view(x, "tr_hflip", 8), x[..., :8, 2:].flip(-1))
    stacked = stack_views(x, POLICIES["ten-crop"], 8)
    assert stacked.shape == (20, 3, 8, 8)
    assert torch.equal(stacked[2:4], x[..., :8, :8])  # view-major: view 1 (tl) for both images
    assert len({tuple(v.flatten().tolist()) for v in stacked[::2]}) == 10  # ten distinct views


def test_d4_views_are_distinct():
    x = torch.randn(1, 3, 6, 6)
    views = stack_views(x, POLICIES["d4"], 6)
    assert len({tuple(v.flatten().round(decimals=5).tolist()) for v in views}) == 8


def test_multiscale_views_have_the_input_size():
    x = torch.randn(2, 3, 12, 12)
    views = stack_views(x, POLICIES["multiscale"], 10)
    assert views.shape == (6, 3, 10, 10)
    assert torch.equal(views[:2], x[..., 1:11, 1:11])


def test_merge_probabilities_not_logits():
    p = np.array([[[0.9, 0.1]], [[0.5, 0.5]]])
    np.testing.assert_allclose(merge(p, "mean"), [[0.7, 0.3]])
    g = merge(p, "gmean")
    np.testing.assert_allclose(g.sum(1), 1)
    assert np.isfinite(g).all() and g[0, 0] > 0.5
    assert np.isfinite(merge(np.array([[[1.0, 0.0]], [[0.0, 1.0]]]), "gmean")).all()  # no NaN on zeros


def test_policies_within():
    assert set(policies_within(POLICIES["ten-crop"])) == {"none", "hflip", "five-crop", "ten-crop"}
    with pytest.raises(ValueError):
        merge(np.ones((1, 1, 2)), "max")


def test_gmean_differs_from_mean_where_views_disagree_and_not_where_they_agree():
    views = np.array([[[0.98, 0.02], [0.6, 0.4]], [[0.5, 0.5], [0.6, 0.4]]])  # (V=2, N=2, C=2)
    mean, gmean = merge(views, "mean"), merge(views, "gmean")
    np.testing.assert_allclose(mean[0], [0.74, 0.26])
    g = np.sqrt(views[0, 0] * views[1, 0])  # the normalised geometric mean, computed here
    np.testing.assert_allclose(gmean[0], g / g.sum())
    assert gmean[0, 0] > mean[0, 0] + 0.1  # a confident view and an unsure one: gmean follows the confident one
    np.testing.assert_allclose(gmean[1], mean[1])  # views that agree: the same


def test_d4_views_are_the_eight_symmetries_their_names_say():
    img = np.arange(5 * 5 * 3, dtype=np.float32).reshape(5, 5, 3)  # no symmetry of its own
    x = torch.from_numpy(img).permute(2, 0, 1)[None]
    for name in POLICIES["d4"]:
        want = img
        for op in name.split("_")[1:]:  # applied left to right: hflip, then the counter-clockwise rotation
            want = want[:, ::-1] if op == "hflip" else np.rot90(want, int(op[3:]) // 90, axes=(0, 1))
        got = make_view(x, name, 5)[0].permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(got, want, err_msg=name)
    assert len({make_view(x, n, 5).numpy().tobytes() for n in POLICIES["d4"]}) == 8


def test_multiscale_views_show_the_whole_image_the_centre_and_a_zoom():
    # a horizontal ramp: bilinear resizing keeps it linear away from the borders, so each view's scale and offset
    # can be read from its values. Cached side 20, model input 10.
    ramp = torch.arange(20, dtype=torch.float32).repeat(20, 1)[None, None].repeat(1, 3, 1, 1)
    views = dict(zip(POLICIES["multiscale"], stack_views(ramp, POLICIES["multiscale"], 10)))
    cols = torch.arange(3, 7, dtype=torch.float32)  # interior output columns
    np.testing.assert_allclose(views["center"][0, 0, 3:7], 5 + cols)  # a crop: offset 5, scale 1
    np.testing.assert_allclose(views["full"][0, 0, 3:7], (cols + 0.5) * 2 - 0.5, atol=1e-4)  # all 20 px: scale 2
    # zoom: a centre crop of 10 * 10 / 20 = 5 px (from column (20 - 5) // 2 = 7), magnified to 10: scale 0.5
    np.testing.assert_allclose(views["zoom"][0, 0, 3:7], 7 + (cols + 0.5) * 0.5 - 0.5, atol=1e-4)
