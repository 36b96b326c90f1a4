import json
import os
import stat

import pytest
import torch

from videodit import vae as vae_mod
from videodit.checkpoint import load_text_encoder, load_vae, save_module, save_text_encoder, write_config
from videodit.config import Config, VAEConfig
from videodit.data.cache import cache
from videodit.data.cli import main as data_main
from videodit.data.datasets import BucketBatchSampler, ShardDataset, collate, load_window
from videodit.data.prep import read_manifest
from videodit.data.shapes import generate
from videodit.text_encoder import TextEncoder
from videodit.vae import VideoVAE, encode_video
from videodit.video_io import DataError

KW = dict(frames=[5], size=32, fps=8, shard_size=4, batch_size=4, progress=False)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    manifest = generate(root / "clips", num=7, seconds=None, fps=8, size=32, seed=0, frames=10, progress=False)
    cfg = Config()
    cfg.vae = VAEConfig(base_channels=8, channel_mults=(1, 1, 1, 1), latent_channels=4)
    ckpt = root / "ckpt"
    write_config(cfg, ckpt)
    torch.manual_seed(0)
    save_module(VideoVAE(cfg.vae), ckpt / "vae.safetensors")
    save_text_encoder(TextEncoder.tiny(cfg.text), ckpt)
    full = root / "full"
    summary = cache(manifest, ckpt, full, **KW)
    return root, manifest, ckpt, full, summary


