"""Shared fixtures. Tests are CPU-only, seeded and offline."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO_ROOT = Path(__file__).resolve().parents[1]
# The training scripts and main.py live at the repository root: `import train_vae` in tests.
sys.path.insert(0, str(REPO_ROOT))
SHARED_MAT = REPO_ROOT.parent / "shared" / "data" / "digit69_28x28.mat"


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded generator: every test that draws random data starts from the same state."""
    return np.random.default_rng(0)


@pytest.fixture
def digit69_path() -> Path:
    """The real digit69 fMRI file beside the repository; the test is skipped where it is absent."""
    if not SHARED_MAT.is_file():
        pytest.skip(f"real data not found at {SHARED_MAT}")
    return SHARED_MAT


# Tiny models run fastest on one thread, and tests that start subprocesses do not oversubscribe 2 cores.
torch.set_num_threads(1)


@pytest.fixture
def fresh_accelerate_state():
    """Each in-process training run builds its own Accelerator: accelerate keeps process-wide singletons."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
