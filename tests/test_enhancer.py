"""The feature enhancer computes its documented cross-level fusion without building the concatenations."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sam4em.models.enhancer import FeatureEnhancer


def _block(block, x: torch.Tensor) -> torch.Tensor:
    """A fusion block as its docstring states it: concatenation -> 1x1 -> norm -> GELU -> depthwise 3x3 -> 1x1."""
    return block.out(F.gelu(block.spatial(F.gelu(block.norm(block.reduce(x))))))


def _concatenated(enhancer: FeatureEnhancer, fine, mid, coarse):
    """The fusion written with explicit concatenations of pooled and upsampled levels."""
    def up(x, like):
        return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)

    coarse = coarse + _block(enhancer.coarse, torch.cat([F.avg_pool2d(fine, 4), F.avg_pool2d(mid, 2), coarse], dim=1))
    mid = mid + _block(enhancer.mid, torch.cat([F.avg_pool2d(fine, 2), mid, up(coarse, mid)], dim=1))
    fine = fine + _block(enhancer.fine, torch.cat([fine, up(mid, fine)], dim=1))
    return fine, mid, coarse


def test_it_equals_the_fusion_of_the_concatenated_levels():
    torch.manual_seed(0)
    enhancer = FeatureEnhancer(channels=16)
    with torch.no_grad():
        for parameter in enhancer.parameters():  # the zero-initialised outputs too: every branch counts
            parameter.add_(0.2 * torch.randn_like(parameter))
        levels = torch.randn(2, 16, 32, 32), torch.randn(2, 16, 16, 16), torch.randn(2, 16, 8, 8)
        got, expected = enhancer(*levels), _concatenated(enhancer, *levels)
    for g, e, level in zip(got, expected, levels, strict=True):
        assert not torch.allclose(e, level, atol=1e-2)  # the fusion changes every level
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)