def files(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_uninterrupted_run(setup):
    _, _, _, full, summary = setup
    # 7 clips x 2 windows of 5 frames = 14 samples in shards of 4
    assert summary == dict(planned=4, mine=4, skipped=0, encoded=4, too_short=0, bad={}, index=True)
    index = json.loads((full / "index.json").read_text())
    assert [s["num"] for s in index["shards"]] == [4, 4, 4, 2] and index["num"] == 14
    assert not list(full.glob(".*"))  # no temporary files left


def test_interrupted_run_resumes_to_identical_shards(setup, monkeypatch):
    root, manifest, ckpt, full, _ = setup
    out = root / "interrupted"
    first = cache(manifest, ckpt, out, max_shards=1, **KW)  # stops after one shard
    assert first["encoded"] == 1 and first["index"] is False and not (out / "index.json").exists()

    calls = {"n": 0}

    def failing_encode(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # dies in the middle of the second shard of this run
        return encode_video(*args, **kwargs)

    monkeypatch.setattr(vae_mod, "encode_video", failing_encode)
    with pytest.raises(KeyboardInterrupt):
        cache(manifest, ckpt, out, **KW)
    monkeypatch.undo()
    assert sorted(p.name for p in out.glob("shard-*")) == ["shard-5x32x32-00000.safetensors",
                                                          "shard-5x32x32-00001.safetensors"]  # fmt: skip
    assert not list(out.glob(".*"))
    resumed = cache(manifest, ckpt, out, **KW)
    assert resumed["skipped"] == 2 and resumed["encoded"] == 2 and resumed["index"]
    assert files(out) == files(full)


def test_rank_split(setup, monkeypatch):
    root, manifest, ckpt, full, _ = setup
    out = root / "ranks"
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    one = cache(manifest, ckpt, out, **KW)  # torchrun-style environment
    assert (one["mine"], one["encoded"], one["index"]) == (2, 2, False)
    zero = cache(manifest, ckpt, out, rank=0, world_size=2, **KW)
    assert (zero["mine"], zero["encoded"], zero["index"]) == (2, 2, True)
    assert files(out) == files(full)


def test_shard_dataset_reads_back(setup):
    _, manifest, ckpt, full, _ = setup
    ds = ShardDataset(full)
    rows = read_manifest(manifest)
    assert len(ds) == 14 and set(ds.shapes) == {(2, 4, 4)}
    item = ds[5]  # clip 2, second window
    assert item["latents"].shape == (4, 2, 4, 4) and item["latents"].dtype == torch.float32
    assert item["caption"] == rows[2]["caption"]
    n = item["text_mask"].sum().item()
    assert item["text_mask"].all() and item["text_emb"].shape == (n, 64)
    vae = load_vae(ckpt)
    expected = encode_video(vae, load_window(rows[2], 5 / 8, 5, 32, 8)[None])[0]
    assert torch.allclose(item["latents"], expected, atol=1e-5)
    text = load_text_encoder(ckpt)
    emb, mask = text([rows[2]["caption"]])
    assert torch.allclose(item["text_emb"], emb[0, :n], atol=1e-5)
    batch = collate([ds[i] for i in next(iter(BucketBatchSampler(ds, 4, seed=1)))])
    assert batch["latents"].shape == (4, 4, 2, 4, 4)
    assert batch["text_emb"].shape[:2] == batch["text_mask"].shape and len(batch["caption"]) == 4


def test_cache_cli_and_t5_folder(setup, capsys):
    root, manifest, ckpt, full, _ = setup
    out = root / "cli"
    args = ["cache", str(manifest), "--vae", str(ckpt), "--text-encoder", str(ckpt / "text_encoder"), "--out",
            str(out), "--frames", "5", "--size", "32", "--shard-size", "4"]  # fmt: skip
    assert data_main(args) == 0
    assert "4 encoded now" in capsys.readouterr().out
    assert files(out)["shard-5x32x32-00002.safetensors"] == files(full)["shard-5x32x32-00002.safetensors"]
    assert data_main(args) == 0 and "4 already done" in capsys.readouterr().out
    assert data_main(args[:-2] + ["--shard-size", "3"]) == 1  # other settings, same folder
    assert "other settings" in capsys.readouterr().err
    assert data_main(["cache", str(manifest), "--vae", str(root / "nope"), "--out", str(root / "x")]) == 1
    assert "not found" in capsys.readouterr().err
    assert data_main(["cache", str(manifest), "--vae", str(ckpt), "--out", str(root / "y"), "--frames", "33"]) == 1
    assert "holds 33 frames" in capsys.readouterr().err


def test_cache_procedural_shapes_without_mp4(setup, capsys):
    """--shapes N renders the procedural clips instead of decoding mp4: the same captions as `shapes` writes,
    latents of the rendered frames, and a clear error when given both or neither source."""
    from videodit.data.datasets import ShapesDataset

    root, manifest, ckpt, _, _ = setup
    out = root / "procedural"
    args = ["cache", "--shapes", "5", "--seed", "0", "--vae", str(ckpt), "--out", str(out), "--frames", "5",
            "--size", "32", "--shard-size", "4"]  # fmt: skip
    assert data_main(args) == 0 and "2 encoded now" in capsys.readouterr().out
    ds = ShardDataset(out)
    assert len(ds) == 5 and [ds[i]["caption"] for i in range(5)] == [r["caption"] for r in read_manifest(manifest)[:5]]
    clip = ShapesDataset(num=5, frames=5, size=32, fps=8, seed=0)[3]
    expected = encode_video(load_vae(ckpt), clip["video"][None])[0]
    assert torch.allclose(ds[3]["latents"], expected, atol=1e-5)
    assert data_main(args[:1] + [str(manifest)] + args[1:]) == 1
    assert "not both" in capsys.readouterr().err
    assert data_main(["cache", "--vae", str(ckpt), "--out", str(root / "z")]) == 1
    assert "not both or neither" in capsys.readouterr().err
    # several folders joined by commas: one dataset, each clip length its own bucket
    longer = root / "procedural9"
    assert data_main(args[:7] + ["--out", str(longer), "--frames", "9", "--size", "32"]) == 0
    both = ShardDataset(f"{out},{longer}")
    alone = ShardDataset(longer)
    assert len(both) == 10 and set(both.shapes) == {(2, 4, 4), (3, 4, 4)}
    assert torch.equal(both[7]["latents"], alone[2]["latents"]) and both[7]["caption"] == alone[2]["caption"]
    with pytest.raises(DataError, match="index.json"):
        ShardDataset(f"{out},{root / 'z'}")


def test_cache_shapes_share_of_two_object_clips(setup, capsys):
    """--p-two sets the share of two-object procedural clips; the default leaves the dataset (and the name a
    resumed cache checks) as it was; a share outside [0, 1] is a clear error."""
    from videodit.data.cache import shapes_rows
    from videodit.data.shapes import P_TWO, make_example

    default, explicit = shapes_rows(40, 3, 5, 8), shapes_rows(40, 3, 5, 8, p_two=P_TWO)
    assert [r["caption"] for r in default] == [r["caption"] for r in explicit]
    assert 0 < sum(len(make_example(3, i)[0].objects) == 2 for i in range(40)) < 40
    assert all(len(make_example(3, i, "train", 1.0)[0].objects) == 2 for i in range(40))
    assert all(len(make_example(3, i, "train", 0.0)[0].objects) == 1 for i in range(40))
    root, _, ckpt, _, _ = setup
    args = ["cache", "--shapes", "3", "--vae", str(ckpt), "--frames", "5", "--size", "32"]
    assert data_main(args + ["--out", str(root / "two"), "--p-two", "1.5"]) == 1
    assert "--p-two" in capsys.readouterr().err
    assert data_main(args + ["--out", str(root / "two"), "--p-two", "1"]) == 0
    captions = [ShardDataset(root / "two")[i]["caption"] for i in range(3)]
    assert captions == [make_example(0, i, "train", 1.0)[1] for i in range(3)]


def _manifest(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def bad_manifests(setup):
    """The 7 clips with row 2's file missing and row 5's file random bytes named .mp4; and the 5 good ones."""
    root, manifest, _, _, _ = setup
    rows = read_manifest(manifest)  # absolute paths
    corrupt = root / "bad" / "corrupt.mp4"
    corrupt.parent.mkdir(parents=True, exist_ok=True)
    corrupt.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)).byte().numpy())
    rows[2]["path"] = str(root / "bad" / "missing.mp4")
    rows[5]["path"] = str(corrupt)
    good = [r for j, r in enumerate(rows) if j not in (2, 5)]
    return _manifest(root / "bad" / "clips.jsonl", rows), _manifest(root / "bad" / "good.jsonl", good), rows


