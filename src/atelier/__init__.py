"""Atelier: a self-hosted generative studio for retail imagery (Stable Diffusion 1.5 and SDXL)."""

__version__ = "0.1.0"
