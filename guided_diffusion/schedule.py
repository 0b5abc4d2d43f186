"""
The one view of a diffusion process's noise levels: what every sampler, guidance method and
editing method reads instead of recomputing it from ``alphas_cumprod``.

For a VP process with alphas_cumprod ab at its own indices 0..N-1 (the kept steps of a
respaced process): alpha = sqrt(ab), sigma = sqrt(1 - ab), lambda = log(alpha / sigma) (half
the log-SNR; it grows as the index goes to 0) and the EDM noise level sigma / alpha (Karras et
al. 2022). ``model_timesteps`` is what the model receives at each index: the base process's
index for a respaced process, scaled to [0, 1000) with ``rescale_timesteps``.
"""

import numpy as np
import torch


class NoiseSchedule:
    """
    Noise levels of a process at its indices 0..N-1, float64 numpy arrays [N].

    :param alphas_cumprod: [N] ab of the (respaced) process.
    :param model_timesteps: [N] the timestep the model receives at each index.
    """

    def __init__(self, alphas_cumprod: np.ndarray, model_timesteps: np.ndarray):
        self.alphas_cumprod = np.asarray(alphas_cumprod, dtype=np.float64)
        self.model_timesteps = np.asarray(model_timesteps, dtype=np.float64)
        self.alpha = np.sqrt(self.alphas_cumprod)
        self.sigma = np.sqrt(1.0 - self.alphas_cumprod)
        self.log_snr = np.log(self.alpha) - np.log(self.sigma)  # lambda, half the log-SNR
        self.edm_sigma = np.sqrt((1.0 - self.alphas_cumprod) / self.alphas_cumprod)

    def __len__(self) -> int:
        return len(self.alphas_cumprod)

    def alpha_bar(self, index: int) -> float:
        """:return: ab at ``index``; 1.0 at index -1 (the clean image)."""
        return 1.0 if index < 0 else float(self.alphas_cumprod[index])

    def index_of(self, t: torch.Tensor) -> torch.Tensor:
        """
        :param t: [N] timesteps as the model and ``cond_fn`` receive them.
        :return: [N] int64 indices of the process, each t mapped to the nearest step.
        """
        seen = torch.from_numpy(self.model_timesteps)
        return (t.detach().cpu().double()[:, None] - seen[None, :]).abs().argmin(dim=1)
