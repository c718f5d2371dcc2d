"""What the video-only publishers (YouTube, TikTok) share: the one video of a request, probed."""

from __future__ import annotations

from pathlib import Path

from influencer_pipeline.errors import InputError
from influencer_pipeline.publishing.base import PublishError, PublishRequest
from influencer_pipeline.video import ffmpeg
from influencer_pipeline.video.probe import MediaInfo, probe


def single_video(request: PublishRequest, platform: str) -> Path:
    """The request's only media item, which must be an existing video file: these platforms post one video."""
    videos = [item for item in request.media if item.kind == "video"]
    if len(videos) != 1 or len(request.media) != 1:
        raise PublishError(
            f"post {request.post_id}: {platform} takes exactly one video, got {len(request.media)} media item(s) "
            f"({len(videos)} video). Fix: plan a reel with one video for {platform}",
            kind="permanent",
        )
    path = Path(videos[0].path)
    if not path.is_file():
        raise PublishError(f"{path}: the video file does not exist. Fix: render the video again", kind="permanent")
    return path


def probe_video(path: Path) -> MediaInfo:
    """The video's streams and duration; an unreadable file is a permanent error (retrying cannot fix it)."""
    try:
        info = probe(path)
    except (InputError, ffmpeg.FFmpegError) as error:
        raise PublishError(
            f"{path}: cannot read the video ({str(error).splitlines()[0]}). Fix: render the video again",
            kind="permanent",
        ) from None
    if info.video is None or info.duration_s is None:
        raise PublishError(f"{path}: no video stream or duration. Fix: render the video again", kind="permanent")
    return info
