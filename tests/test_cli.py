"""The bsnn command line: demo end to end, exit codes, one-line errors."""
import json
import subprocess
import sys

from bsnn_lava.cli import main


def test_demo_writes_plot_and_summary(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--steps", "40"]) == 0
    out = capsys.readouterr().out
    assert "ANN" in out and "BSNN" in out and "IF" in out and "SIN" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["ann_accuracy"] > 0.9
    for label in ("BSNN", "IF", "BSNN graded"):
        assert len(summary["results"][label]["accuracy"]) == 40
        assert sum(summary["results"][label]["n_lost_input"].values()) == 0
    tuned = summary["finetuned"]  # graded spikes: 2 steps per layer, every frame the fine-tuned ANN's
    assert tuned["graded_first_frame_steps"] < tuned["first_frame_steps"]
    assert min(tuned["graded_agreement_at_frames"]) == 1.0 and "graded spikes" in out
    png = (tmp_path / "accuracy_vs_steps.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_bad_flags_exit_2_with_one_line():
    out = subprocess.run([sys.executable, "-m", "bsnn_lava.cli", "demo", "--steps", "0"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "--steps" in out.stderr
    assert "Traceback" not in out.stderr


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "demo" in capsys.readouterr().out
