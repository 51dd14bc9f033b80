"""The step benchmark runs at a tiny CPU shape (its GPU numbers are in the README)."""
import bench_step


def test_bench_step_tiny():
    rows = bench_step.main(["--shape", "tiny", "--steps", "1", "--seq", "64", "--micro_batch", "2"])
    assert [r["step"].split(",")[0] for r in rows] == ["authors'-style", "rasft.py --loss rasft", "rasft.py --loss sft"] * 2
    assert all(r["tok_s"] > 0 and r["mfu"] > 0 for r in rows)
