"""The step benchmark runs at a tiny CPU shape (its GPU numbers are in the README)."""
import bench_step


def test_bench_step_tiny_real_lengths():
    rows = bench_step.main(["--shape", "tiny", "--lengths", "real", "--seq", "512", "--batch", "16", "--steps", "1",
                            "--warmup", "1", "--micro_tokens", "2048"])
    assert [r["step"].split(",")[0] for r in rows] == ["authors'-style", "rasft.py", "rasft.py"]
    assert all(r["real_tok_s"] > 0 and r["mfu"] > 0 for r in rows)
    # sorted into token-budget micro-batches, rasft.py computes far less padding than micro-batches of 2 in order
    assert rows[1]["padding_eff"] > rows[0]["padding_eff"] + 0.05
