"""Fixtures shared by every test; the builders live in _helpers.py."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _restore_matmul_flags():
    """Tests that choose fp32 matmul paths set a process-wide flag; each test starts from the previous value."""
    saved = torch.backends.mkldnn.matmul.fp32_precision
    yield
    torch.backends.mkldnn.matmul.fp32_precision = saved


@pytest.fixture
def onednn_computes_in_bf16(monkeypatch):
    """A CPU where oneDNN takes the flag's name at its word (AMX): fp32 matmuls rounded to bfloat16 while
    ``torch.backends.mkldnn.matmul.fp32_precision == "bf16"`` (float64 products stay exact)."""
    import torch.nn.functional as F

    def rounding(op):
        def run(*args):
            if torch.backends.mkldnn.matmul.fp32_precision == "bf16":
                args = [a.bfloat16().float() if getattr(a, "dtype", None) == torch.float32 else a for a in args]
            return op(*args)

        return run

    monkeypatch.setattr(F, "linear", rounding(F.linear))
    monkeypatch.setattr(torch, "matmul", rounding(torch.matmul))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One finished run of the script on the TINY budget (200 frames, 150 updates, checkpoints at 100 and 200),
    shared by the tests that only read it or resume it elsewhere; copy it (``copy_run``) to change it."""
    from _helpers import run_script

    folder = tmp_path_factory.mktemp("tiny_run")
    run_script(folder)
    return folder
