import json

import numpy as np
import pytest

from videodit.eval.paired import compare, main


def report(scores: list[float | None], objects: list[int]) -> dict:
    return dict(per_video=[dict(prompt=f"prompt {i}", persistence=s, objects=k)
                           for i, (s, k) in enumerate(zip(scores, objects))])


BASE = report([0.80, 0.90, 0.70, 0.60, None], [1, 1, 2, 2, 1])
NEW = report([0.85, 0.91, 0.76, 0.60, 0.99], [1, 1, 2, 2, 1])


def test_paired_mean_and_standard_error():
    r = compare([(BASE["per_video"], NEW["per_video"])])
    d = np.array([5.0, 1.0, 6.0, 0.0])  # points; the fifth video has no base score and is left out
    se = d.std(ddof=1) / 2
    assert r["all"]["n"] == 4
    assert r["all"]["mean"] == pytest.approx(3.0)
    assert r["all"]["se"] == pytest.approx(se)
    assert r["all"]["se"] == pytest.approx(np.sqrt(((5 - 3) ** 2 + 2**2 + 3**2 + 3**2) / 3) / 2)
    assert r["pairs"][0]["base"] == pytest.approx(75.0) and r["pairs"][0]["new"] == pytest.approx(78.0)
    assert r["by_objects"][1]["mean"] == pytest.approx(3.0) and r["by_objects"][2]["mean"] == pytest.approx(3.0)
    # pairs pool: the same pair twice doubles n and shrinks the standard error by the pooled spread
    r2 = compare([(BASE["per_video"], NEW["per_video"])] * 2)
    assert r2["all"]["n"] == 8 and r2["all"]["mean"] == pytest.approx(3.0)
    assert r2["all"]["se"] == pytest.approx(np.concatenate([d, d]).std(ddof=1) / np.sqrt(8))


def test_cli_prints_table_and_json(tmp_path, capsys):
    (tmp_path / "a.json").write_text(json.dumps(BASE))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "report.json").write_text(json.dumps(NEW))  # an --out folder works too
    assert main([str(tmp_path / "a.json"), str(tmp_path / "b")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].endswith("78.0 vs 75.0: +3.00 +/- 1.47 (n=4)")
    assert lines[1] == "all: +3.00 +/- 1.47 (n=4)"
    assert json.loads(lines[-1])["all"]["mean"] == pytest.approx(3.0)


def test_different_prompts_are_refused(tmp_path):
    other = report([0.8, 0.9, 0.7, 0.6, 0.5], [1, 1, 2, 2, 1])
    other["per_video"][0]["prompt"] = "something else"
    (tmp_path / "a.json").write_text(json.dumps(BASE))
    (tmp_path / "b.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "a.json"), str(tmp_path / "b.json")])
    assert e.value.code == 1
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "a.json")])
    assert e.value.code == 2
