r"""
Measure the resident memory of every process of ``image_sample.py`` while it samples a
batch much larger than the process itself, and print it beside the size of the batch
(N x H x W x 3 bytes). The images go to the final .npz through shards, so no process
should come near the batch's size, and none should grow with the number of images.

Each run is ``image_sample.py`` launched as a user launches it (one process, or
``--ranks 2`` under mpiexec or torchrun, found beside ``sys.executable``), with a random
checkpoint saved here, inside a small wrapper (this file with ``--child``) that reads the
process's memory from /proc/self/status around two functions of the unchanged program:

- after model load: its resident memory (VmRSS) when sampling starts (Python, PyTorch,
  the model);
- peak while sampling, first and second half: its highest resident memory (VmHWM, reset
  when sampling starts and when the rank has computed half of its images) while the ranks
  sample and rank 0 writes every round to a shard: equal halves show that nothing grows
  with the number of images;
- peak while writing the .npz: the highest while rank 0 streams the shards into the final
  .npz and writes the grid (the other ranks wait); the C heap's free memory is handed back
  (malloc_trim) and the peak reset before, so this is the writing's own peak;

and the largest process of the whole tree, launchers included (``getrusage`` of a second
wrapper around the launch, with the ranks' own peaks).

Two models (``--model``):

- ``zero``: the checkpoint is loaded, then the network is replaced by one that returns
  zeros, so that everything else of the program runs for real (per-image seeds and noise,
  the diffusion loop, gathering over ranks, shards, the streamed final file, the grid) on
  20,000 images of 128x128 (a 938 MiB batch) in a few minutes on one CPU core. Nothing
  that could hold images depends on the network.
- ``unet``: the real UNet (32 channels, one residual block per level, levels down to 8x8,
  attention at 8x8): what its activations add for one ``--batch_size``. Much slower on a
  CPU: use fewer images.

Processes run with OMP_NUM_THREADS=1 unless it is set. Examples (the README's figures):

    python scripts/benchmark_sampling_memory.py --model zero --num_samples 20000 \
        --image_size 128 --batch_sizes 100 --ranks 1,2
    python scripts/benchmark_sampling_memory.py --model unet --num_samples 1000 \
        --image_size 64 --batch_sizes 100
"""

import ctypes
import json
import os
import re
import resource
import runpy
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Optional

from guided_diffusion import dist_util, flags, script_util
from guided_diffusion.script_errors import run_program

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 2**20


# ---------------------------------------------------------------- inside the sampling process


def status_kib(field: str) -> int:
    """:return: a memory field of /proc/self/status ("VmRSS", "VmHWM") in KiB."""
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE).group(1))


def reset_peak() -> None:
    """Restart VmHWM from the current resident memory (Linux's clear_refs "5")."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def give_back_free_heap() -> None:
    """Return the C heap's free memory to the system (glibc's malloc_trim; else nothing)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


class MemoryProbe:
    """The memory of this process at the points of the sampling program it wraps (in MiB)."""

    def __init__(self):
        self.report: dict[str, object] = {"zero_model": False}

    def wrap_sampling(self) -> None:
        """
        Measure around ``shards.run_resumable`` (sampling: the peak of the first and of the
        second half of this rank's images) and ``sample_util.sample_to_npz`` (writing the
        final file).
        """
        from guided_diffusion import sample_util, shards

        run_resumable, sample_to_npz = shards.run_resumable, sample_util.sample_to_npz
        run_sharded = shards.run_sharded
        report = self.report

        def measured_run(*args, **kwargs):
            from guided_diffusion import dist_util

            report["rank"], report["ranks"] = dist_util.group_rank(), dist_util.group_size()
            report["baseline"] = status_kib("VmRSS") / 1024
            report["start_peak"] = status_kib("VmHWM") / 1024
            reset_peak()
            store = run_resumable(*args, **kwargs)
            report["second_half_peak"] = status_kib("VmHWM") / 1024
            give_back_free_heap()  # so that the next peak is the final file's own
            reset_peak()
            return store

        def measured_sharded(num_items, batch_size, compute, *args, **kwargs):
            half, done = num_items / report["ranks"] / 2, [0]

            def compute_and_measure(start: int, count: int):
                out = compute(start, count)
                done[0] += count
                if "first_half_peak" not in report and done[0] >= half:
                    report["first_half_peak"] = status_kib("VmHWM") / 1024
                    reset_peak()
                return out

            return run_sharded(num_items, batch_size, compute_and_measure, *args, **kwargs)

        def measured_npz(*args, **kwargs):
            paths = sample_to_npz(*args, **kwargs)
            report["final_file_peak"] = status_kib("VmHWM") / 1024
            return paths

        shards.run_resumable, sample_util.sample_to_npz = measured_run, measured_npz
        shards.run_sharded = measured_sharded

    def zero_model(self) -> None:
        """Load the checkpoint as usual, then sample with a network that returns zeros."""
        import torch

        from guided_diffusion import model_loading

        load = model_loading.load_model_and_diffusion

        class Zeros(torch.nn.Module):
            def forward(self, x, t, **kwargs):
                return torch.zeros_like(x)

        def zero_load(*args, **kwargs):
            _, diffusion = load(*args, **kwargs)
            self.report["zero_model"] = True
            return Zeros(), diffusion

        model_loading.load_model_and_diffusion = zero_load


