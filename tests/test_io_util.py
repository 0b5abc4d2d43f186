import io
import os
import stat

import pytest
import torch

from guided_diffusion import io_util
from guided_diffusion.io_util import atomic_torch_save, atomic_write, is_local_path


def test_atomic_write_replaces_the_file_only_when_the_block_succeeds(tmp_path):
    path = tmp_path / "sub" / "f.bin"
    with atomic_write(str(path)) as f:
        f.write(b"old")
    assert path.read_bytes() == b"old"
    with pytest.raises(RuntimeError):
        with atomic_write(str(path)) as f:
            f.write(b"half of the new cont")
            raise RuntimeError("killed while writing")
    assert path.read_bytes() == b"old"
    assert os.listdir(path.parent) == ["f.bin"]  # no temporary left behind
    with atomic_write(str(path), "w") as f:
        f.write("new")
    assert path.read_text() == "new"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600


def test_atomic_write_needs_a_write_mode(tmp_path):
    with pytest.raises(ValueError, match="write mode"):
        with atomic_write(str(tmp_path / "x"), "rb"):
            pass


def test_atomic_torch_save_round_trip(tmp_path):
    path = str(tmp_path / "m.pt")
    atomic_torch_save({"w": torch.arange(3)}, path)
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.arange(3))


def test_remote_paths_never_upload_a_partial_file(monkeypatch):
    opened = []

    class FakeBlobFile(io.BytesIO):
        def __init__(self, path, mode, **kwargs):
            super().__init__()
            opened.append((path, mode, kwargs))

    monkeypatch.setattr(io_util.bf, "BlobFile", FakeBlobFile)
    assert not is_local_path("gs://bucket/run/model000010.pt") and is_local_path("/tmp/x")
    with atomic_write("gs://bucket/run/model000010.pt") as f:
        f.write(b"data")
    assert opened == [("gs://bucket/run/model000010.pt", "wb", {"partial_writes_on_exc": False})]
