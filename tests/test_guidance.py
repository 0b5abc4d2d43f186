"""
Classifier-free guidance and autoguidance as model wrappers: each moves the prediction
(and so the samples) exactly as its formula says on models with a closed-form prediction,
scale 1 and a model guiding itself change nothing, guidance is skipped outside the active
steps, and the wrappers keep the timesteps a respaced process shows the model.
"""

import pytest
import torch
import torch.nn as nn

from diffusion_toys import arange_images, make_diffusion
from guided_diffusion import gaussian_diffusion as gd
from guided_diffusion import script_util as su
from guided_diffusion.guidance import (
    AutoGuidance,
    ClassifierFreeGuidance,
    GuidanceError,
    guided_model,
    interval_active,
    noise_level_lookup,
)
from guided_diffusion.respace import SpacedDiffusion, space_timesteps
from guided_diffusion.samplers import SAMPLERS, EvaluationCounts
from guided_diffusion.samplers import sample as sample_with

from conftest import TINY_MODEL_8

NUM_CLASSES = 3


class AffineModel(nn.Module):
    """
    eps(x, t, y) = a x + c[y] (+ the variance channels v[y] with ``learn_sigma``); label
    ``NUM_CLASSES`` is the null class. Affine in (a, c, v), so a guided combination of two
    such models is again one, with the combined parameters. Records its batch sizes.
    """

    def __init__(self, a: float, c, v=None, conditional: bool = True):
        super().__init__()
        self.a = nn.Parameter(torch.tensor(float(a)))
        self.register_buffer("c", torch.as_tensor(c, dtype=torch.float32))
        self.register_buffer("v", None if v is None else torch.as_tensor(v, dtype=torch.float32))
        self.num_classes = NUM_CLASSES if conditional else None
        self.null_label = NUM_CLASSES if conditional else None
        self.batch_sizes: list[int] = []

    def forward(self, x, t, y=None):
        self.batch_sizes.append(x.shape[0])
        index = y if y is not None else torch.zeros(x.shape[0], dtype=torch.long)
        per_image = lambda table: table[index].view(-1, 1, 1, 1)  # noqa: E731  (N, 1, 1, 1)
        eps = self.a * x + per_image(self.c)
        if self.v is None:
            return eps
        return torch.cat([eps, per_image(self.v).expand_as(x)], dim=1)


def sample(diffusion, model, y=None, cond_fn=None, ddim=False):
    """Ancestral (or DDIM) samples of a fixed batch, from fixed noise and a fixed seed."""
    torch.manual_seed(0)
    noise = torch.randn(4, 3, 4, 4)
    loop = diffusion.ddim_sample_loop if ddim else diffusion.p_sample_loop
    kwargs = {} if y is None else {"y": y}
    return loop(model, noise.shape, noise=noise, model_kwargs=kwargs, cond_fn=cond_fn)


LABELS = torch.tensor([0, 1, 2, 1])
C_TABLE = [0.3, -0.2, 0.1, 0.05]  # the last entry: the null class


@pytest.mark.parametrize("scale", [0.0, 0.5, 2.0, 4.0])
def test_classifier_free_guidance_follows_its_formula(scale):
    # eps~ = eps(x, null) + s (eps(x, y) - eps(x, null)); variance from the conditional branch
    model = AffineModel(0.4, C_TABLE, v=[0.1, 0.2, 0.3, 0.9])
    x, t = arange_images(4), torch.tensor([3, 3, 3, 3])
    out = ClassifierFreeGuidance(model, scale)(x, t, y=LABELS)
    c = torch.tensor(C_TABLE)
    expected_c = c[-1] + scale * (c[LABELS] - c[-1])
    torch.testing.assert_close(out[:, :3], 0.4 * x + expected_c.view(-1, 1, 1, 1))
    expected_v = (torch.tensor([0.9] * 4) if scale == 0 else torch.tensor([0.1, 0.2, 0.3, 0.2]))
    torch.testing.assert_close(out[:, 3:], expected_v.view(-1, 1, 1, 1).expand_as(x))
    # one forward pass: the conditional and the null-class batch together (s = 0: null only)
    assert model.batch_sizes == [4 if scale == 0 else 8]


