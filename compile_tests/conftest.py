import os
import sys

import pytest
import torch

# the tests import their shared cases and graph helpers from this directory
sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(autouse=True)
def _one_cpu_thread():
    """The shapes here are tiny, so threads buy nothing; on a loaded CI machine they cost a lot: an
    OpenMP region waits for a descheduled peer thread, which made each small bmm ~10 ms instead of
    ~0.1 ms (measured on a shared 2-core box). Restored after each test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test counts its own frames and recompiles: start from an empty dynamo cache."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
