"""
One rank of tests/test_train_multirank.py, started by mpiexec or torchrun: runs
scripts/image_train.py unchanged, and afterwards writes what this rank ended with to
<out_dir>/rank<R>.pt (final weights, the first images it trained on, how many checkpoint
files it wrote, how many log outputs it had) for the test to compare across ranks.

Usage: python train_worker.py OUT_DIR [image_train.py flags...]
"""

import importlib.util
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

import torch  # noqa: E402

from guided_diffusion import dist_util, logger, train_util  # noqa: E402


def main() -> None:
    out_dir, script_args = sys.argv[1], sys.argv[2:]
    torch.set_num_threads(1)
    seen = {"first_batch": None, "checkpoint_writes": 0}

    real_save = train_util.atomic_torch_save

    def counting_save(obj, path, **kwargs):
        seen["checkpoint_writes"] += 1
        return real_save(obj, path, **kwargs)

    train_util.atomic_torch_save = counting_save

    real_run_loop = train_util.BaseTrainLoop.run_loop

    def run_loop(self):
        data = self.data

        def recording():
            for batch, cond in data:
                if seen["first_batch"] is None:
                    seen["first_batch"] = batch.clone()
                yield batch, cond

        self.data = recording()
        real_run_loop(self)
        seen["weights"] = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        seen["ema"] = [p.detach().cpu().clone() for p in self.ema_params[0]]
        seen["rank"] = dist_util.get_rank()
        seen["log_outputs"] = len(logger.get_current().output_formats)
        seen["log_dir"] = logger.get_dir()

    train_util.BaseTrainLoop.run_loop = run_loop

    spec = importlib.util.spec_from_file_location(
        "image_train", os.path.join(REPO, "scripts", "image_train.py")
    )
    image_train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(image_train)
    image_train.main(script_args)

    torch.save(seen, os.path.join(out_dir, f"rank{seen['rank']}.pt"))


if __name__ == "__main__":
    main()