@pytest.mark.parametrize("ddim", [False, True])
def test_classifier_free_guidance_moves_samples_as_the_combined_model(ddim):
    diffusion = make_diffusion(steps=10)
    scale = 3.0
    cfg = ClassifierFreeGuidance(AffineModel(0.4, C_TABLE), scale)
    guided = sample(diffusion, cfg, LABELS, ddim=ddim)
    c = torch.tensor(C_TABLE)
    combined = c[-1] + scale * (c - c[-1])  # the same formula per label
    expected = sample(diffusion, AffineModel(0.4, combined), LABELS, ddim=ddim)
    torch.testing.assert_close(guided, expected)
    plain = sample(diffusion, AffineModel(0.4, C_TABLE), LABELS, ddim=ddim)
    assert (guided - plain).abs().max() > 0.1  # guidance did move them


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_both_wrappers_work_with_every_sampler(sampler):
    diffusion = make_diffusion(steps=10)
    noise = arange_images(4)
    kwargs = dict(noise=noise, model_kwargs={"y": LABELS}, sampler=sampler)
    c, scale = torch.tensor(C_TABLE), 3.0
    cfg = ClassifierFreeGuidance(AffineModel(0.4, C_TABLE), scale)
    combined = AffineModel(0.4, c[-1] + scale * (c - c[-1]))
    torch.manual_seed(0)
    guided = sample_with(diffusion, cfg, noise.shape, **kwargs)
    torch.manual_seed(0)
    torch.testing.assert_close(guided, sample_with(diffusion, combined, noise.shape, **kwargs))
    main, guide = AffineModel(0.4, C_TABLE), AffineModel(0.7, [0.0, 0.1, 0.4, 0.0])
    combined = AffineModel(0.7 + scale * (0.4 - 0.7), guide.c + scale * (main.c - guide.c))
    torch.manual_seed(0)
    guided = sample_with(diffusion, AutoGuidance(main, guide, scale), noise.shape, **kwargs)
    torch.manual_seed(0)
    torch.testing.assert_close(guided, sample_with(diffusion, combined, noise.shape, **kwargs))


def test_the_guidance_interval_skips_the_null_branch_outside():
    diffusion = make_diffusion(steps=10)
    levels = noise_level_lookup(diffusion)(torch.arange(10))  # increasing with t
    active = interval_active(diffusion, (float(levels[2]), float(levels[6])))  # t in 3..6
    model = AffineModel(0.4, C_TABLE)
    sample(diffusion, ClassifierFreeGuidance(model, 2.0, active=active), LABELS)
    # one call per step from t = 9 down to 0: 8 rows (with the null class) only for t in 3..6
    assert model.batch_sizes == [4, 4, 4, 8, 8, 8, 8, 4, 4, 4]


def test_the_evaluation_counts_include_the_second_branch():
    diffusion = make_diffusion(steps=10)
    levels = noise_level_lookup(diffusion)(torch.arange(10))
    active = interval_active(diffusion, (float(levels[2]), float(levels[6])))  # 4 of 10 steps
    noise = arange_images(4)
    for make, expected in [
        (lambda: ClassifierFreeGuidance(AffineModel(0.4, C_TABLE), 2.0), 20),
        (lambda: ClassifierFreeGuidance(AffineModel(0.4, C_TABLE), 2.0, active), 14),
        (lambda: AutoGuidance(AffineModel(0.4, C_TABLE), AffineModel(0.7, C_TABLE), 2.0), 20),
        (lambda: ClassifierFreeGuidance(AffineModel(0.4, C_TABLE), 1.0), 10),
    ]:
        counts, model = EvaluationCounts(), make()
        model.counts = counts
        kwargs = dict(noise=noise, model_kwargs={"y": LABELS}, counts=counts)
        sample_with(diffusion, model, noise.shape, **kwargs)
        assert counts.model == expected


def test_scale_one_is_the_model_itself():
    model = AffineModel(0.4, C_TABLE)
    assert guided_model(model, 1.0) is model
    diffusion = make_diffusion(steps=10)
    wrapped = sample(diffusion, ClassifierFreeGuidance(model, 1.0), LABELS)
    assert torch.equal(wrapped, sample(diffusion, model, LABELS))
    assert set(model.batch_sizes) == {4}  # no null-class pass at all


@pytest.mark.parametrize("conditional", [True, False])
def test_autoguidance_follows_its_formula(conditional):
    # D~ = D_guide + s (D_main - D_guide); both affine, so the result is the combined model
    scale, y = 2.5, (LABELS if conditional else None)
    main = AffineModel(0.4, C_TABLE, conditional=conditional)
    guide = AffineModel(0.7, [0.0, 0.1, 0.4, 0.0], conditional=conditional)
    combined = AffineModel(
        0.7 + scale * (0.4 - 0.7), guide.c + scale * (main.c - guide.c), conditional=conditional
    )
    diffusion = make_diffusion(steps=10)
    guided = sample(diffusion, AutoGuidance(main, guide, scale), y)
    torch.testing.assert_close(guided, sample(diffusion, combined, y))
    assert (guided - sample(diffusion, main, y)).abs().max() > 0.1


def test_autoguidance_keeps_the_main_variance_and_takes_a_narrower_guide():
    main = AffineModel(0.4, C_TABLE, v=[0.1, 0.2, 0.3, 0.9])
    guide = AffineModel(0.7, C_TABLE)  # no variance channels
    x, t = arange_images(4), torch.full((4,), 2)
    out = AutoGuidance(main, guide, 2.0)(x, t, y=LABELS)
    torch.testing.assert_close(out[:, 3:], main(x, t, y=LABELS)[:, 3:])
    expected = (0.7 + 2.0 * (0.4 - 0.7)) * x + main.c[LABELS].view(-1, 1, 1, 1)
    torch.testing.assert_close(out[:, :3], expected)


