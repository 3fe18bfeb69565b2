"""python -m fpolar: sub-commands and help."""

import pytest
import torch

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


def test_demo_streams_rows_as_it_trains(capsys):
    """The header and each row are printed (and flushed) as training reaches them, before the summary."""
    assert main(["demo", "--steps", "3", "--every", "1", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["step"])
    rows = [line.split()[0] for line in lines[header + 2 : header + 5]]
    assert rows == ["1", "2", "3"] and lines.index(next(x for x in lines if x.startswith("   val"))) > header + 4


def test_unknown_command_lists_the_commands_and_exits_2(capsys):
    assert main(["nosuch"]) == 2
    err = capsys.readouterr().err
    assert "unknown command 'nosuch' (choose from demo, bench, paper)" in err
    assert all(f"  {c}" in err for c in ("demo", "bench", "paper"))


@pytest.mark.parametrize("command", [["demo"], ["bench"], ["paper", "--quick"]])
@pytest.mark.parametrize("device", ["cuda:7", "gpu"])
def test_an_unusable_device_is_one_line_naming_the_available_ones(command, device, capsys):
    if device == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    with pytest.raises(SystemExit) as e:
        main(command + ["--device", device])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--device {device!r}" in err[0] and "available here: cpu" in err[0]


@pytest.mark.parametrize("argv", [["demo", "--every", "0"], ["demo", "--steps", "-3"], ["bench", "--reps", "0"],
                                  ["paper", "--steps", "0"], ["demo", "--every", "x"]])
def test_invalid_numbers_are_refused_by_argparse(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert "error: argument --" in capsys.readouterr().err


def test_paper_filter_matching_nothing_is_an_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["paper", "--quick", "--only", "nomatch"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--only 'nomatch' matches no optimizer; names: PolarGrad (QDWH)" in err


def test_paper_divergence_says_the_lr_expects_qdwh(capsys):
    assert main(["paper", "--quick", "--problem", "quadratic", "--only", "NS polar_express"]) == 0
    out = capsys.readouterr().out
    assert "diverged at step" in out and "the paper's lr was tuned for its QDWH polar factor" in out
