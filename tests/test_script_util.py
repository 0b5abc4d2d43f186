"""
Tests of the flag defaults and factories in script_util.
"""

import argparse

import pytest
import torch

from guided_diffusion import gaussian_diffusion as gd
from guided_diffusion import script_util as su
from guided_diffusion.respace import SpacedDiffusion
from guided_diffusion.unet import EncoderUNetModel, SuperResModel, UNetModel

# The defaults of the original guided-diffusion release (plus the new num_classes and
# classifier_channel_mult, which default to its behaviour).
ORIGINAL_DIFFUSION_DEFAULTS = dict(
    learn_sigma=False,
    diffusion_steps=1000,
    noise_schedule="linear",
    timestep_respacing="",
    use_kl=False,
    predict_xstart=False,
    rescale_timesteps=False,
    rescale_learned_sigmas=False,
)
ORIGINAL_MODEL_DEFAULTS = dict(
    image_size=64,
    num_channels=128,
    num_res_blocks=2,
    num_heads=4,
    num_heads_upsample=-1,
    num_head_channels=-1,
    attention_resolutions="16,8",
    channel_mult="",
    dropout=0.0,
    class_cond=False,
    use_checkpoint=False,
    use_scale_shift_norm=True,
    resblock_updown=False,
    use_fp16=False,
    use_new_attention_order=False,
)
ORIGINAL_CLASSIFIER_DEFAULTS = dict(
    image_size=64,
    classifier_use_fp16=False,
    classifier_width=128,
    classifier_depth=2,
    classifier_attention_resolutions="32,16,8",
    classifier_use_scale_shift_norm=True,
    classifier_resblock_updown=True,
    classifier_pool="attention",
)
SR_KEYS = {
    "large_size",
    "small_size",
    "num_channels",
    "num_res_blocks",
    "num_heads",
    "num_heads_upsample",
    "num_head_channels",
    "attention_resolutions",
    "dropout",
    "class_cond",
    "use_checkpoint",
    "use_scale_shift_norm",
    "resblock_updown",
    "use_fp16",
    "num_classes",
    "class_dropout_prob",
    *ORIGINAL_DIFFUSION_DEFAULTS,
}


def tiny_model_flags(**overrides) -> dict:
    flags = su.model_and_diffusion_defaults()
    flags.update(
        image_size=32,
        num_channels=32,
        num_res_blocks=1,
        attention_resolutions="16",
        channel_mult="1,2",
        num_head_channels=32,
        diffusion_steps=20,
    )
    flags.update(overrides)
    return flags


def test_defaults_match_the_original():
    assert su.NUM_CLASSES == 1000
    assert su.diffusion_defaults() == ORIGINAL_DIFFUSION_DEFAULTS
    assert su.model_and_diffusion_defaults() == {
        **ORIGINAL_MODEL_DEFAULTS,
        "num_classes": 1000,
        "class_dropout_prob": 0.0,
        **ORIGINAL_DIFFUSION_DEFAULTS,
    }
    assert su.classifier_defaults() == {
        **ORIGINAL_CLASSIFIER_DEFAULTS,
        "classifier_channel_mult": "",
        "num_classes": 1000,
    }
    assert su.classifier_and_diffusion_defaults() == {
        **su.classifier_defaults(),
        **ORIGINAL_DIFFUSION_DEFAULTS,
    }
    sr = su.sr_model_and_diffusion_defaults()
    assert set(sr) == SR_KEYS
    assert (sr["large_size"], sr["small_size"], sr["num_channels"]) == (256, 64, 128)


