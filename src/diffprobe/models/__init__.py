"""The WALT models: the causal 3D video tokenizer and the windowed-attention latent transformer denoiser."""

from diffprobe.models.autoencoder import CausalAutoencoder, CausalAutoencoderConfig
from diffprobe.models.frames import frames_to_input, output_to_frames
from diffprobe.models.walt import WALT, WALTConfig

__all__ = [
    "WALT",
    "CausalAutoencoder",
    "CausalAutoencoderConfig",
    "WALTConfig",
    "frames_to_input",
    "output_to_frames",
]