def _by_clip(folder):
    """(path, start) -> dataset item, from index.json's clips in the order ShardDataset reads them."""
    index = json.loads((folder / "index.json").read_text())
    keys = [(c["path"], c["start"]) for s in index["shards"] for c in s["clips"]]
    ds = ShardDataset(folder)
    assert len(keys) == len(ds) == index["num"]
    return {k: ds[i] for i, k in enumerate(keys)}


def test_bad_clips_skipped_listed_and_resumable(setup, bad_manifests, capsys):
    """A missing and a corrupt clip among good ones: exit 0, both in skipped.jsonl with their reason, the summary
    counts them, the shards hold exactly the good clips (latents and text as a run over the good clips alone),
    and an interrupted run resumes to the same files."""
    root, _, ckpt, _, _ = setup
    manifest, good_manifest, rows = bad_manifests
    out, ref = root / "bad" / "out", root / "bad" / "ref"
    args = ["cache", str(manifest), "--vae", str(ckpt), "--out", str(out), "--frames", "5", "--size", "32",
            "--shard-size", "4"]  # fmt: skip
    assert data_main(args) == 0
    printed = capsys.readouterr().out
    assert "2 clips skipped (1 missing, 1 unreadable)" in printed and "skipped.jsonl" in printed
    skipped = [json.loads(line) for line in (out / "skipped.jsonl").read_text().splitlines()]
    assert [(s["row"], s["path"], s["reason"]) for s in skipped] == [
        (2, rows[2]["path"], "missing"), (5, rows[5]["path"], "unreadable")]  # fmt: skip
    assert all(s["starts"] == [0.0, 0.625] and rows[s["row"]]["path"] in s["error"] for s in skipped)

    assert cache(good_manifest, ckpt, ref, **KW)["bad"] == {}
    got, want = _by_clip(out), _by_clip(ref)
    assert len(got) == 10 and got.keys() == want.keys()  # 5 good clips x 2 windows, no holes
    for k in want:
        assert torch.allclose(got[k]["latents"], want[k]["latents"], atol=1e-6)
        assert torch.allclose(got[k]["text_emb"], want[k]["text_emb"], atol=1e-5)
        assert got[k]["caption"] == want[k]["caption"]

    # interrupted after one shard, then resumed: the same files as the uninterrupted run
    resumed = root / "bad" / "resumed"
    assert cache(manifest, ckpt, resumed, max_shards=1, **KW)["index"] is False
    assert not (resumed / "skipped.jsonl").exists()
    again = cache(manifest, ckpt, resumed, **KW)
    assert (again["skipped"], again["encoded"], again["bad"]) == (1, 3, {"missing": 1, "unreadable": 1})
    assert files(resumed) == files(out)