def test_default_channel_mults():
    expected = {
        512: (0.5, 1, 1, 2, 2, 4, 4),
        256: (1, 1, 2, 2, 4, 4),
        128: (1, 1, 2, 3, 4),
        64: (1, 2, 3, 4),
        32: (1, 2, 2, 2),
    }
    for size, mult in expected.items():
        with torch.device("meta"):
            model = su.create_model(size, 64, 1, attention_resolutions=str(size // 4))
        assert model.channel_mult == mult
    assert su.SR_CHANNEL_MULTS[512] == (1, 1, 2, 2, 4, 4)


def test_unsupported_size_lists_the_supported_ones():
    with pytest.raises(ValueError, match=r"48.*32, 64, 128, 256, 512.*--channel_mult"):
        su.create_model(48, 32, 1)
    with pytest.raises(ValueError, match="--classifier_channel_mult"):
        su.create_classifier(**{**su.classifier_defaults(), "image_size": 96})


def test_any_size_with_channel_mult_and_float_multipliers():
    model = su.create_model(
        48, 64, 1, channel_mult="0.5,1,1.5", attention_resolutions="12", num_head_channels=32
    )
    assert model.channel_mult == (0.5, 1, 1.5)
    assert model.input_blocks[0][0].out_channels == 32
    assert model(torch.zeros(1, 3, 48, 48), torch.tensor([5])).shape == (1, 3, 48, 48)
    with pytest.raises(ValueError, match="--channel_mult"):
        su.create_model(32, 32, 1, channel_mult="1,x")
    with pytest.warns(UserWarning, match="--attention_resolutions"):
        su.create_model(32, 32, 1, channel_mult="1,2", attention_resolutions="12")


def test_create_model_and_diffusion_from_flags():
    flags = tiny_model_flags(
        learn_sigma=True,
        class_cond=True,
        num_classes=7,
        noise_schedule="cosine",
        timestep_respacing="5",
    )
    model, diffusion = su.create_model_and_diffusion(**flags)
    assert isinstance(model, UNetModel) and isinstance(diffusion, SpacedDiffusion)
    assert model.out_channels == 6 and model.label_emb.weight.shape == (7, 128)
    assert diffusion.num_timesteps == 5
    assert diffusion.model_var_type == gd.ModelVarType.LEARNED_RANGE
    # code written against the original passes no num_classes: 1000 labels
    del flags["num_classes"]
    model, _ = su.create_model_and_diffusion(**flags)
    assert model.label_emb.weight.shape[0] == 1000


def test_factories_reject_unknown_and_missing_flags():
    with pytest.raises(TypeError, match="lr"):
        su.create_model_and_diffusion(**tiny_model_flags(lr=1e-4))
    flags = tiny_model_flags()
    del flags["dropout"]
    with pytest.raises(TypeError, match="dropout"):
        su.create_model_and_diffusion(**flags)


def test_classifier_and_sr_factories():
    flags = su.classifier_and_diffusion_defaults()
    flags.update(
        image_size=32,
        classifier_width=64,
        classifier_depth=1,
        classifier_attention_resolutions="16",
        num_classes=10,
    )
    classifier, diffusion = su.create_classifier_and_diffusion(**flags)
    assert isinstance(classifier, EncoderUNetModel) and classifier.out_channels == 10
    assert classifier(torch.zeros(2, 3, 32, 32), torch.tensor([0, 1])).shape == (2, 10)
    assert diffusion.num_timesteps == 1000

    sr = su.sr_model_and_diffusion_defaults()
    sr.update(
        large_size=64,
        small_size=32,
        num_channels=32,
        num_res_blocks=1,
        attention_resolutions="8",
        diffusion_steps=40,
    )
    model, diffusion = su.sr_create_model_and_diffusion(**sr)
    assert isinstance(model, SuperResModel) and model.in_channels == 6
    assert model.channel_mult == (1, 2, 3, 4) and diffusion.num_timesteps == 40


@pytest.mark.parametrize(
    "kwargs,mean,var,loss",
    [
        ({}, gd.ModelMeanType.EPSILON, gd.ModelVarType.FIXED_LARGE, gd.LossType.MSE),
        (
            {"sigma_small": True},
            gd.ModelMeanType.EPSILON,
            gd.ModelVarType.FIXED_SMALL,
            gd.LossType.MSE,
        ),
        (
            {"learn_sigma": True, "rescale_learned_sigmas": True},
            gd.ModelMeanType.EPSILON,
            gd.ModelVarType.LEARNED_RANGE,
            gd.LossType.RESCALED_MSE,
        ),
        (
            {"use_kl": True, "predict_xstart": True},
            gd.ModelMeanType.START_X,
            gd.ModelVarType.FIXED_LARGE,
            gd.LossType.RESCALED_KL,
        ),
    ],
)
def test_create_gaussian_diffusion_types(kwargs, mean, var, loss):
    diffusion = su.create_gaussian_diffusion(steps=50, **kwargs)
    assert (diffusion.model_mean_type, diffusion.model_var_type, diffusion.loss_type) == (
        mean,
        var,
        loss,
    )
    assert diffusion.num_timesteps == 50


def test_create_gaussian_diffusion_respacing_and_schedule():
    full = su.create_gaussian_diffusion(steps=100, noise_schedule="cosine")
    spaced = su.create_gaussian_diffusion(
        steps=100, noise_schedule="cosine", timestep_respacing="ddim10", rescale_timesteps=True
    )
    assert spaced.num_timesteps == 10 and spaced.rescale_timesteps
    assert sorted(spaced.timestep_map) == list(range(0, 100, 10))
    # the kept steps keep the original cumulative alphas
    kept = torch.as_tensor(full.alphas_cumprod[::10])
    torch.testing.assert_close(torch.as_tensor(spaced.alphas_cumprod), kept)


def test_argparser_round_trip():
    parser = argparse.ArgumentParser()
    defaults = su.model_and_diffusion_defaults()
    su.add_dict_to_argparser(parser, {**defaults, "model_path": None})
    args = parser.parse_args(
        [
            "--learn_sigma",
            "True",
            "--num_channels",
            "64",
            "--dropout",
            "0.1",
            "--class_cond",
            "no",
            "--model_path",
            "m.pt",
        ]
    )
    values = su.args_to_dict(args, defaults.keys())
    assert values == {**defaults, "learn_sigma": True, "num_channels": 64, "dropout": 0.1}
    assert args.model_path == "m.pt"
    for action in parser._actions[1:]:
        assert action.help and "default" in action.help
    with pytest.raises(SystemExit):
        parser.parse_args(["--use_fp16", "maybe"])


def test_every_factory_flag_has_help_text():
    keys = {
        *su.model_and_diffusion_defaults(),
        *su.classifier_and_diffusion_defaults(),
        *su.sr_model_and_diffusion_defaults(),
    }
    assert keys <= set(su.FLAG_HELP)


def test_str2bool():
    for text in ("yes", "True", "t", "Y", "1"):
        assert su.str2bool(text) is True
    for text in ("no", "false", "F", "n", "0"):
        assert su.str2bool(text) is False
    assert su.str2bool(True) is True
    with pytest.raises(argparse.ArgumentTypeError, match="boolean"):
        su.str2bool("2")


def _attention_blocks(model) -> int:
    return sum(type(m).__name__ == "AttentionBlock" for m in model.modules())


@pytest.mark.parametrize(
    "image_size,channel_mult,resolutions,valid,extra_blocks",
    # 64 // 16 = 4 and 48 // 16, 48 // 8 = 3, 6 are no level's rate: ignored; 32 // 7 = 4 is
    # the third level's rate: attention there (1 input + 2 output blocks), as the original
    [
        (64, "1,2", "16", "64,32", 0),
        (48, "1,2,2", "16,8", "48,24,12", 0),
        (32, "", "7", "32,16,8,4", 3),
    ],
)
def test_attention_at_a_resolution_the_network_lacks_warns_like_the_original(
    image_size, channel_mult, resolutions, valid, extra_blocks
):
    kwargs = {**su.model_and_diffusion_defaults(), "image_size": image_size}
    kwargs.update(channel_mult=channel_mult, attention_resolutions=resolutions, num_channels=32)
    kwargs.update(num_res_blocks=1)
    with pytest.warns(UserWarning, match=f"--attention_resolutions.*valid resolutions are {valid}"):
        model, _ = su.create_model_and_diffusion(**kwargs)
    assert _attention_blocks(model) == 1 + extra_blocks  # the middle block's, plus those
    kwargs["attention_resolutions"] = valid.split(",")[-1]
    model, _ = su.create_model_and_diffusion(**kwargs)
    assert _attention_blocks(model) > 1  # the requested level's blocks besides the middle one
    with pytest.raises(ValueError, match="must be positive"):
        su.create_model_and_diffusion(**{**kwargs, "attention_resolutions": "0"})
