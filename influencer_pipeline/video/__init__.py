"""Reels from stills with ffmpeg (imageio-ffmpeg's bundled binary): motion, captions, voice, music, loudness.

Plain Python with no Dagster import; `post_videos` wires it. See `render.py` for the pipeline and why.
"""

from influencer_pipeline.video.aspects import ASPECTS, LANDSCAPE, SQUARE, VERTICAL, Aspect, aspects_for
from influencer_pipeline.video.ffmpeg import FFmpegError, FFmpegNotFoundError, ffmpeg_exe
from influencer_pipeline.video.render import ReelReport, ReelSpec, check_reel, render_reel, thumbnail
from influencer_pipeline.video.subtitles import FontNotFoundError, Word

__all__ = [
    "ASPECTS",
    "LANDSCAPE",
    "SQUARE",
    "VERTICAL",
    "Aspect",
    "FFmpegError",
    "FFmpegNotFoundError",
    "FontNotFoundError",
    "ReelReport",
    "ReelSpec",
    "Word",
    "aspects_for",
    "check_reel",
    "ffmpeg_exe",
    "render_reel",
    "thumbnail",
]
