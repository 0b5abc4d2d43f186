"""
Re-spacing: sample or train with a subset of a diffusion process's timesteps
(Nichol & Dhariwal 2021, section 4), without touching the samplers.
"""

from typing import Iterable, Union

import numpy as np
import torch

from .gaussian_diffusion import GaussianDiffusion


def space_timesteps(num_timesteps: int, section_counts: Union[str, Iterable[int]]) -> set[int]:
    """
    Choose which timesteps of the original process to keep.

    The T steps are split into len(section_counts) equal sections (the first
    T % len(section_counts) one step longer), and section i keeps section_counts[i]
    steps at evenly rounded fractional strides, so "10,15,20" keeps 10 steps from the
    first third, 15 from the second and 20 from the last.

    "ddimN" keeps range(0, T, s) for the one integer stride s that gives exactly N
    steps, as in the DDIM paper.

    :param num_timesteps: T, the number of steps of the original process.
    :param section_counts: a list of counts, or a string "N", "a,b,c" or "ddimN".
    :return: the set of original timestep indices to keep.
    """
    if isinstance(section_counts, str):
        spec = section_counts
        if spec.startswith("ddim"):
            try:
                desired_count = int(spec[len("ddim"):])
            except ValueError:
                raise ValueError(
                    f"invalid timestep respacing {spec!r}: 'ddim' must be followed by an "
                    "integer step count, e.g. 'ddim50'"
                ) from None
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired_count:
                    return set(range(0, num_timesteps, stride))
            raise ValueError(
                f"cannot create exactly {desired_count} steps with an integer stride from "
                f"{num_timesteps} diffusion steps (--timestep_respacing {spec}); use "
                f"{_ddim_alternatives(num_timesteps, desired_count)}"
            )
        try:
            section_counts = [int(count) for count in spec.split(",")]
        except ValueError:
            raise ValueError(
                f"invalid timestep respacing {spec!r}: expected a step count ('250'), "
                "comma-separated counts per section ('10,15,20') or 'ddimN'"
            ) from None
    section_counts = list(section_counts)
    if not section_counts or any(c < 0 for c in section_counts) or sum(section_counts) == 0:
        raise ValueError(
            "timestep respacing section counts must be non-negative integers with a "
            f"positive total, got {section_counts}"
        )

    size_per = num_timesteps // len(section_counts)
    extra = num_timesteps % len(section_counts)
    start_idx = 0
    all_steps = []
    for i, section_count in enumerate(section_counts):
        size = size_per + (1 if i < extra else 0)
        if size < section_count:
            raise ValueError(
                f"cannot keep {section_count} steps from a section of {size} steps "
                f"({num_timesteps} diffusion steps in {len(section_counts)} sections); "
                f"at most {size} are possible there"
            )
        frac_stride = 1 if section_count <= 1 else (size - 1) / (section_count - 1)
        cur_idx = 0.0
        for _ in range(section_count):
            all_steps.append(start_idx + round(cur_idx))
            cur_idx += frac_stride
        start_idx += size
    return set(all_steps)


def _ddim_alternatives(num_timesteps: int, desired_count: int) -> str:
    """:return: the 'ddimN' nearest to N that some stride gives, and a plain count, both valid."""
    counts = sorted({len(range(0, num_timesteps, s)) for s in range(1, num_timesteps)})
    nearest = min(counts, key=lambda c: (abs(c - desired_count), c)) if counts else None
    plain = min(max(desired_count, 2), num_timesteps)  # a process needs 2 steps at least
    ddim = f"'ddim{nearest}' (the nearest count a stride gives) or " if nearest else ""
    return f"{ddim}the plain count '{plain}'"


class SpacedDiffusion(GaussianDiffusion):
    """
    A diffusion process that keeps only some steps of a base process.

    The kept steps get new betas from the base process's alphas_cumprod at those steps,
    and the model and cond_fn always see the base process's timestep indices.

    :param use_timesteps: the base-process timesteps to keep.
    :param kwargs: the keyword arguments that build the base GaussianDiffusion.
    """

    def __init__(self, use_timesteps: Iterable[int], **kwargs):
        self.use_timesteps = set(use_timesteps)
        self.original_num_steps = len(kwargs["betas"])
        base_diffusion = GaussianDiffusion(**kwargs)
        bad = sorted(t for t in self.use_timesteps if not 0 <= t < self.original_num_steps)
        if bad or not self.use_timesteps:
            raise ValueError(
                f"use_timesteps must be a non-empty subset of range({self.original_num_steps}); "
                f"out of range: {bad[:5]}"
            )
        self.timestep_map = []
        new_betas = []
        last_alpha_cumprod = 1.0
        for i, alpha_cumprod in enumerate(base_diffusion.alphas_cumprod):
            if i in self.use_timesteps:
                new_betas.append(1 - alpha_cumprod / last_alpha_cumprod)
                last_alpha_cumprod = alpha_cumprod
                self.timestep_map.append(i)
        kwargs["betas"] = np.array(new_betas)
        super().__init__(**kwargs)

    def p_mean_variance(self, model, *args, **kwargs):
        return super().p_mean_variance(self._wrap_model(model), *args, **kwargs)

    def training_losses(self, model, *args, **kwargs):
        return super().training_losses(self._wrap_model(model), *args, **kwargs)

    def condition_mean(self, cond_fn, *args, **kwargs):
        return super().condition_mean(self._wrap_model(cond_fn), *args, **kwargs)

    def condition_score(self, cond_fn, *args, **kwargs):
        return super().condition_score(self._wrap_model(cond_fn), *args, **kwargs)

    def _wrap_model(self, model):
        if isinstance(model, _WrappedModel):
            return model
        return _WrappedModel(model, self.timestep_map, self.rescale_timesteps, self.original_num_steps)

    def _scale_timesteps(self, t):
        # the wrapper maps and scales timesteps
        return t

    def _model_timesteps(self) -> np.ndarray:
        t = np.asarray(self.timestep_map, dtype=np.float64)
        return t * (1000.0 / self.original_num_steps) if self.rescale_timesteps else t


class _WrappedModel:
    """Calls a model (or cond_fn) with re-spaced indices mapped to the base process's."""

    def __init__(self, model, timestep_map: list[int], rescale_timesteps: bool, original_num_steps: int):
        self.model = model
        self.timestep_map = timestep_map
        self.rescale_timesteps = rescale_timesteps
        self.original_num_steps = original_num_steps

    def parameters(self):
        return self.model.parameters()

    def __call__(self, x, ts, **kwargs):
        map_tensor = torch.tensor(self.timestep_map, device=ts.device, dtype=ts.dtype)
        new_ts = map_tensor[ts]
        if self.rescale_timesteps:
            new_ts = new_ts.float() * (1000.0 / self.original_num_steps)
        return self.model(x, new_ts, **kwargs)
