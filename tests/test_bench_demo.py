"""tests/bench_demo.py pairs every run against --baseline (the end-to-end run is in test_train.py)."""
import pytest

import bench_demo


def result(before, after):
    return {"before": {"all": before}, "after": {"all": after}, "running": 1.0, "seconds": 10.0}


def test_runs_are_paired_against_the_baseline():
    results = {"rasft": [result(0.5, 0.80), result(0.5, 0.70)],
               "rasft --token_weight false": [result(0.5, 0.85), result(0.5, 0.71)]}
    rows = bench_demo.table(results, "rasft").splitlines()
    assert "after − rasft, paired: mean ± sd" in rows[0]
    # differences per seed: +5 and +1 points: mean +3.0, sd 2.8
    assert rows[3].startswith("| rasft --token_weight false | all | 50.0 | 78.0 ± 9.9 | +3.0 ± 2.8 |")
    assert rows[2].startswith("| rasft | all | 50.0 | 75.0 ± 7.1 |  |")


def test_the_baseline_must_be_one_of_the_runs(capsys):
    with pytest.raises(SystemExit):
        bench_demo.main(["--runs", "rasft", "dft", "--baseline", "sft"])
    assert "--baseline 'sft' is not one of --runs: 'rasft', 'dft'" in capsys.readouterr().err
