"""Distributed fpolar on gloo: one spawn per world size (2 and 4) runs every check in checks.py; a
one-rank world runs the checks marked for it (``worlds`` holding 1)."""

from __future__ import annotations

import os
import sys
import tempfile

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import assert_check, run_world  # noqa: E402

import checks  # noqa: E402

SHARED = tempfile.mkdtemp(prefix="fpolar_dist_shared_")


@pytest.fixture(scope="module")
def world4():
    return run_world(4, SHARED)


@pytest.fixture(scope="module")
def world2(world4):  # after world 4: it loads what world 4 saved
    return run_world(2, SHARED)


@pytest.fixture(scope="module")
def world1():
    return run_world(1, SHARED)


@pytest.mark.parametrize("name", [n for n, f in checks.CHECKS if 1 in getattr(f, "worlds", (2, 4))])
def test_world1(world1, name):
    assert_check(world1, name, 1)


@pytest.mark.parametrize("name", [n for n, f in checks.CHECKS if 4 in getattr(f, "worlds", (2, 4))])
def test_world4(world4, name):
    assert_check(world4, name, 4)


@pytest.mark.parametrize("name", [n for n, f in checks.CHECKS if 2 in getattr(f, "worlds", (2, 4))])
def test_world2(world2, name):
    assert_check(world2, name, 2)
