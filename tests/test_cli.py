"""python -m fpolar: sub-commands and help."""

import pytest

from fpolar.apps.cli import main


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("demo", "bench", "paper"):
        assert f"  {name}" in out


def test_demo_prints_the_table(capsys):
    assert main(["demo", "--steps", "4", "--every", "2", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "PolarGrad" in out and "Muon" in out and "AdamW" in out and "ms/st" in out
    rows = [line.split() for line in out.splitlines() if line.strip().split(" ")[0] in {"1", "2", "4"}]
    assert len(rows) == 3 and all(len(r) == 4 for r in rows)


def test_bench_runs_on_cpu(capsys):
    assert main(["bench", "--device", "cpu", "--reps", "1"]) == 0
    out = capsys.readouterr().out
    assert "torch.optim.Muon" in out and "fpolar PolarGrad" in out


@pytest.mark.parametrize("command", ["demo", "bench", "paper"])
def test_each_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0
    assert "usage: python -m fpolar" in capsys.readouterr().out
