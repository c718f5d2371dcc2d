"""Diffusers plumbing shared by the embedded trainer and image engine: tiny models built from config, and loading."""

from influencer_pipeline.diffusion.tiny import TINY_MODELS, build_tiny_sd, build_tiny_sdxl, load_pipeline, pick_device

__all__ = ["TINY_MODELS", "build_tiny_sd", "build_tiny_sdxl", "load_pipeline", "pick_device"]
