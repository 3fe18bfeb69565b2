"""``benchmarks/grad_addresses.py`` without a GPU: ``moved`` names exactly the params whose address
changed (or that are new), and a small smoke run prints a row per step."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import grad_addresses  # noqa: E402


def test_moved_names_changed_and_new_addresses_only():
    before = {"a": 10, "b": 20, "c": 30}
    now = {"a": 10, "b": 21, "c": 30, "d": 40}
    assert grad_addresses.moved(before, now) == ["b", "d"]
    assert grad_addresses.moved(now, now) == []


def test_smoke_run_prints_a_row_per_step(capsys):
    assert grad_addresses.main(["--device", "cpu", "--small", "--steps", "3"]) == 0
    rows = [ln for ln in capsys.readouterr().out.splitlines()[1:] if ln.strip()]
    assert [int(r.split()[0]) for r in rows] == [0, 1, 2]
