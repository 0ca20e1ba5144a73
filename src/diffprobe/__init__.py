"""diffprobe: train a latent diffusion transformer on images and on videos, then probe what each learned."""

__version__ = "0.1.0"
