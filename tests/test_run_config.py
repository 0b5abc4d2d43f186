"""
The run configuration beside every checkpoint: written by the training programs, and
enough on its own to sample, upsample, guide, evaluate bits/dim and resume (the programs
run in this process on tiny networks).
"""

import argparse
import importlib.util
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from guided_diffusion import dist_util, flags, logger, run_config
from guided_diffusion.io_util import hash_file
from guided_diffusion.run_config import RunConfigError
from guided_diffusion.script_util import add_dict_to_argparser, model_and_diffusion_defaults

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIFFUSION = ["--diffusion_steps", "10", "--noise_schedule", "cosine", "--learn_sigma", "True"]
MODEL = [
    "--image_size", "8", "--num_channels", "32", "--num_res_blocks", "1",
    "--channel_mult", "1,2", "--attention_resolutions", "4", *DIFFUSION,
]  # fmt: skip
SUPER_RES = [
    "--large_size", "32", "--small_size", "8", "--num_channels", "32",
    "--num_res_blocks", "1", "--attention_resolutions", "8", *DIFFUSION,
]  # fmt: skip
CLASSIFIER = [
    "--image_size", "8", "--classifier_width", "32", "--classifier_depth", "1",
    "--classifier_channel_mult", "1,2", "--classifier_attention_resolutions", "4", *DIFFUSION,
]  # fmt: skip
TRAIN = ["--batch_size", "2", "--save_interval", "2"]
SAMPLE = ["--timestep_respacing", "3", "--num_samples", "3", "--batch_size", "2", "--seed", "1"]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def run_main(monkeypatch):
    """run_main(script, argv, log_dir): a program's main() in this process, logging to log_dir."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    def run(script: str, argv: list[str], log_dir) -> None:
        monkeypatch.setenv("OPENAI_LOGDIR", str(log_dir))
        try:
            _script(script).main([str(a) for a in argv])
        finally:
            logger.reset()
            dist_util.cleanup()

    yield run
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Six 8x8 images of three classes (cat, dog, owl)."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(2):
        for name in ("cat", "dog", "owl"):
            pixels = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{name}_{i}.png")
    return folder


def _npz(path) -> dict[str, np.ndarray]:
    with np.load(path) as npz:
        return {key: npz[key] for key in npz.files}


def _same_npz(a, b) -> None:
    a, b = _npz(a), _npz(b)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


# ---------------------------------------------------------------- the file


def test_written_beside_each_model_and_ema_checkpoint(images, run_main, tmp_path):
    run = tmp_path / "run"
    run_main("image_train", ["--data_dir", images, *MODEL, "--class_cond", "True", *TRAIN,
                             "--max_steps", "2"], run)  # fmt: skip
    files = sorted(os.listdir(run))
    assert {"model000002.json", "ema_0.9999_000002.json"} <= set(files)
    assert "opt000002.json" not in files
    config = json.loads((run / "model000002.json").read_text())
    ema_config = json.loads((run / "ema_0.9999_000002.json").read_text())
    # each records its own checkpoint's hash, and a digest of its contents
    assert config["checkpoint"] == {"sha256": hash_file(str(run / "model000002.pt"))}
    assert ema_config["checkpoint"] == {"sha256": hash_file(str(run / "ema_0.9999_000002.pt"))}
    assert config["digest"] == run_config.content_digest(config)
    assert config["format_version"] == 2
    mine = ("checkpoint", "digest")
    assert {k: v for k, v in config.items() if k not in mine} == {
        k: v for k, v in ema_config.items() if k not in mine
    }
    assert config["kind"] == "model"
    assert config["model_flags"]["num_channels"] == 32
    assert config["model_flags"]["channel_mult"] == "1,2"
    assert config["diffusion_flags"]["noise_schedule"] == "cosine"
    assert "timestep_respacing" not in config["diffusion_flags"]
    assert config["data"] == {"num_classes": 3, "class_names": ["cat", "dog", "owl"]}
    assert config["guided_diffusion_version"]
    # the .pt files keep the original layout: a plain state dict of tensors
    state = torch.load(run / "model000002.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    log = (run / "log.txt").read_text()
    assert log.count("holds 3 classes but --num_classes is 1000") == 1


def test_config_path_and_unreadable_files(tmp_path):
    assert run_config.config_path("run/ema_0.9999_000600.pt") == "run/ema_0.9999_000600.json"
    assert run_config.read_run_config(str(tmp_path / "model000001.pt")) is None
    (tmp_path / "model000001.json").write_text("{not json")
    with pytest.raises(RunConfigError, match="model000001.json is unreadable"):
        run_config.read_run_config(str(tmp_path / "model000001.pt"))
    (tmp_path / "model000001.json").write_text('{"a": 1}')
    with pytest.raises(RunConfigError, match="model000001.json is not a run configuration"):
        run_config.read_run_config(str(tmp_path / "model000001.pt"))


def test_given_flags_tells_explicit_values_from_defaults():
    parser = argparse.ArgumentParser()
    add_dict_to_argparser(parser, model_and_diffusion_defaults())
    given = flags.given_flags(parser, ["--num_channels", "128", "--class_cond", "False"])
    assert given == {"num_channels", "class_cond"}  # given at their default values too
    parser.add_argument("--extra", action="append", default=[])  # as the demo's flags
    assert flags.given_flags(parser, ["--extra", "a"]) == {"extra"}
    assert flags.given_flags(parser, ["--num_channels", "64"]) == {"num_channels"}


# ---------------------------------------------------------------- using it


@pytest.fixture(scope="module")
def trained(images, tmp_path_factory):
    """A class-conditional model, an upsampler and a classifier, each trained two steps."""
    root = tmp_path_factory.mktemp("trained")
    mp = pytest.MonkeyPatch()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    runs = {
        "model": ("image_train", [*MODEL, "--class_cond", "True", *TRAIN, "--max_steps", "2"]),
        "sr": ("super_res_train", [*SUPER_RES, "--class_cond", "True", *TRAIN,
                                   "--max_steps", "2"]),
        "classifier": ("classifier_train", [*CLASSIFIER, *TRAIN, "--iterations", "2"]),
    }  # fmt: skip
    try:
        for name, (script, argv) in runs.items():
            mp.setenv("OPENAI_LOGDIR", str(root / name))
            _script(script).main([str(a) for a in ["--data_dir", images, *argv]])
            logger.reset()
            dist_util.cleanup()
    finally:
        mp.undo()
        torch.set_num_threads(threads)
    return {
        "model": root / "model" / "ema_0.9999_000002.pt",
        "sr": root / "sr" / "ema_0.9999_000002.pt",
        "classifier": root / "classifier" / "model000002.pt",
        "model_flags": [*MODEL, "--class_cond", "True", "--num_classes", "1000"],
        "sr_flags": [*SUPER_RES, "--class_cond", "True"],
    }


def test_sample_upsample_and_guide_from_the_checkpoint_alone(trained, run_main, tmp_path):
    model = ["--model_path", trained["model"]]
    run_main("image_sample", [*trained["model_flags"], *model, *SAMPLE], tmp_path / "full")
    run_main("image_sample", [*model, *SAMPLE], tmp_path / "alone")
    _same_npz(tmp_path / "full/samples_3x8x8x3.npz", tmp_path / "alone/samples_3x8x8x3.npz")
    labels = _npz(tmp_path / "alone/samples_3x8x8x3.npz")["arr_1"]
    assert labels.max() < 3  # drawn from the 3 trained classes, not from 0..999

    base = ["--base_samples", tmp_path / "alone/samples_3x8x8x3.npz"]
    sr = ["--model_path", trained["sr"], *base, *SAMPLE]
    run_main("super_res_sample", [*trained["sr_flags"], *sr], tmp_path / "sr_full")
    run_main("super_res_sample", sr, tmp_path / "sr_alone")
    _same_npz(tmp_path / "sr_full/samples_3x32x32x3.npz", tmp_path / "sr_alone/samples_3x32x32x3.npz")

    guided = [*model, "--classifier_path", trained["classifier"], *SAMPLE]
    full = [*trained["model_flags"], *CLASSIFIER]
    run_main("classifier_sample", [*full, *guided], tmp_path / "cs_full")
    run_main("classifier_sample", guided, tmp_path / "cs_alone")
    _same_npz(tmp_path / "cs_full/samples_3x8x8x3.npz", tmp_path / "cs_alone/samples_3x8x8x3.npz")


def test_bits_per_dim_from_the_checkpoint_alone(trained, images, run_main, tmp_path):
    nll = ["--model_path", trained["model"], "--data_dir", images, "--num_samples", "2",
           "--batch_size", "2", "--seed", "0", "--timestep_respacing", "3"]  # fmt: skip
    run_main("image_nll", [*trained["model_flags"], *nll], tmp_path / "full")
    run_main("image_nll", nll, tmp_path / "alone")
    for name in ("vb", "mse", "xstart_mse"):
        _same_npz(tmp_path / f"full/{name}_terms.npz", tmp_path / f"alone/{name}_terms.npz")


def test_resume_from_the_checkpoint_alone(trained, images, run_main, tmp_path):
    resume = trained["model"].parent / "model000002.pt"
    run_main("image_train", ["--data_dir", images, "--resume_checkpoint", resume, *TRAIN,
                             "--max_steps", "3"], tmp_path)  # fmt: skip
    config = json.loads((tmp_path / "model000003.json").read_text())
    assert config["model_flags"]["num_channels"] == 32 and config["model_flags"]["class_cond"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--num_channels", "64"], "--num_channels 64 contradicts the run configuration "
         ".*ema_0.9999_000002.json, which says the network was trained with --num_channels 32"),
        (["--class_cond", "False"], "--class_cond False contradicts .* --class_cond True"),
        (["--noise_schedule", "linear"], "--noise_schedule linear contradicts .* cosine"),
    ],
)  # fmt: skip
def test_a_contradicting_flag_is_refused(trained, argv, message, run_main, tmp_path):
    with pytest.raises(RunConfigError, match=message):
        run_main("image_sample", ["--model_path", trained["model"], *SAMPLE, *argv], tmp_path)
    assert not os.path.exists(tmp_path / "samples_3x8x8x3.npz")


def test_flags_that_do_not_change_the_network_may_differ(trained, run_main, tmp_path):
    argv = ["--model_path", trained["model"], *SAMPLE, "--dropout", "0.3", "--use_fp16", "True"]
    run_main("image_sample", argv, tmp_path)  # float32 on the CPU, with a warning
    assert os.path.exists(tmp_path / "samples_3x8x8x3.npz")


def test_a_checkpoint_of_another_kind_is_refused(trained, run_main, tmp_path):
    with pytest.raises(RunConfigError, match="holds a super-res network .* not a model network"):
        run_main("image_sample", ["--model_path", trained["sr"], *SAMPLE], tmp_path)


def test_without_the_file_the_flags_decide(trained, run_main, tmp_path):
    bare = tmp_path / "bare.pt"
    bare.write_bytes(trained["model"].read_bytes())
    run_main("image_sample", [*trained["model_flags"], "--model_path", bare, *SAMPLE], tmp_path)
    assert _npz(tmp_path / "samples_3x8x8x3.npz")["arr_1"].max() < 1000
    with pytest.raises(Exception, match="does not fit"):
        run_main("image_sample", ["--model_path", bare, *SAMPLE], tmp_path / "defaults")


def test_out_of_range_class_labels_name_where_the_classes_come_from(trained, run_main, tmp_path):
    saved = r"\(the 3 classes of the training folder, from .*ema_0\.9999_000002\.json\)"
    for script, extra in [("image_sample", []),
                          ("classifier_sample", ["--classifier_path", trained["classifier"]])]:
        argv = ["--model_path", trained["model"], *extra, *SAMPLE, "--class_labels", "1,5"]
        with pytest.raises(ValueError, match=rf"0\.\.2 {saved}; out of range: \[5\]") as info:
            run_main(script, argv, tmp_path / script)
        assert "--num_classes" not in str(info.value)


def test_class_count_origin(tmp_path):
    path = tmp_path / "model.pt"
    args = argparse.Namespace(model_path=str(path), num_classes=10, class_names=None)
    assert flags.class_count_origin(args) == "--num_classes 10"  # no configuration
    config = {"format": run_config.FORMAT, "kind": "model", "data": None,
              "model_flags": {"class_cond": True, "num_classes": 10}}  # fmt: skip
    run_config.write_run_config(str(path), config)
    expected = f"num_classes 10, from {tmp_path / 'model.json'}"
    assert flags.class_count_origin(args) == expected
    with pytest.raises(ValueError, match=r"0\.\.9 \(num_classes 10, from .*model\.json\)"):
        flags.class_labels_of(argparse.Namespace(**vars(args), class_labels="10"))
    config["model_flags"]["class_cond"] = False  # an unconditional model's count is not used
    run_config.write_run_config(str(path), config)
    assert flags.class_count_origin(args) == "--num_classes 10"


# ---------------------------------------------------------------- tied to its checkpoint


def _copy_checkpoint(source, folder, name="ema_0.9999_000002", config_of=None):
    """Copy a checkpoint and (unless config_of is False) the run configuration of
    ``config_of`` (default: its own) into ``folder``; return the new .pt path."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}.pt"
    target.write_bytes(source.read_bytes())
    if config_of is not False:
        config = (config_of or source).with_suffix(".json")
        (folder / f"{name}.json").write_text(config.read_text())
    return target