def _error_lines(capsys):  # stderr without the progress bars
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("videodit-data")]


def test_on_error_stop_and_all_clips_bad(setup, bad_manifests, capsys):
    """--on-error stop: exit 2 at the first bad clip, one line naming it, no index. Every clip bad: exit 2 with
    the counts, skipped.jsonl, no index."""
    root, _, ckpt, _, _ = setup
    manifest, _, rows = bad_manifests
    args = ["cache", str(manifest), "--vae", str(ckpt), "--frames", "5", "--size", "32", "--shard-size", "4"]
    out = root / "bad" / "strict"
    assert data_main(args + ["--out", str(out), "--on-error", "stop"]) == 2
    err = _error_lines(capsys)
    assert len(err) == 1 and "manifest row 2" in err[0] and rows[2]["path"] in err[0]
    assert not (out / "index.json").exists() and not (out / "skipped.jsonl").exists()

    only_bad = _manifest(root / "bad" / "only_bad.jsonl", [rows[2], rows[5]])
    out = root / "bad" / "all_bad"
    assert data_main(["cache", str(only_bad)] + args[2:] + ["--out", str(out)]) == 2
    err = _error_lines(capsys)
    assert len(err) == 1 and "no clip could be read (1 missing, 1 unreadable" in err[0]
    assert not (out / "index.json").exists() and len((out / "skipped.jsonl").read_text().splitlines()) == 2


def _modes(folder):
    return {p.relative_to(folder).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in folder.rglob("*")}


@pytest.mark.parametrize("umask", [0o022, 0o002])
def test_written_files_follow_the_umask(setup, bad_manifests, tmp_path, umask):
    """Everything `shapes`, `prep` and `cache` write is 0666 / 0777 less the umask (no 0600 temp-file modes)."""
    from videodit.data.prep import prep

    _, _, ckpt, _, _ = setup
    manifest, _, _ = bad_manifests
    file_mode, dir_mode = 0o666 & ~umask, 0o777 & ~umask
    old = os.umask(umask)
    try:
        shapes = generate(tmp_path / "shapes", num=2, seconds=None, fps=8, size=32, seed=0, frames=5, progress=False)
        prep(shapes.parent, tmp_path / "prep" / "clips.jsonl", min_frames=5, min_size=16, progress=False)
        cache(manifest, ckpt, tmp_path / "cache", **KW)  # with skipped.jsonl and a shard without tensors
    finally:
        os.umask(old)
    modes = _modes(tmp_path)
    assert {"cache/skipped.jsonl", "cache/index.json", "prep/clips.files.jsonl", "shapes/manifest.jsonl"} <= set(modes)
    assert {k: m for k, m in modes.items() if m != (dir_mode if (tmp_path / k).is_dir() else file_mode)} == {}


def test_full_disk_keeps_complete_shards_and_says_what_ran_out(setup, small_disk, capsys):
    """A disk that fills up mid-run: exit 1 with one line naming the cause; the shards finished before it are the
    uninterrupted run's, byte for byte; no temporary file and no index are left; a rerun elsewhere resumes."""
    _, manifest, ckpt, full, _ = setup
    out = small_disk / "shards"
    rc = data_main(["cache", str(manifest), "--vae", str(ckpt), "--out", str(out), "--frames", "5", "--size", "32",
                    "--shard-size", "4", "--batch-size", "4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and err[-1].startswith("videodit-data cache: error: No space left on device"), err
    assert "rerun the same command to resume" in err[-1]
    done = [p for p in out.glob("*.safetensors")]
    assert 0 < len(done) < 4 and not (out / "index.json").exists() and not list(out.glob(".*"))
    assert all(p.read_bytes() == (full / p.name).read_bytes() for p in done)
