import numpy as np
import pytest
import torch

from guided_diffusion import gaussian_diffusion as gd
from guided_diffusion.respace import SpacedDiffusion, space_timesteps

from diffusion_toys import ToyModel, arange_images


def _reference_sections(num_timesteps, counts):
    """Independent re-derivation of the section rule, with exact fractions."""
    from fractions import Fraction

    k = len(counts)
    sizes = [num_timesteps // k + (1 if i < num_timesteps % k else 0) for i in range(k)]
    steps, start = [], 0
    for size, count in zip(sizes, counts):
        stride = Fraction(1) if count <= 1 else Fraction(size - 1, count - 1)
        steps += [start + round(j * stride) for j in range(count)]
        start += size
    return set(steps)


@pytest.mark.parametrize("T", [10, 100, 250, 1000, 4000, 37])
@pytest.mark.parametrize("spec", ["1", "5", "10", "3,4", "10,15,20", "2,1,3,1", "7,7,7,7,7"])
def test_section_counts(T, spec):
    counts = [int(c) for c in spec.split(",")]
    k = len(counts)
    if any(c > T // k for c in counts):
        with pytest.raises(ValueError, match="cannot keep"):
            space_timesteps(T, spec)
        return
    steps = space_timesteps(T, spec)
    assert steps == _reference_sections(T, counts)
    assert len(steps) == sum(counts)
    assert min(steps) == 0 and max(steps) < T
    # each section keeps its own count, starting at the section start
    bounds = np.cumsum([0] + [T // k + (1 if i < T % k else 0) for i in range(k)])
    for i, c in enumerate(counts):
        inside = sorted(s for s in steps if bounds[i] <= s < bounds[i + 1])
        assert len(inside) == c and inside[0] == bounds[i]
        if c > 1:
            assert inside[-1] == bounds[i + 1] - 1  # and ends at the section end


def test_known_spacings():
    assert space_timesteps(1000, "ddim50") == set(range(0, 1000, 20))
    assert space_timesteps(1000, "ddim250") == set(range(0, 1000, 4))
    assert space_timesteps(100, "ddim100") == set(range(100))
    assert space_timesteps(1000, [1000]) == set(range(1000))
    assert space_timesteps(10, "4") == {0, 3, 6, 9}
    assert space_timesteps(10, [3, 2]) == {0, 2, 4, 5, 9}
    assert space_timesteps(1000, "250") == {round(i * 999 / 249) for i in range(250)}


@pytest.mark.parametrize("T", [50, 100, 1000, 333])
def test_ddim_spacing_for_every_possible_count(T):
    possible = {len(range(0, T, s)): s for s in range(T - 1, 0, -1)}
    for n in range(1, T + 2):
        if n in possible and n < T:
            steps = space_timesteps(T, f"ddim{n}")
            assert len(steps) == n
            stride = sorted(steps)[1] - sorted(steps)[0] if n > 1 else None
            assert steps == set(range(0, T, stride or T))
        elif n > T or (n not in possible and n != T):
            with pytest.raises(ValueError, match=f"exactly {n} steps"):
                space_timesteps(T, f"ddim{n}")


@pytest.mark.parametrize("spec,match", [("ddimx", "integer"), ("abc", "'250'"), ("0", "positive"), ("5,-1", "non-negative")])
def test_bad_respacing_is_a_clear_error(spec, match):
    with pytest.raises(ValueError, match=match):
        space_timesteps(100, spec)


def _spaced(use_timesteps, T=30, rescale=False, var_type=gd.ModelVarType.LEARNED_RANGE):
    return SpacedDiffusion(
        use_timesteps,
        betas=gd.get_named_beta_schedule("cosine", T),
        model_mean_type=gd.ModelMeanType.EPSILON,
        model_var_type=var_type,
        loss_type=gd.LossType.RESCALED_MSE,
        rescale_timesteps=rescale,
    )


def test_respacing_with_every_step_equals_no_respacing():
    T = 30
    full = gd.GaussianDiffusion(
        betas=gd.get_named_beta_schedule("cosine", T),
        model_mean_type=gd.ModelMeanType.EPSILON,
        model_var_type=gd.ModelVarType.LEARNED_RANGE,
        loss_type=gd.LossType.RESCALED_MSE,
    )
    spaced = _spaced(range(T), T)
    assert np.allclose(spaced.betas, full.betas, rtol=1e-12, atol=0)
    model = ToyModel(learn_sigma=True)
    torch.manual_seed(3)
    a = full.p_sample_loop(model, (2, 3, 4, 4))
    torch.manual_seed(3)
    b = spaced.p_sample_loop(model, (2, 3, 4, 4))
    assert torch.allclose(a, b, atol=1e-6)
    x0 = arange_images()
    noise = torch.cos(x0)
    t = torch.tensor([0, 17])
    la = full.training_losses(model, x0, t, noise=noise)
    lb = spaced.training_losses(model, x0, t, noise=noise)
    assert all(torch.allclose(la[k], lb[k], atol=1e-6) for k in la)


def test_kept_steps_keep_their_alphas_cumprod():
    T = 100
    use = space_timesteps(T, "10")
    spaced = _spaced(use, T)
    base = _spaced(range(T), T)
    assert np.allclose(spaced.alphas_cumprod, base.alphas_cumprod[sorted(use)], rtol=1e-12)
    assert spaced.num_timesteps == 10 and spaced.timestep_map == sorted(use)


@pytest.mark.parametrize("rescale", [False, True])
def test_model_and_cond_fn_see_original_timesteps(rescale):
    T = 100
    use = sorted(space_timesteps(T, "ddim10"))
    d = _spaced(use, T, rescale=rescale)
    model = ToyModel(learn_sigma=True)
    seen_by_cond = []

    def cond_fn(x, t, **kwargs):
        seen_by_cond.append(t.clone())
        return torch.zeros_like(x)

    d.p_sample_loop(model, (2, 3, 4, 4), cond_fn=cond_fn)
    scale = 1000.0 / T if rescale else 1
    expected = [torch.tensor([float(s * scale)] * 2) for s in reversed(use)]
    for got in (model.seen_timesteps, seen_by_cond):
        assert len(got) == 10
        for g, e in zip(got, expected):
            assert torch.allclose(g.float(), e)
    # DDIM with score conditioning too
    seen_by_cond.clear()
    d.ddim_sample_loop(model, (2, 3, 4, 4), cond_fn=cond_fn)
    assert [int(round(g[0].item() / scale)) for g in seen_by_cond] == list(reversed(use))
    # training sees the mapped timestep
    model.seen_timesteps.clear()
    d.training_losses(model, arange_images(), torch.tensor([0, 9]))
    assert torch.allclose(model.seen_timesteps[0].float(), torch.tensor([use[0] * scale, use[9] * scale], dtype=torch.float32))


def test_out_of_range_use_timesteps_rejected():
    with pytest.raises(ValueError, match="subset of range"):
        _spaced([0, 5, 30], T=30)


def test_a_single_step_process_is_a_clear_error():
    # --timestep_respacing 1 used to fail with an IndexError deep in the schedule arrays.
    betas = gd.get_named_beta_schedule("linear", 1000)
    with pytest.raises(ValueError, match=r"at least 2 steps.*--timestep_respacing"):
        SpacedDiffusion(
            use_timesteps=space_timesteps(1000, "1"),
            betas=betas,
            model_mean_type=gd.ModelMeanType.EPSILON,
            model_var_type=gd.ModelVarType.FIXED_LARGE,
            loss_type=gd.LossType.MSE,
        )
    SpacedDiffusion(  # two steps are fine
        use_timesteps=space_timesteps(1000, "2"),
        betas=betas,
        model_mean_type=gd.ModelMeanType.EPSILON,
        model_var_type=gd.ModelVarType.FIXED_LARGE,
        loss_type=gd.LossType.MSE,
    )
