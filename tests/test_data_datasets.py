import numpy as np
import pytest
import torch

from videodit.data.datasets import BucketBatchSampler, ClipDataset, ShapesDataset, collate, resize_crop
from videodit.data.shapes import generate, make_example, render_clip
from videodit.video_io import DataError


def test_bucket_sampler_one_shape_per_batch_and_disjoint_ranks():
    shapes = [(17, 64, 64)] * 10 + [(33, 64, 64)] * 7 + [(17, 32, 48)] * 5
    ranks = [BucketBatchSampler(shapes, batch_size=2, rank=r, world_size=2, seed=3) for r in range(2)]
    batches = [list(s) for s in ranks]
    assert len(batches[0]) == len(batches[1]) == len(ranks[0]) == 5  # 5 + 3 + 2 full batches, 10 // 2 per rank
    seen = [i for b in batches[0] + batches[1] for i in b]
    assert len(seen) == len(set(seen)) == 20  # disjoint across ranks, no repeats
    for b in batches[0] + batches[1]:
        assert len(b) == 2 and len({shapes[i] for i in b}) == 1
    assert batches[0] == list(BucketBatchSampler(shapes, 2, rank=0, world_size=2, seed=3))  # deterministic
    ranks[0].set_epoch(1)
    assert list(ranks[0]) != batches[0]  # a new epoch reshuffles
    keep = BucketBatchSampler(shapes, batch_size=4, drop_last=False, shuffle=False)
    assert sorted(i for b in keep for i in b) == list(range(22))
    with pytest.raises(DataError, match="no batch"):
        BucketBatchSampler([(1, 8, 8)] * 3, batch_size=4)


def test_shapes_dataset_renders_on_the_fly():
    ds = ShapesDataset(num=5, frames=17, size=64, fps=8, seed=2)
    item = ds[3]
    spec, text = make_example(2, 3)
    assert item["caption"] == text and item["video"].shape == (3, 17, 64, 64)
    assert item["video"].min() >= -1 and item["video"].max() <= 1
    expected = torch.from_numpy(render_clip(spec, fps=8, size=64, frames=17)).permute(3, 0, 1, 2).float()
    assert torch.allclose((item["video"] + 1) * 127.5, expected, atol=1e-3)
    assert torch.equal(ds[3]["video"], item["video"]) and len(ds) == 5 and ds.shapes[0] == (17, 64, 64)
    held = ShapesDataset(num=3, frames=5, size=32, fps=8, split="heldout")
    assert held[0]["caption"] == make_example(0, 0, "heldout")[1]
    two = ShapesDataset(num=40, frames=5, size=32, fps=8, p_two=1.0)
    assert all(len(make_example(0, i, "train", 1.0)[0].objects) == 2 for i in range(40))
    assert two[7]["caption"] == make_example(0, 7, "train", 1.0)[1]
    with pytest.raises(DataError, match="p_two"):
        ShapesDataset(num=3, frames=5, size=32, fps=8, p_two=1.5)


def test_clip_dataset_windows(tmp_path):
    manifest = generate(tmp_path, num=2, seconds=None, fps=8, size=64, seed=0, frames=20, progress=False)
    ds = ClipDataset(manifest, frames=9, size=32, fps=8)
    assert len(ds) == 4  # 20 frames -> two windows of 9 per clip
    item = ds[1]  # clip 0, frames 9..17
    assert item["video"].shape == (3, 9, 32, 32) and item["caption"] == make_example(0, 0)[1]
    full = render_clip(make_example(0, 0)[0], fps=8, size=64, frames=20)[9:18]
    expected = resize_crop(torch.from_numpy(full).permute(3, 0, 1, 2).float() / 127.5 - 1, 32)
    assert (item["video"] - expected).abs().mean() < 0.03  # the mp4 round trip is close
    assert ClipDataset(manifest, frames=9, size=(32, 48), fps=4).shapes[0] == (9, 32, 48)
    with pytest.raises(DataError, match="no clip"):
        ClipDataset(manifest, frames=33, size=32, fps=8)


def test_resize_crop_keeps_aspect():
    video = torch.zeros(3, 2, 40, 80)
    video[:, :, :, 30:50] = 1  # a bar in the middle
    out = resize_crop(video, 32)
    assert out.shape == (3, 2, 32, 32)
    assert out[:, :, :, 12:20].mean() > 0.9 and out[:, :, :, :4].abs().max() < 1e-6  # centre crop


def test_collate_pads_text():
    items = [
        dict(latents=torch.zeros(4, 2, 4, 4), text_emb=torch.ones(n, 8), text_mask=torch.ones(n, dtype=torch.bool),
             caption=f"c{n}")
        for n in (3, 5)
    ]  # fmt: skip
    batch = collate(items)
    assert batch["text_emb"].shape == (2, 5, 8) and batch["text_mask"].tolist()[0] == [True] * 3 + [False] * 2
    assert batch["text_emb"][0, 3:].abs().sum() == 0 and batch["caption"] == ["c3", "c5"]
    with pytest.raises(DataError, match="BucketBatchSampler"):
        collate([dict(video=torch.zeros(3, 5, 8, 8)), dict(video=torch.zeros(3, 9, 8, 8))])
    assert np.isclose(float(batch["latents"].sum()), 0)
