"""
--random_flip of the training programs: True (the original's horizontal-flip augmentation)
by default, False reaches the data loader of each program.
"""

import importlib.util
import os

import numpy as np
import pytest
from PIL import Image

from guided_diffusion import dist_util, logger

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "PMI_RANK",
               "PMI_SIZE", "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")


class _Stop(Exception):
    pass


def _load_script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    for name in LAUNCH_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENAI_LOGDIR", str(tmp_path / "log"))
    folder = tmp_path / "images"
    folder.mkdir()
    for i, c in enumerate(("a", "b", "a", "b")):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(folder / f"{c}_{i}.png")
    yield str(folder)
    logger.reset()
    dist_util.cleanup()


@pytest.mark.parametrize(
    "script, flags",
    [
        ("image_train", ["--image_size", "8"]),
        ("classifier_train", ["--image_size", "8", "--num_classes", "2"]),
        ("super_res_train", ["--large_size", "8", "--small_size", "4"]),
    ],
)
@pytest.mark.parametrize("given, expected", [([], True), (["--random_flip", "False"], False)])
def test_random_flip_reaches_the_loader(script, flags, given, expected, data_dir, monkeypatch):
    module = _load_script(script)
    seen = {}

    def fake_load_data(**kwargs):
        seen.update(kwargs)
        raise _Stop

    monkeypatch.setattr(module, "load_data", fake_load_data)
    with pytest.raises(_Stop):
        module.main(["--data_dir", data_dir, *flags, *given])
    assert seen["random_flip"] is expected
