"""
Process groups and devices. (Placeholder being replaced by the full version: single
process only.)
"""

import io

import blobfile as bf
import torch
import torch.distributed as dist


def setup_dist() -> None:
    """Set up a process group; a single process needs none."""


def dev() -> torch.device:
    """The device this process should use."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def load_state_dict(path: str, **kwargs):
    """Load a checkpoint safely (tensors only: a .pt file cannot run code)."""
    with bf.BlobFile(path, "rb") as f:
        data = f.read()
    kwargs.setdefault("weights_only", True)
    return torch.load(io.BytesIO(data), **kwargs)


def sync_params(params) -> None:
    """Broadcast parameters from rank 0 (nothing to do alone)."""
    if dist.is_available() and dist.is_initialized():
        for p in params:
            with torch.no_grad():
                dist.broadcast(p, 0)