def run_child(report_dir: str, model: str, script: str, argv: list[str]) -> None:
    """
    Run ``script`` with ``argv`` as ``__main__`` in this process, measured by a
    ``MemoryProbe``; write its report to ``report_dir``/rank{R}.json.
    """
    sys.path.insert(0, REPO)
    probe = MemoryProbe()
    probe.wrap_sampling()
    if model == "zero":
        probe.zero_model()
    sys.argv = [script, *argv]
    runpy.run_path(script, run_name="__main__")
    rank = probe.report.get("rank", os.getpid())
    with open(os.path.join(report_dir, f"rank{rank}.json"), "w") as f:
        json.dump(probe.report, f)


def run_tree(report_path: str, command: list[str]) -> None:
    """
    Run ``command``; write the peak resident memory of its largest process (MiB). The
    sampling processes reset their own peak (``reset_peak``), so for them this is only the
    peak since the last reset: their ``MemoryProbe`` reports keep the rest.
    """
    code = subprocess.run(command).returncode
    with open(report_path, "w") as f:
        json.dump({"largest": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}, f)
    sys.exit(code)


# ---------------------------------------------------------------- the benchmark


def model_flags(image_size: int) -> dict[str, object]:
    """:return: the flags of the tiny UNet: 32 channels, levels down to 8x8, attention there."""
    levels = max(1, (image_size // 8).bit_length())
    return dict(
        image_size=image_size,
        num_channels=32,
        num_res_blocks=1,
        channel_mult=",".join(["1"] * levels),
        attention_resolutions="8",
        learn_sigma=False,
        diffusion_steps=100,
    )


def make_checkpoint(folder: str, flags: dict[str, object]) -> list[str]:
    """Save a random model with ``flags`` as ``folder``/model.pt; :return: its flags."""
    import torch

    model, _ = script_util.create_model_and_diffusion(
        **{**script_util.model_and_diffusion_defaults(), **flags}
    )
    torch.save(model.state_dict(), os.path.join(folder, "model.pt"))
    return [item for k, v in flags.items() for item in (f"--{k}", str(v))]


def find_launcher(name: str) -> str:
    """:return: ``mpiexec`` or ``torchrun`` beside ``sys.executable``, else on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), name)
    found = beside if os.path.exists(beside) else shutil.which(name)
    if found is None:
        sys.exit(f"error: --launcher {name}: not found beside {sys.executable} or on PATH")
    return found


def launch_prefix(launcher: str, ranks: int) -> list[str]:
    """:return: the command line before the Python arguments for ``ranks`` processes."""
    if ranks == 1:
        return [sys.executable]
    if launcher == "torchrun":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        return [find_launcher("torchrun"), "--nproc_per_node", str(ranks),
                "--master_addr", "127.0.0.1", "--master_port", str(port)]  # fmt: skip
    mpiexec = find_launcher("mpiexec")
    info = subprocess.run([mpiexec, "--version"], capture_output=True, text=True).stdout
    local = ["--oversubscribe"] if "Open MPI" in info else ["-launcher", "fork"]
    return [mpiexec, *local, "-n", str(ranks), sys.executable]


def measure(
    folder: str,
    flags: list[str],
    *,
    model: str,
    num_samples: int,
    batch_size: int,
    ranks: int = 1,
    launcher: str = "mpiexec",
    steps: int = 2,
) -> dict[str, object]:
    """
    Run ``image_sample.py`` once with the checkpoint ``folder``/model.pt.

    :param flags: its model flags (from ``make_checkpoint``).
    :param model: "zero" or "unet" (see the module docstring).
    :return: {"seconds", "ranks": [per-rank report (MiB) in rank order], "largest": MiB,
        "file_bytes": size of the final .npz}.
    """
    run_dir = tempfile.mkdtemp(dir=folder)
    sample = [os.path.abspath(__file__), "--child", run_dir, model,
              os.path.join(REPO, "scripts", "image_sample.py"), *flags,
              "--model_path", os.path.join(folder, "model.pt"), "--seed", "0",
              "--num_samples", str(num_samples), "--batch_size", str(batch_size),
              "--timestep_respacing", str(steps)]  # fmt: skip
    tree = os.path.join(run_dir, "tree.json")
    command = [sys.executable, os.path.abspath(__file__), "--tree", tree,
               *launch_prefix(launcher, ranks), *sample]  # fmt: skip
    env = dict(os.environ, OPENAI_LOGDIR=run_dir, PYTHONPATH=REPO)
    env.setdefault("OMP_NUM_THREADS", "1")
    start = time.time()
    done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seconds = time.time() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr.decode()[-3000:]}")
    reports = [_read_json(os.path.join(run_dir, f"rank{r}.json")) for r in range(ranks)]
    if model == "zero" and not all(r["zero_model"] for r in reports):
        raise RuntimeError("image_sample.py no longer loads its model through model_loading")
    side = flags[flags.index("--image_size") + 1]
    npz = os.path.join(run_dir, f"samples_{num_samples}x{side}x{side}x3.npz")
    for r in reports:  # its peak over its whole life
        r["peak"] = max(r[k] for k in PHASES + ("start_peak",))
    largest = max([_read_json(tree)["largest"]] + [r["peak"] for r in reports])
    result = {"seconds": seconds, "ranks": reports, "largest": largest,
              "file_bytes": os.path.getsize(npz)}  # fmt: skip
    if result["file_bytes"] < num_samples * int(side) ** 2 * 3:
        raise RuntimeError(f"{npz} is smaller than the batch")
    shutil.rmtree(run_dir)
    return result


# The peaks a MemoryProbe reports, in the order of the run.
PHASES = ("first_half_peak", "second_half_peak", "final_file_peak")


def _read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def table_rows(result: dict[str, object], setting: dict[str, object]) -> list[str]:
    """:return: one markdown row per rank: the setting, its memory and its growth (MiB)."""
    batch = setting["num_samples"] * setting["image_size"] ** 2 * 3 / MIB
    rows = []
    for rank, report in enumerate(result["ranks"]):
        base = report["baseline"]
        cells = [
            setting["model"], f"{setting['num_samples']:,}",
            f"{setting['image_size']}x{setting['image_size']}", f"{batch:.0f}",
            f"{len(result['ranks'])}", str(setting["batch_size"]), f"{result['seconds']:.0f}",
            str(rank), f"{base:.0f}",
            *(f"{report[k]:.0f} (+{report[k] - base:.0f})" for k in PHASES),
            f"{result['largest']:.0f} ({result['largest'] / batch:.0%})" if rank == 0 else "",
        ]  # fmt: skip
        rows.append("| " + " | ".join(cells) + " |")
    return rows


HEADER = (
    "| model | images | size | batch (MiB) | ranks | `--batch_size` | seconds | rank "
    "| after model load | peak, sampling 1st half (+growth) | peak, sampling 2nd half "
    "(+growth) | peak, writing the .npz (+growth) | largest process (share of the batch) |\n"
    "|" + " --- |" * 13
)


def main(argv: Optional[list[str]] = None) -> None:
    parser = flags.create_parser(__doc__)
    parser.add_argument("--model", choices=("zero", "unet"), default="zero")
    parser.add_argument("--num_samples", type=int, default=20000, help="images per run")
    parser.add_argument("--image_size", type=int, default=128, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=2, help="sampling steps per image (>= 2)")
    parser.add_argument("--batch_sizes", default="100", help="comma-separated values")
    parser.add_argument("--ranks", default="1", help="comma-separated numbers of processes")
    parser.add_argument("--launcher", choices=("mpiexec", "torchrun"), default="mpiexec")
    parser.add_argument("--work_dir", default=None, help="where the runs write (default: temp)")
    args = flags.parse_args(parser, argv)
    dist_util.setup_dist()
    print(f"python {' '.join(sys.argv)}\n{HEADER}", flush=True)
    with tempfile.TemporaryDirectory(dir=args.work_dir) as folder:
        checkpoint_flags = make_checkpoint(folder, model_flags(args.image_size))
        for ranks in (int(r) for r in args.ranks.split(",")):
            for batch_size in (int(b) for b in args.batch_sizes.split(",")):
                setting = dict(model=args.model, num_samples=args.num_samples,
                               image_size=args.image_size, batch_size=batch_size)  # fmt: skip
                result = measure(folder, checkpoint_flags, model=args.model,
                                 num_samples=args.num_samples, batch_size=batch_size,
                                 ranks=ranks, launcher=args.launcher, steps=args.steps)  # fmt: skip
                print("\n".join(table_rows(result, setting)), flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        run_child(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])
    elif sys.argv[1:2] == ["--tree"]:
        run_tree(sys.argv[2], sys.argv[3:])
    else:
        run_program(main)
