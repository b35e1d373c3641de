import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # hub look-ups fail at once instead of hanging


@pytest.fixture(scope="session")
def tiny():
    """The bundled tiny base on the CPU in fp32, loaded once for the session."""
    from erasecli.models.registry import load_base

    return load_base("tiny", device="cpu")


@pytest.fixture(scope="session")
def torch_threads():
    import torch

    torch.set_num_threads(2)
