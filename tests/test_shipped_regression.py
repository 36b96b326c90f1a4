"""The shipped checkpoint's output must not change under refactoring: 2 s sampled with a fixed seed through the
command line, compared with a stored reference (per-frame means and an 8x8 downscaled copy of every frame).

Regenerate the reference only on purpose (a new shipped model):
    python tests/test_shipped_regression.py --write
"""

import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "data" / "shipped_reference.npz"
PROMPT = "a red circle moving to the right"


def sample_summary(tmp: Path) -> tuple[np.ndarray, np.ndarray]:
    import av

    out = tmp / "regression.mp4"
    r = subprocess.run([sys.executable, str(ROOT / "sample.py"), "--prompt", PROMPT, "--seconds", "2", "--seed", "7",
                        "--out", str(out), "--threads", "2"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    with av.open(str(out)) as c:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]).astype(np.float64)
    T, H, W, _ = frames.shape
    means = frames.mean(axis=(1, 2))  # (T, 3)
    small = frames.reshape(T, 8, H // 8, 8, W // 8, 3).mean(axis=(2, 4))  # (T, 8, 8, 3)
    return means, small


def test_shipped_model_output_is_unchanged(tmp_path):
    ref = np.load(REFERENCE)
    means, small = sample_summary(tmp_path)
    assert means.shape == ref["means"].shape == (16, 3)
    # bit-exact on one machine; the margins only absorb float summation order across CPUs/BLAS builds
    assert np.abs(means - ref["means"]).max() < 0.5, np.abs(means - ref["means"]).max()
    assert np.abs(small - ref["small"]).mean() < 0.5 and np.abs(small - ref["small"]).max() < 8.0


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        m, s = sample_summary(Path(d))
    REFERENCE.parent.mkdir(exist_ok=True)
    np.savez_compressed(REFERENCE, means=m.astype(np.float32), small=s.astype(np.float32))
    print(f"wrote {REFERENCE}")
