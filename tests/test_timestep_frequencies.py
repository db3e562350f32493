"""The host-side timestep sinusoid (graph input `t_freq`) equals the reference's float64 one, bit for bit."""

import numpy as np
import torch

from dysink_deploy.config import StreamConfig
from dysink_deploy.models.dit import timestep_sinusoid
from dysink_deploy.rope import timestep_frequencies


def test_equals_the_torch_reference_for_every_timestep():
    steps = set(StreamConfig().timesteps()) | set(StreamConfig(denoising_steps=tuple(range(1000, 0, -37))).timesteps())
    for t in sorted(steps | {0.0}):
        for freq_dim in (32, 256):
            ref = timestep_sinusoid(torch.tensor([t], dtype=torch.float32), freq_dim)[0].numpy()
            np.testing.assert_array_equal(timestep_frequencies(t, freq_dim), ref, err_msg=f"t={t}")
