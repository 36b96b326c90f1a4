import pytest
import torch

from videodit.attention import apply_rope, rope_angles, rope_cos_sin
from videodit.patchify import patchify, unpatchify


@pytest.mark.parametrize("shape, patch", [((2, 16, 5, 8, 8), (1, 2, 2)), ((1, 4, 4, 6, 10), (2, 3, 5)),
                                          ((3, 8, 1, 4, 4), (1, 1, 1))])
def test_patchify_round_trip(shape, patch):
    x = torch.randn(shape)
    tok = patchify(x, patch)
    B, C, T, H, W = shape
    assert tok.shape == (B, T // patch[0], (H // patch[1]) * (W // patch[2]), C * patch[0] * patch[1] * patch[2])
    assert torch.equal(unpatchify(tok, patch, H, W), x)


def test_patchify_groups_one_patch_per_token():
    x = torch.zeros(1, 1, 2, 4, 4)
    x[0, 0, 1, 2:4, 0:2] = 1.0  # the second frame, bottom-left 2x2 patch
    tok = patchify(x, (1, 2, 2))
    assert tok[0, 1, 2].sum() == 4 and tok.sum() == 4


def test_patchify_indivisible_is_clear():
    with pytest.raises(ValueError, match="not divisible"):
        patchify(torch.randn(1, 4, 3, 7, 8), (1, 2, 2))


def test_rope_scores_depend_only_on_relative_offsets():
    torch.manual_seed(0)
    dh = 24
    q, k = torch.randn(dh), torch.randn(dh)

    def score(p1, p2):
        a = rope_angles(*[torch.tensor([v]) for v in p1], dh, 10000.0)[0]
        b = rope_angles(*[torch.tensor([v]) for v in p2], dh, 10000.0)[0]
        return (apply_rope(q[None], rope_cos_sin(a)) * apply_rope(k[None], rope_cos_sin(b))).sum()

    base = score((3, 1, 2), (1, 4, 0))
    shifted = score((10, 6, 9), (8, 9, 7))  # the same offset (2, -3, 2)
    other = score((3, 1, 2), (2, 4, 0))
    assert torch.allclose(base, shifted, atol=1e-4)
    assert not torch.allclose(base, other, atol=1e-3)
