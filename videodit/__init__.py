"""videodit: text-to-video with a 3D causal VAE, a factorized space/time DiT and rectified flow."""

__version__ = "0.1.0"
