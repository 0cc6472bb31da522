"""`parakeet-ray bench` end to end on a tiny random model: the table's JSON and the long-audio child process."""
import json

from jobs.cli import main


def test_bench_writes_batches_and_long_audio_memory(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "--preset", "tiny", "--batch-sizes", "1,2", "--seconds", "1.5", "--repeats", "1",
                 "--long-minutes", "0.5", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["precision"] == "fp32" and result["allocator"] in ("glibc", "tcmalloc", "jemalloc")
    assert [r["batch"] for r in result["batches"]] == [1, 2]
    for r in result["batches"]:
        assert r["features_s"] > 0 and r["encoder_s"] > 0 and r["decoding_s"] > 0
        assert abs(r["rtfx"] - r["audio_s"] / (r["features_s"] + r["encoder_s"] + r["decoding_s"])) < 1e-6
    (long,) = result["long_audio"]
    assert "error" not in long, long
    assert long["minutes"] == 0.5 and long["wall_s"] > 0 and long["tokens"] >= 0
    assert long["peak_rss_mb"] >= long["model_rss_mb"] > 0  # the peak is re-based after loading the model