def _edit_config(checkpoint, edit, redigest: bool) -> None:
    """Apply ``edit`` to the configuration beside ``checkpoint``; with ``redigest``, record
    the new contents' digest too (a file written by some other tool)."""
    path = checkpoint.with_suffix(".json")
    config = json.loads(path.read_text())
    edit(config)
    if redigest:
        config["digest"] = run_config.content_digest(config)
    path.write_text(json.dumps(config))


def _reverse_middle(path, size=64 * 1024) -> None:
    """Alter a file inside its tensor data: reverse ``size`` bytes in its middle."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + size] = data[middle : middle + size][::-1]
    path.write_bytes(bytes(data))


def test_an_edited_configuration_is_refused(trained, run_main, tmp_path):
    model = _copy_checkpoint(trained["model"], tmp_path / "run")

    def other_schedule(config):
        config["diffusion_flags"]["noise_schedule"] = "linear"

    _edit_config(model, other_schedule, redigest=False)
    with pytest.raises(RunConfigError, match=r"ema_0\.9999_000002\.json was edited after it was "
                       "saved: its contents no longer match its digest") as info:  # fmt: skip
        run_main("image_sample", ["--model_path", model, *SAMPLE], tmp_path / "out")
    assert "\n" not in str(info.value) and "delete it" in str(info.value)
    assert not (tmp_path / "out" / "samples_3x8x8x3.npz").exists()


def test_a_checkpoint_altered_in_its_tensor_data_is_refused(trained, run_main, tmp_path):
    # with its run configuration: the SHA-256 recorded there, naming both files
    model = _copy_checkpoint(trained["model"], tmp_path / "run")
    _reverse_middle(model)
    with pytest.raises(ValueError, match=rf"{model} does not match its run configuration "
                       rf"{model.with_suffix('.json')}: its SHA-256") as info:  # fmt: skip
        run_main("image_sample", ["--model_path", model, *SAMPLE], tmp_path / "out")
    assert "\n" not in str(info.value)
    # without one: the CRC-32 of the altered zip record
    model.with_suffix(".json").unlink()
    with pytest.raises(ValueError, match=rf"{model} is damaged: its record .*data/\d+ .* does not "
                       "match the CRC-32 saved with it"):  # fmt: skip
        run_main("image_sample", [*trained["model_flags"], "--model_path", model, *SAMPLE],
                 tmp_path / "out")  # fmt: skip
    assert not (tmp_path / "out" / "samples_3x8x8x3.npz").exists()


def test_a_configuration_beside_another_checkpoint_is_refused(trained, run_main, tmp_path):
    # the EMA weights under the model's configuration: same flags, other bytes
    model = _copy_checkpoint(trained["model"], tmp_path / "run",
                             config_of=trained["model"].parent / "model000002.pt")  # fmt: skip
    with pytest.raises(ValueError, match="does not match its run configuration"):
        run_main("image_sample", ["--model_path", model, *SAMPLE], tmp_path / "out")


def test_resuming_checks_the_checkpoints_too(trained, images, run_main, tmp_path):
    run = tmp_path / "run"
    for name in ("model000002", "ema_0.9999_000002", "opt000002"):
        source = trained["model"].parent / f"{name}.pt"
        _copy_checkpoint(source, run, name, config_of=None if "opt" not in name else False)
    _reverse_middle(run / "ema_0.9999_000002.pt")
    with pytest.raises(ValueError, match=r"ema_0\.9999_000002\.pt does not match its run config"):
        run_main("image_train", ["--data_dir", images, "--resume_checkpoint",
                                 run / "model000002.pt", *TRAIN, "--max_steps", "3"], run)  # fmt: skip
    _reverse_middle(run / "ema_0.9999_000002.pt")  # back as it was
    _reverse_middle(run / "opt000002.pt")
    with pytest.raises(ValueError, match=r"opt000002\.pt is damaged: its record"):
        run_main("image_train", ["--data_dir", images, "--resume_checkpoint",
                                 run / "model000002.pt", *TRAIN, "--max_steps", "3"], run)  # fmt: skip
    assert not (run / "model000003.pt").exists()


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda c: c.update(extra=1), r": extra is not a key of a run configuration"),
        (lambda c: c["model_flags"].update(num_channel=32),
         r": model_flags\.num_channel is not a model flag of a model network"),
        (lambda c: c["model_flags"].update(image_size="8"),
         r": model_flags\.image_size must be an integer, got \"8\""),
        (lambda c: c["model_flags"].update(num_res_blocks=0),
         r": model_flags\.num_res_blocks must be a positive integer, got 0"),
        (lambda c: c["model_flags"].update(dropout=1.5),
         r": model_flags\.dropout must be a number in \[0, 1\), got 1\.5"),
        (lambda c: c["model_flags"].update(class_cond=1),
         r": model_flags\.class_cond must be true or false, got 1"),
        (lambda c: c["diffusion_flags"].update(noise_schedule="cosin"),
         r": diffusion_flags\.noise_schedule must be 'linear' or 'cosine', got \"cosin\""),
        (lambda c: c["diffusion_flags"].update(diffusion_steps=-10),
         r": diffusion_flags\.diffusion_steps must be a positive integer"),
        (lambda c: c["data"].update(num_classes=4),
         r": data\.num_classes must be the number of data\.class_names \(3\), got 4"),
        (lambda c: c["data"]["class_names"].append("cat"),
         r": data\.class_names must not name a class twice"),
        # more classes than the network has labels for: the last would be the null class
        (lambda c: (c["model_flags"].update(num_classes=3, class_dropout_prob=0.1),
                    c["data"].update(num_classes=4, class_names=["cat", "dog", "owl", "yak"])),
         r": data\.class_names lists 4 classes but the network has labels for 3"),
        (lambda c: c["model_flags"].update(class_cond=False),
         r": data must be null: the network is not class-conditional"),
        (lambda c: c.update(format_version=3), r": format_version is 3; this version reads 1 and 2"),
        (lambda c: c.update(checkpoint={"sha256": "abc"}), r": checkpoint must be"),
    ],
)  # fmt: skip
def test_every_key_is_checked_naming_it_and_the_file(trained, edit, message, tmp_path):
    model = _copy_checkpoint(trained["model"], tmp_path / "run")
    _edit_config(model, edit, redigest=True)
    with pytest.raises(RunConfigError, match=rf"run configuration {model.with_suffix('.json')}"
                       f"{message}") as info:  # fmt: skip
        run_config.read_run_config(str(model))
    assert "\n" not in str(info.value)


def test_the_null_class_is_never_drawn_as_a_class(images, run_main, tmp_path):
    # a model with a null class (label 3) whose configuration claims a fourth class
    run = tmp_path / "run"
    run_main("image_train", ["--data_dir", images, *MODEL, "--class_cond", "True",
                             "--num_classes", "3", "--class_dropout_prob", "0.1", *TRAIN,
                             "--max_steps", "1", "--save_interval", "1"], run)  # fmt: skip

    def fourth_class(config):
        config["data"] = {"num_classes": 4, "class_names": ["cat", "dog", "owl", "yak"]}

    _edit_config(run / "model000001.pt", fourth_class, redigest=True)
    with pytest.raises(RunConfigError, match="lists 4 classes but the network has labels for 3"):
        run_main("image_sample", ["--model_path", run / "model000001.pt", *SAMPLE,
                                  "--num_samples", "8"], tmp_path / "out")  # fmt: skip
    assert not (tmp_path / "out" / "samples_8x8x8x3.npz").exists()


def test_an_older_configuration_without_a_hash_loads_with_a_warning(trained, run_main, tmp_path):
    model = _copy_checkpoint(trained["model"], tmp_path / "run")

    def version_1(config):
        del config["checkpoint"], config["digest"]
        config["format_version"] = 1

    _edit_config(model, version_1, redigest=False)
    run_main("image_sample", ["--model_path", model, *SAMPLE], tmp_path / "out")
    full = tmp_path / "full"
    run_main("image_sample", ["--model_path", trained["model"], *SAMPLE], full)
    _same_npz(tmp_path / "out/samples_3x8x8x3.npz", full / "samples_3x8x8x3.npz")
    log = (tmp_path / "out" / "log.txt").read_text()
    assert log.count(f"warning: {model.with_suffix('.json')} records no SHA-256") == 1


# ---------------------------------------------------------------- autoguidance guides


@pytest.fixture(scope="module")
def guides(images, tmp_path_factory):
    """Guides for the trained model, one step each (at a high learning rate, so that they
    predict something): another image size, no learned variance, unconditional."""
    root = tmp_path_factory.mktemp("guides")
    mp = pytest.MonkeyPatch()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    one_step = [*TRAIN, "--max_steps", "1", "--save_interval", "1", "--lr", "0.01"]
    runs = {
        "size16": [*MODEL, "--image_size", "16", "--attention_resolutions", "8",
                   "--class_cond", "True"],
        "no_sigma": [*MODEL, "--learn_sigma", "False", "--class_cond", "True"],
        "uncond": MODEL,
    }  # fmt: skip
    try:
        for name, argv in runs.items():
            mp.setenv("OPENAI_LOGDIR", str(root / name))
            _script("image_train").main([str(a) for a in ["--data_dir", images, *argv, *one_step]])
            logger.reset()
            dist_util.cleanup()
    finally:
        mp.undo()
        torch.set_num_threads(threads)
    return {name: root / name / "model000001.pt" for name in runs}


@pytest.mark.parametrize(
    "guide, message",
    [
        ("size16", r"was trained with --image_size 16, the main model with --image_size 8"),
        ("no_sigma", r"was trained with --learn_sigma False, the main model with --learn_sigma "
         "True"),
    ],
)  # fmt: skip
def test_a_guide_that_does_not_fit_is_refused_before_sampling(
    trained, guides, run_main, tmp_path, guide, message
):
    argv = ["--model_path", trained["model"], "--guide_model_path", guides[guide],
            "--guidance_scale", "2", *SAMPLE]  # fmt: skip
    with pytest.raises(ValueError, match=rf"--guide_model_path {guides[guide]} \(see .*\) "
                       f"{message}") as info:  # fmt: skip
        run_main("image_sample", argv, tmp_path)
    assert "\n" not in str(info.value)
    assert "sampling..." not in (tmp_path / "log.txt").read_text()
    assert not list(tmp_path.glob("samples_*"))


def test_an_unconditional_guide_guides_a_conditional_model_without_labels(
    trained, guides, run_main, tmp_path
):
    plain = ["--model_path", trained["model"], *SAMPLE]
    run_main("image_sample", plain, tmp_path / "plain")
    guided = [*plain, "--guide_model_path", guides["uncond"], "--guidance_scale", "3"]
    run_main("image_sample", guided, tmp_path / "guided")
    plain, guided = (_npz(tmp_path / f / "samples_3x8x8x3.npz") for f in ("plain", "guided"))
    assert np.array_equal(plain["arr_1"], guided["arr_1"]) and guided["arr_1"].max() < 3
    assert not np.array_equal(plain["arr_0"], guided["arr_0"])


def test_a_conditional_guide_of_an_unconditional_model_is_refused(
    trained, guides, run_main, tmp_path
):
    argv = ["--model_path", guides["uncond"], "--guide_model_path", trained["model"],
            "--guidance_scale", "2", *SAMPLE]  # fmt: skip
    with pytest.raises(ValueError, match=rf"--guide_model_path {trained['model']} .* is "
                       "class-conditional but the main model is not"):  # fmt: skip
        run_main("image_sample", argv, tmp_path)
    assert not list(tmp_path.glob("samples_*"))


# ---------------------------------------------------------------- a model and its classifier


def test_a_classifier_with_its_own_class_count_guides_a_model_of_the_same_classes(
    trained, images, run_main, tmp_path
):
    # the model kept the default --num_classes 1000, the classifier was trained with 3:
    # both were trained on the same 3 classes, which is what counts
    run_main("classifier_train", ["--data_dir", images, *CLASSIFIER, "--num_classes", "3",
                                  *TRAIN, "--iterations", "1", "--save_interval", "1"],
             tmp_path / "classifier")  # fmt: skip
    classifier = tmp_path / "classifier" / "model000001.pt"
    guided = ["--model_path", trained["model"], "--classifier_path", classifier, *SAMPLE]
    run_main("classifier_sample", guided, tmp_path / "out")
    labels = _npz(tmp_path / "out" / "samples_3x8x8x3.npz")["arr_1"]
    assert labels.max() < 3

    # a classifier of other classes is refused, naming both and their classes
    others = tmp_path / "others"
    others.mkdir()
    for name in ("cat", "dog", "yak"):
        for i in range(2):
            (others / f"{name}_{i}.png").write_bytes((images / "cat_0.png").read_bytes())
    run_main("classifier_train", ["--data_dir", others, *CLASSIFIER, "--num_classes", "3",
                                  *TRAIN, "--iterations", "1", "--save_interval", "1"],
             tmp_path / "other_classifier")  # fmt: skip
    other = tmp_path / "other_classifier" / "model000001.pt"
    with pytest.raises(RunConfigError, match=r"--model_path .* was trained on the classes cat, "
                       r"dog, owl \(.*\) but --classifier_path .* on cat, dog, yak"):  # fmt: skip
        run_main("classifier_sample", ["--model_path", trained["model"], "--classifier_path",
                                       other, *SAMPLE], tmp_path / "refused")  # fmt: skip
    assert not list((tmp_path / "refused").glob("samples_*"))