def test_a_model_guiding_itself_samples_as_without_guidance():
    torch.manual_seed(0)
    flags = dict(
        su.model_and_diffusion_defaults(),
        **TINY_MODEL_8,
        class_cond=True,
        num_classes=NUM_CLASSES,
        learn_sigma=True,
        diffusion_steps=40,
        timestep_respacing="5",
    )
    model, diffusion = su.create_model_and_diffusion(**flags)
    for p in model.out.parameters():  # the output layer starts at zero: make it predict
        nn.init.normal_(p, std=0.1)
    model.eval()
    torch.manual_seed(1)
    noise = torch.randn(3, 3, 8, 8)
    kwargs = {"y": torch.tensor([0, 2, 1])}
    plain = diffusion.p_sample_loop(model, noise.shape, noise=noise, model_kwargs=kwargs)
    torch.manual_seed(1)
    noise = torch.randn(3, 3, 8, 8)
    guided = diffusion.p_sample_loop(
        AutoGuidance(model, model, 3.0), noise.shape, noise=noise, model_kwargs=kwargs
    )
    assert torch.equal(guided, plain)


def test_classifier_free_and_classifier_guidance_both_apply():
    diffusion = make_diffusion(steps=10)
    gradient = lambda x, t, y=None: 0.5 * torch.ones_like(x)  # noqa: E731  a closed-form cond_fn
    scale = 2.0
    c = torch.tensor(C_TABLE)
    combined = AffineModel(0.4, c[-1] + scale * (c - c[-1]))
    cfg = ClassifierFreeGuidance(AffineModel(0.4, C_TABLE), scale)
    both = sample(diffusion, cfg, LABELS, gradient)
    torch.testing.assert_close(both, sample(diffusion, combined, LABELS, gradient))
    assert (both - sample(diffusion, combined, LABELS)).abs().max() > 0.1  # the classifier term


def test_guidance_only_where_active_and_the_base_is_skipped_elsewhere():
    model = AffineModel(0.4, C_TABLE)
    x = arange_images(4)
    late = lambda t: t < 5  # noqa: E731  guide only the low-noise steps
    guided = ClassifierFreeGuidance(model, 2.0, active=late)
    outside = guided(x, torch.full((4,), 7), y=LABELS)
    assert torch.equal(outside, model(x, torch.full((4,), 7), y=LABELS))
    assert model.batch_sizes[-2:] == [4, 4]  # conditional only, no null-class rows
    mixed_t = torch.tensor([2, 7, 2, 7])
    mixed = guided(x, mixed_t, y=LABELS)
    assert model.batch_sizes[-1] == 6  # 4 conditional + 2 null-class rows
    full = ClassifierFreeGuidance(model, 2.0)(x, mixed_t, y=LABELS)
    assert torch.equal(mixed[[0, 2]], full[[0, 2]]) and torch.equal(mixed[[1, 3]], outside[[1, 3]])

    main, guide = AffineModel(0.4, C_TABLE), AffineModel(0.7, C_TABLE)
    AutoGuidance(main, guide, 2.0, active=late)(x, torch.full((4,), 7), y=LABELS)
    assert guide.batch_sizes == []


def test_wrappers_see_the_respaced_timesteps_the_model_would():
    base = make_diffusion(steps=40)
    spaced = SpacedDiffusion(
        use_timesteps=space_timesteps(40, "5"),
        betas=base.betas,
        model_mean_type=gd.ModelMeanType.EPSILON,
        model_var_type=gd.ModelVarType.FIXED_LARGE,
        loss_type=gd.LossType.MSE,
        rescale_timesteps=True,
    )
    seen = {}
    for name, make in {
        "plain": lambda m: m,
        "cfg": lambda m: ClassifierFreeGuidance(m, 2.0),
        "auto": lambda m: AutoGuidance(m, AffineModel(0.7, C_TABLE), 2.0),
    }.items():
        model = AffineModel(0.4, C_TABLE)
        timesteps = []
        model.register_forward_pre_hook(lambda _, args: timesteps.append(args[1][0].item()))
        sample(spaced, make(model), LABELS)
        seen[name] = timesteps
    assert seen["plain"] == [t * 1000 / 40 for t in reversed(spaced.timestep_map)]
    assert seen["cfg"] == seen["plain"] and seen["auto"] == seen["plain"]


def test_models_without_a_null_class_are_refused_with_one_line():
    no_null = AffineModel(0.4, C_TABLE)
    no_null.null_label = None
    needs_dropout = r"--guidance_scale 2.0 needs a model trained with --class_dropout_prob > 0"
    with pytest.raises(GuidanceError, match=needs_dropout):
        guided_model(no_null, 2.0)
    with pytest.raises(GuidanceError, match="class-conditional model"):
        guided_model(AffineModel(0.4, C_TABLE, conditional=False), 0.0)
    with pytest.raises(GuidanceError, match=">= 0"):
        guided_model(AffineModel(0.4, C_TABLE), -1.0)
    assert guided_model(no_null, 1.0) is no_null
    # autoguidance needs no null class
    assert isinstance(guided_model(no_null, 2.0, guide=no_null), AutoGuidance)
