"""
One rank of the multi-process tests in tests/test_dist_util.py, started by mpiexec or
torchrun. Exercises dist_util, the logger and load_data, and writes what it saw to
<out_dir>/rank<R>.json for the test to compare across ranks.

Usage: python dist_worker.py OUT_DIR DATA_DIR CHECKPOINT
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from guided_diffusion import dist_util, logger  # noqa: E402
from guided_diffusion.image_datasets import load_data  # noqa: E402


def main() -> None:
    out_dir, data_dir, checkpoint = sys.argv[1:4]
    torch.set_num_threads(1)
    report = {
        "rank_before_setup": dist_util.get_rank(),
        "world_size_before_setup": dist_util.get_world_size(),
    }

    dist_util.setup_dist()
    dist_util.setup_dist()  # a second call must be harmless
    rank = dist_util.get_rank()
    report.update(
        rank=rank,
        world_size=dist_util.get_world_size(),
        local_rank=dist_util.get_local_rank(),
        torch_rank=dist.get_rank(),
        backend=dist.get_backend(),
        device=str(dist_util.dev()),
        is_main=dist_util.is_main_process(),
    )

    device = dist_util.dev()  # tensors live there for NCCL; the CPU for gloo
    # all_reduce: ranks hold 1 and 2, the sum is 3 everywhere.
    total = torch.tensor([rank + 1.0], device=device)
    dist.all_reduce(total)
    report["all_reduce_sum"] = total.item()

    # The collectives: rows in rank order, ragged rows (rank r holds r + 1), objects.
    report["gathered_rows"] = dist_util.all_gather_rows(torch.full((2,), rank)).tolist()
    ragged = dist_util.all_gather_ragged(torch.arange(rank + 1, device=device) + 10 * rank)
    report["gathered_ragged"] = [part.cpu().tolist() for part in ragged]
    report["gathered_objects"] = dist_util.all_gather_object({"rank": rank})
    report["broadcast"] = dist_util.broadcast_object(f"from {rank}")

    # sync_params: different initial weights per rank, rank 0's everywhere afterwards.
    torch.manual_seed(100 + rank)
    model = torch.nn.Linear(3, 2).to(device)
    report["weights_before_sync"] = [p.flatten().tolist() for p in model.parameters()]
    dist_util.sync_params(model.parameters())
    report["weights_after_sync"] = [p.flatten().tolist() for p in model.parameters()]

    # load_state_dict on rank 0 alone first (must not wait for the others), then on all.
    if rank == 0:
        dist_util.load_state_dict(checkpoint, map_location="cpu")
    state = dist_util.load_state_dict(checkpoint, map_location="cpu")
    report["checkpoint"] = {k: v.tolist() for k, v in state.items()}

    # load_data: each image is one flat colour (its index * 10), so the colours a rank sees
    # name the files of its shard.
    data = load_data(
        data_dir=data_dir,
        batch_size=1,
        image_size=8,
        class_cond=True,
        deterministic=True,
        num_workers=0,
    )
    seen = []
    for _ in range(2):
        images, cond = next(data)
        colour = round((images[0, 0, 0, 0].item() + 1) * 127.5)
        seen.append([colour, int(cond["y"][0])])
    report["data_seen"] = seen

    # logger: default directory agreed by all ranks, files only from rank 0, means global.
    logger.configure()
    report["log_dir"] = logger.get_dir()
    logger.logkv("step", 7)
    logger.logkv_mean("loss", rank + 1.0)  # ranks log 1.0 and 2.0
    logger.logkv_mean("loss", rank + 1.0)
    if rank == 1:
        logger.logkv_mean("grad_norm", 5.0)  # a key only one rank logs
    report["dumped"] = logger.dumpkvs()
    dist_util.barrier()

    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(report, f)
    dist_util.cleanup()


if __name__ == "__main__":
    main()
