"""
One process (or one rank under torchrun / mpiexec) of tests/test_train_resume.py: runs
scripts/image_train.py (or classifier_train.py with ``--classifier``) unchanged, except that
when ``GD_TEST_SIGTERM=RANK:STEP`` is set, rank RANK sends itself SIGTERM as it takes the
batch of step STEP, as a scheduler stopping the job would.

Usage: python resume_worker.py [--classifier] [training flags...]
"""

import importlib.util
import os
import signal
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from guided_diffusion import dist_util, image_datasets  # noqa: E402


def sigterm_at(rank: int, step: int) -> None:
    """Make the training data (the first ``load_data`` stream) send SIGTERM to this process
    at batch ``step`` on ``rank``."""
    real = image_datasets.load_data

    def load_data(**kwargs):
        image_datasets.load_data = real  # the training data only, not the validation data
        data = real(**kwargs)

        def stream():
            for number, item in enumerate(data, kwargs.get("start_batch", 0)):
                if number == step and dist_util.get_rank() == rank:
                    os.kill(os.getpid(), signal.SIGTERM)
                yield item

        return stream()

    image_datasets.load_data = load_data


def main(argv: list[str]) -> None:
    target = os.environ.get("GD_TEST_SIGTERM")
    if target:
        sigterm_at(*(int(part) for part in target.split(":")))
    program = "image_train"
    if argv and argv[0] == "--classifier":
        program, argv = "classifier_train", argv[1:]
    spec = importlib.util.spec_from_file_location(
        program, os.path.join(REPO, "scripts", f"{program}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
