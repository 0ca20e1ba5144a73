"""The diffusion process: noise schedule on the 0..1000 scale, v-prediction objective, DDIM sampler."""

from diffprobe.diffusion.objective import add_noise, diffusion_loss, v_target, v_to_eps, v_to_x0
from diffprobe.diffusion.sampler import ddim_from, ddim_sample
from diffprobe.diffusion.schedule import DEFAULT_SCHEDULE, NUM_STEPS, NoiseSchedule

__all__ = [
    "DEFAULT_SCHEDULE",
    "NUM_STEPS",
    "NoiseSchedule",
    "add_noise",
    "ddim_from",
    "ddim_sample",
    "diffusion_loss",
    "v_target",
    "v_to_eps",
    "v_to_x0",
]
