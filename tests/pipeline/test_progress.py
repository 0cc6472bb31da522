import io

from pipeline.progress import Progress, format_eta


def test_progress_line_has_counts_throughput_and_eta():
    out = io.StringIO()
    p = Progress(10, stream=out)
    p.update(5, 3600.0, 1)
    line = out.getvalue().strip()
    assert "5/10 files" in line and "1.000 h audio" in line and "1 errors" in line and "audio-s/s" in line
    assert "ETA" in line
    p.update(10, 7200.0, 1)
    assert "ETA" not in out.getvalue().strip().splitlines()[-1]


def test_eta_format():
    assert format_eta(12.4) == "12 s" and format_eta(184) == "3 min 04 s" and format_eta(7500) == "2 h 05 min"
