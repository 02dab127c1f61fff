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
