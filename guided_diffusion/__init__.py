"""
Guided diffusion: the models, training, guided sampling and evaluation of
"Diffusion Models Beat GANs on Image Synthesis" (Dhariwal & Nichol 2021).
"""

__version__ = "0.2.0"
