"""The step benchmark runs at a tiny CPU shape (its GPU numbers are in the README)."""
import bench_step

ROWS = [v for v in bench_step.VARIANTS if v != "packed_sdpa"]  # on CPU packed rows go through SDPA anyway


def test_bench_step_tiny_real_lengths():
    rows = bench_step.main(["--shape", "tiny", "--lengths", "real", "--seq", "512", "--batch", "16", "--steps", "1",
                            "--warmup", "1", "--micro_tokens", "2048", "--rows", ",".join(ROWS), "--profile"])
    assert [r["step"].split(",")[0] for r in rows] == ["authors'-style"] + [f"rasft.py {v}" for v in ROWS]
    assert all(r["real_tok_s"] > 0 and r["mfu"] > 0 for r in rows)
    assert all("aten::mm" in r["profile"] for r in rows[1:])
    eff = {r["step"].split(",")[0]: r["padding_eff"] for r in rows}
    # sorted into token-budget micro-batches, rasft.py computes far less padding than micro-batches of 2 in order;
    # packed, less again
    assert eff["rasft.py padded"] > eff["authors'-style"] + 0.05 and eff["rasft.py packed"] > eff["rasft.py padded"] + 0.05
