"""Fixtures shared by every test; the builders live in _helpers.py."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One finished run of the script on the TINY budget (200 frames, 150 updates, checkpoints at 100 and 200),
    shared by the tests that only read it or resume it elsewhere; copy it (``copy_run``) to change it."""
    from _helpers import run_script

    folder = tmp_path_factory.mktemp("tiny_run")
    run_script(folder)
    return folder
