"""
What the whole suite shares: the tiny networks' flags (one place, so a test's network is named,
not re-typed), tiny checkpoints of them (the ``ckpt`` fixture), and helpers that run the programs
as a user does (``run``: a subprocess, alone or as two ranks).

Test modules import the names with ``from conftest import ...``; pytest finds the fixtures by
itself.
"""

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from guided_diffusion import script_util

from launchers import multi_rank_command

# 8x8 images, 32 channels, one block per level (8 and 4 pixels), attention at 4x4: the smallest
# networks, for tests that build them in-process
TINY_MODEL_8 = dict(
    image_size=8, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="4"
)
TINY_CLASSIFIER_8 = dict(
    image_size=8, classifier_width=32, classifier_depth=1, classifier_channel_mult="1,2",
    classifier_attention_resolutions="4",
)  # fmt: skip

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 4

# Tiny networks: 16x16 images, 32 channels, one block per level, attention at 8x8,
# 20 cosine steps sampled with 3.
DIFFUSION = dict(learn_sigma=True, diffusion_steps=20, noise_schedule="cosine")
MODEL = dict(
    image_size=16,
    num_channels=32,
    num_res_blocks=1,
    channel_mult="1,2",
    attention_resolutions="8",
    num_classes=NUM_CLASSES,
    **DIFFUSION,
)
CLASSIFIER = dict(
    image_size=16,
    classifier_width=32,
    classifier_depth=1,
    classifier_attention_resolutions="8",
    classifier_channel_mult="1,2",
    num_classes=NUM_CLASSES,
)
SUPER_RES = dict(
    large_size=32,
    small_size=16,
    num_channels=32,
    num_res_blocks=1,
    attention_resolutions="8",
    class_cond=True,
    num_classes=NUM_CLASSES,
    **DIFFUSION,
)
RESPACED_STEPS = 3
RESPACE = ["--timestep_respacing", str(RESPACED_STEPS)]


def flags(values: dict) -> list[str]:
    return [item for key, value in values.items() for item in (f"--{key}", str(value))]


def randomise_zero_init(model: torch.nn.Module) -> None:
    """Give the zero-initialised output layers weights, so outputs and gradients are not 0."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if (p == 0).all():
                p.copy_(0.05 * torch.randn(p.shape, generator=generator))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """Paths of tiny checkpoints: conditional and unconditional models, classifier, upsampler."""
    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    builders = {
        "cond": lambda: script_util.create_model_and_diffusion(
            **{**script_util.model_and_diffusion_defaults(), **MODEL, "class_cond": True}
        )[0],
        "uncond": lambda: script_util.create_model_and_diffusion(
            **{**script_util.model_and_diffusion_defaults(), **MODEL, "class_cond": False}
        )[0],
        "classifier": lambda: script_util.create_classifier(
            **{**script_util.classifier_defaults(), **CLASSIFIER}
        ),
        "sr": lambda: script_util.sr_create_model_and_diffusion(
            **{**script_util.sr_model_and_diffusion_defaults(), **SUPER_RES}
        )[0],
    }
    paths = {}
    for name, build in builders.items():
        model = build()
        randomise_zero_init(model)
        paths[name] = str(root / f"{name}.pt")
        torch.save(model.state_dict(), paths[name])
    return paths


def run(script: str, args: list[str], log_dir, launcher="", check=True, gpu=False):
    """Run scripts/<script> alone or as two ranks ("torchrun", "mpiexec"); CPU unless gpu."""
    command = [sys.executable, os.path.join(REPO, "scripts", script), *args]
    if launcher:
        command = multi_rank_command(launcher, command[1:])
    pythonpath = os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, OPENAI_LOGDIR=str(log_dir), OMP_NUM_THREADS="1", PYTHONPATH=pythonpath)
    if not gpu:
        env["CUDA_VISIBLE_DEVICES"] = ""  # gloo on the CPU even where GPUs exist
    process = subprocess.Popen(
        command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the launcher and every rank it started
        stdout, stderr = process.communicate()
        pytest.fail(f"{script} timed out:\n{stdout}\n{stderr}")
    if check:
        assert process.returncode == 0, f"{script} failed:\n{stdout}\n{stderr}"
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def load(path) -> dict[str, np.ndarray]:
    with np.load(path) as npz:
        return {key: npz[key] for key in npz.files}


def sample_flags(ckpt, model="cond", num_samples=5, batch_size=2, seed=1) -> list[str]:
    return [
        *flags(MODEL),
        "--class_cond",
        str(model == "cond"),
        *RESPACE,
        "--model_path",
        ckpt[model],
        "--num_samples",
        str(num_samples),
        "--batch_size",
        str(batch_size),
        "--seed",
        str(seed),
    ]


def import_script(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------- the published checkpoints


def _find_official_json() -> Path | None:
    """The shared compat file lives beside the repository (../shared) or inside it."""
    here = Path(__file__).resolve()
    for root in (here.parents[2], here.parents[1]):
        path = root / "shared" / "compat" / "official_checkpoints.json"
        if path.is_file():
            return path
    return None


OFFICIAL_JSON = _find_official_json()
OFFICIAL = json.loads(OFFICIAL_JSON.read_text()) if OFFICIAL_JSON else {}
# Outside CI a checkout without shared/ skips these; in CI (CI set) a missing file fails them,
# so the twelve official state dicts can never go untested there.
needs_json = pytest.mark.skipif(
    OFFICIAL_JSON is None and not os.environ.get("CI"),
    reason="shared/compat/official_checkpoints.json not found beside or inside the repository",
)


def build_from_flags(flags: dict) -> torch.nn.Module:
    """Build a model the way the scripts do: the flags merged over the matching defaults."""
    if "large_size" in flags:
        defaults, factory = script_util.sr_model_and_diffusion_defaults(), script_util.sr_create_model_and_diffusion
    elif "classifier_width" in flags:
        defaults, factory = (
            script_util.classifier_and_diffusion_defaults(),
            script_util.create_classifier_and_diffusion,
        )
    else:
        defaults, factory = script_util.model_and_diffusion_defaults(), script_util.create_model_and_diffusion
    model, _ = factory(**{**defaults, **{k: v for k, v in flags.items() if k in defaults}})
    return model
