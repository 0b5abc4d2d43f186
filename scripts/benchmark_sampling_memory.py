r"""
Measure the peak resident memory of every process of ``image_sample.py`` while it samples
a large batch (by default 20,000 images of 16x16 from a tiny random model in 2 steps), for
several ``--batch_size`` values and numbers of ranks, and print it beside the size of the
batch itself. The images go to the final .npz through shards, so no process should come
near the batch's size.

Example (the figures in the README):

    python scripts/benchmark_sampling_memory.py --num_samples 20000 --image_size 16 \
        --batch_sizes 100,1000 --ranks 1,2
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from guided_diffusion import script_util  # noqa: E402

# A tiny random UNet: what is measured is the sampling program's memory, not the model's.
MODEL = dict(
    num_channels=32,
    num_res_blocks=1,
    channel_mult="1,2",
    attention_resolutions="8",
    learn_sigma=False,
    diffusion_steps=100,
)

# Runs a script and writes this process's peak RSS (KiB) to $RSS_DIR/rank{RANK}.txt at exit.
_RUNNER = """
import atexit, os, resource, runpy, sys
def report():
    path = os.path.join(os.environ["RSS_DIR"], "rank%s.txt" % os.environ.get("RANK", "0"))
    with open(path, "w") as f:
        f.write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))
atexit.register(report)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def make_checkpoint(folder: str, image_size: int) -> list[str]:
    """Save a random tiny model; :return: its model flags for image_sample.py."""
    flags = dict(MODEL, image_size=image_size)
    kwargs = {**script_util.model_and_diffusion_defaults(), **flags}
    model, _ = script_util.create_model_and_diffusion(**kwargs)
    torch.save(model.state_dict(), os.path.join(folder, "model.pt"))
    return [item for k, v in flags.items() for item in (f"--{k}", str(v))]


def measure(folder: str, flags: list[str], batch_size: int, ranks: int, args) -> dict:
    """Run one sampling job; :return: seconds and the peak RSS (MiB) of each rank."""
    run_dir = tempfile.mkdtemp(dir=folder)
    runner = os.path.join(folder, "rss_runner.py")
    with open(runner, "w") as f:
        f.write(_RUNNER)
    command = [
        runner, os.path.join(REPO, "scripts", "image_sample.py"), *flags,
        "--model_path", os.path.join(folder, "model.pt"), "--num_samples", str(args.num_samples),
        "--batch_size", str(batch_size), "--timestep_respacing", str(args.steps), "--seed", "0",
        "--grid", "False",
    ]  # fmt: skip
    if ranks > 1:
        command = ["torchrun", "--nproc_per_node", str(ranks), "--master_port", "29517", *command]
    else:
        command = [sys.executable, *command]
    env = dict(os.environ, RSS_DIR=run_dir, OPENAI_LOGDIR=run_dir, PYTHONPATH=REPO)
    start = time.time()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    seconds = time.time() - start
    peaks = []
    for rank in range(ranks):
        with open(os.path.join(run_dir, f"rank{rank}.txt")) as f:
            peaks.append(int(f.read()) / 1024)
    return {"seconds": seconds, "peaks": peaks}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num_samples", type=int, default=20000, help="images per run")
    parser.add_argument("--image_size", type=int, default=16, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=2, help="sampling steps per image")
    parser.add_argument(
        "--batch_sizes", default="100,1000", help="comma-separated --batch_size values"
    )
    parser.add_argument("--ranks", default="1", help="comma-separated numbers of ranks")
    args = parser.parse_args()
    batch_mib = args.num_samples * args.image_size**2 * 3 / 2**20
    print(
        f"{args.num_samples} images of {args.image_size}x{args.image_size} in {args.steps} "
        f"steps: the batch (arr_0) is {batch_mib:.0f} MiB"
    )
    print("ranks  --batch_size  seconds  peak RSS per rank (MiB)")
    with tempfile.TemporaryDirectory() as folder:
        flags = make_checkpoint(folder, args.image_size)
        for ranks in (int(r) for r in args.ranks.split(",")):
            for batch_size in (int(b) for b in args.batch_sizes.split(",")):
                result = measure(folder, flags, batch_size, ranks, args)
                peaks = ", ".join(f"{p:.0f}" for p in result["peaks"])
                print(f"{ranks:5d}  {batch_size:12d}  {result['seconds']:7.1f}  {peaks}")


if __name__ == "__main__":
    main()
