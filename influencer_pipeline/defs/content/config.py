"""Launchpad config of the content group's assets: every field described, with its range.

Kept apart from the assets so the instance's run coordinator can check a launch's values before the run is
queued without loading the code location (`influencer_pipeline/admin/run_coordinator.py`).
"""

import dagster as dg
from pydantic import Field

from influencer_pipeline.dagster_layer.errors import ranged


class ContentPlanConfig(dg.Config):
    posts: int = Field(0, ge=0, le=5, description="Posts to plan; 0: one per posting time in persona.yaml.")
    regenerate: bool = Field(
        False,
        description="Write a new plan even if the day has one (its images and reels follow). Without it a day "
        "that already has a plan keeps it. Refused once a post of the day was published.",
    )


class PostImagesConfig(dg.Config):
    steps: int = ranged(25, 1, 150, "Sampling steps")
    cfg: float = ranged(7.0, 1, 30, "Classifier-free guidance scale")
    image_size: int = ranged(1024, 256, 2048, "Square posts and carousels, in pixels", multiple_of=8)
    reel_width: int = ranged(768, 256, 2048, "Width of the 9:16 stills for reels", multiple_of=8)
    reel_height: int = ranged(1344, 256, 2048, "Height of the 9:16 stills for reels", multiple_of=8)
    lora_strength: float = ranged(0.9, -10, 10, "How strongly the persona's LoRA applies")
    negative_prompt: str = Field(
        "lowres, blurry, deformed hands, extra fingers, watermark, text, logo", description="What to keep out."
    )
    lora_version: str = Field(
        "",
        description="Render with this LoRA version (an id from lora_weights' versions table); empty: the "
        "persona.yaml lora_version pin, else the latest successfully trained version.",
    )
    regenerate: bool = Field(
        False, description="Render again even if the images were already made from this plan and LoRA version."
    )


class PostVideosConfig(dg.Config):
    scale: float = Field(1.0, gt=0, le=1, description="Render at this fraction of 1080p (drafts, tests).")
    music_key: str = Field("", description="Media-store key of a background track, ducked under the voice.")
    seconds_per_still: float = Field(0.0, ge=0, description="0: spread the stills over the voice-over.")
    img2vid_clips: int = Field(
        0,
        ge=0,
        le=5,
        description="How many of each reel's first stills ComfyUI animates (svd-img2vid) instead of Ken Burns; "
        "needs the ComfyUI engine and an SVD checkpoint. 0: Ken Burns only.",
    )
    img2vid_frames: int = Field(25, ge=2, le=128, description="Frames per clip (SVD-XT: 25).")
    img2vid_fps: int = Field(6, ge=1, le=60, description="Clip frame rate; frames / fps is the clip's length.")
    regenerate: bool = Field(
        False, description="Render again even if the reels were already cut from these images, plan and settings."
    )
