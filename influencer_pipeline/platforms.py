"""Every platform fact in one table: text limits, media rules, reel frames, API hosts and the documents they come from.

Why one module: the writer validates captions, pre-flight checks and fixes media, the renderer picks frames and the
publishers call the APIs, and each of them used to keep its own copy of "Instagram takes 8 MiB JPEGs" or "a YouTube
title is 100 characters". A limit changed in one place and not the others fails a post only at publish time. Here
each fact is written once, beside the public page it comes from, and the others import it.

Where a platform is vague the stricter reading is used: a rejected post costs more than a re-encoded one.
Plain Python on purpose: the writer, the renderer and the clients import it without pulling in anything else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Platform = Literal["instagram", "facebook", "youtube", "tiktok"]
PLATFORMS: tuple[Platform, ...] = ("instagram", "facebook", "youtube", "tiktok")
MediaKind = Literal["image", "video"]

MB = 1000 * 1000
MIB = 1024 * 1024

# --- documents --------------------------------------------------------------------------------------------------
# Instagram: media specs (image and reel tables), publishing flow, container status and the daily publishing limit.
INSTAGRAM_MEDIA_DOC = (
    "https://developers.facebook.com/docs/instagram-platform/instagram-graph-api/reference/ig-user/media"
)
INSTAGRAM_PUBLISHING_DOC = "https://developers.facebook.com/docs/instagram-platform/content-publishing"
INSTAGRAM_CONTAINER_DOC = (
    "https://developers.facebook.com/docs/instagram-platform/instagram-graph-api/reference/ig-container"
)
INSTAGRAM_LIMIT_DOC = "https://developers.facebook.com/docs/instagram-platform/instagram-graph-api/reference/ig-user/content_publishing_limit"
INSTAGRAM_ERRORS_DOC = (
    "https://developers.facebook.com/docs/instagram-platform/instagram-graph-api/reference/error-codes"
)
# Facebook Pages: feed and photo posts, and reels (3-90 s, 9:16, >= 540x960, 24-60 fps).
FACEBOOK_POSTS_DOC = "https://developers.facebook.com/docs/pages-api/posts"
FACEBOOK_PHOTO_DOC = "https://developers.facebook.com/docs/graph-api/reference/page/photos/"
FACEBOOK_REELS_DOC = "https://developers.facebook.com/docs/video-api/guides/reels-publishing"
META_ERRORS_DOC = "https://developers.facebook.com/docs/graph-api/guides/error-handling"
META_RATE_LIMITS_DOC = "https://developers.facebook.com/docs/graph-api/overview/rate-limiting"
# YouTube: the video resource (title <= 100 characters, description <= 5000 bytes, no '<' or '>'), Shorts (square
# or vertical, at most 3 minutes, for uploads since 2024-10-15), the resumable upload and its errors.
YOUTUBE_VIDEO_DOC = "https://developers.google.com/youtube/v3/docs/videos#resource"
YOUTUBE_SHORTS_DOC = "https://support.google.com/youtube/answer/15424877"
YOUTUBE_UPLOAD_DOC = "https://developers.google.com/youtube/v3/guides/using_resumable_upload_protocol"
YOUTUBE_INSERT_DOC = "https://developers.google.com/youtube/v3/docs/videos/insert"
YOUTUBE_QUOTA_DOC = "https://developers.google.com/youtube/v3/determine_quota_cost"
# TikTok: media restrictions (video and photo), direct post and its error codes, status, creator info.
TIKTOK_MEDIA_DOC = "https://developers.tiktok.com/doc/content-posting-api-media-transfer-guide"
TIKTOK_DIRECT_POST_DOC = "https://developers.tiktok.com/doc/content-posting-api-reference-direct-post"
TIKTOK_PHOTO_DOC = "https://developers.tiktok.com/doc/content-posting-api-reference-photo-post"
TIKTOK_STATUS_DOC = "https://developers.tiktok.com/doc/content-posting-api-reference-get-video-status"
TIKTOK_CREATOR_INFO_DOC = "https://developers.tiktok.com/doc/content-posting-api-reference-query-creator-info"
TIKTOK_GUIDELINES_DOC = "https://developers.tiktok.com/doc/content-sharing-guidelines"
# MP4 "faststart" (the moov atom before the media data), which every platform's upload guide asks for.
FASTSTART_DOC = "https://ffmpeg.org/ffmpeg-formats.html#mov_002c-mp4_002c-ismv"  # movflags +faststart

# --- API hosts --------------------------------------------------------------------------------------------------
# One Meta Graph API version serves linking and publishing, so a token is never obtained under one version and used
# under another. Versions and their end-of-life dates: https://developers.facebook.com/docs/graph-api/changelog/versions
GRAPH_API_VERSION = "v24.0"
# Instagram API with Instagram Login: "All endpoints can be accessed via the graph.instagram.com host."
# https://developers.facebook.com/docs/instagram-platform/instagram-api-with-instagram-login/content-publishing
GRAPH_INSTAGRAM = "https://graph.instagram.com"
# Instagram API with Facebook Login, and Facebook Pages: graph.facebook.com.
# https://developers.facebook.com/docs/instagram-platform/instagram-api-with-facebook-login/content-publishing
GRAPH_FACEBOOK = "https://graph.facebook.com"
# Resumable Instagram video upload, "available only for apps that have implemented Facebook Login for Business".
# https://developers.facebook.com/docs/instagram-platform/content-publishing/resumable-uploads
RUPLOAD_FACEBOOK = "https://rupload.facebook.com"
# Page video uploads: "Videos must be published to graph-video.facebook.com instead of the regular Graph API URL".
# https://developers.facebook.com/docs/graph-api/video-uploads
GRAPH_VIDEO_FACEBOOK = "https://graph-video.facebook.com"
# TikTok Content Posting API (TIKTOK_DIRECT_POST_DOC).
TIKTOK_API = "https://open.tiktokapis.com"
# YouTube videos.insert as a resumable upload (YOUTUBE_UPLOAD_DOC).
YOUTUBE_UPLOAD_URL = "https://www.googleapis.com/upload/youtube/v3/videos"

# --- text -------------------------------------------------------------------------------------------------------
# Instagram 2200 characters and 30 hashtags (INSTAGRAM_MEDIA_DOC, `caption`); Facebook 63206 characters; YouTube
# 5000 bytes of description and 15 hashtags before it ignores them all (YOUTUBE_VIDEO_DOC); TikTok 2200 characters
# of `title` for a video post (TIKTOK_DIRECT_POST_DOC).
CAPTION_LIMITS: dict[str, int] = {"instagram": 2200, "facebook": 63206, "youtube": 5000, "tiktok": 2200}
HASHTAG_LIMITS: dict[str, int] = {"instagram": 30, "facebook": 30, "youtube": 15, "tiktok": 30}
YOUTUBE_TITLE_LIMIT = 100
INSTAGRAM_MENTION_LIMIT = 20
YOUTUBE_SHORTS_MAX_S = 180.0
INSTAGRAM_IMAGE_MAX_BYTES = 8 * MIB  # error 36000 / 2207004 above it (INSTAGRAM_ERRORS_DOC)
FACEBOOK_PHOTO_MAX_BYTES = 4 * MIB  # larger photos are rejected with subcode 1366046
CAROUSEL_MAX_ITEMS = {"instagram": 10, "facebook": 10, "tiktok": 35}


# --- reel frames ------------------------------------------------------------------------------------------------
Placement = Literal["reel", "feed"]


@dataclass(frozen=True)
class Aspect:
    """One output frame for a rendered video."""

    name: str  # "9:16"
    width: int
    height: int

    @property
    def slug(self) -> str:
        """File-name friendly ("9x16"), for media keys like `reel-9x16.mp4`."""
        return self.name.replace(":", "x")


VERTICAL = Aspect("9:16", 1080, 1920)
SQUARE = Aspect("1:1", 1080, 1080)
LANDSCAPE = Aspect("16:9", 1920, 1080)
ASPECTS = {aspect.name: aspect for aspect in (VERTICAL, SQUARE, LANDSCAPE)}

# Reels are 9:16 everywhere (Instagram: INSTAGRAM_MEDIA_DOC "recommended 9:16"; Facebook: FACEBOOK_REELS_DOC;
# Shorts: YOUTUBE_SHORTS_DOC; TikTok: TIKTOK_MEDIA_DOC). Feed videos: Facebook 1:1 fills most of a phone's feed,
# YouTube 16:9 is a regular upload; Instagram and TikTok have no other video placement.
PLATFORM_ASPECTS: dict[Placement, dict[str, tuple[Aspect, ...]]] = {
    "reel": {"instagram": (VERTICAL,), "tiktok": (VERTICAL,), "youtube": (VERTICAL,), "facebook": (VERTICAL,)},
    "feed": {"instagram": (VERTICAL,), "tiktok": (VERTICAL,), "youtube": (LANDSCAPE,), "facebook": (SQUARE,)},
}


# --- media rules ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FormatRule:
    """Which media a post format takes on a platform, and how many."""

    kind: MediaKind
    min_items: int
    max_items: int


@dataclass(frozen=True)
class ImageRules:
    formats: frozenset[str]  # PIL format names posted as they are; anything else becomes a JPEG
    max_bytes: int
    aspect: tuple[float, float] | None  # width / height, inclusive
    max_width: int | None
    max_box: tuple[int, int] | None  # (long side, short side)
    source: str


@dataclass(frozen=True)
class VideoRules:
    containers: frozenset[str] | None  # None: anything the platform transcodes
    video_codecs: frozenset[str] | None
    pix_fmts: frozenset[str] | None
    audio_codecs: frozenset[str] | None
    max_audio_hz: int | None
    fps: tuple[float, float] | None
    duration_s: tuple[float | None, float | None]
    min_size: tuple[int, int] | None  # (short side, long side)
    max_width: int | None
    max_side: int | None
    aspect: tuple[float, float] | None  # width / height, inclusive
    max_bytes: int | None
    max_bitrate: int | None  # bits per second, averaged over the file
    faststart: bool
    source: str
    # Advice, not rules: outside these the post goes out, but is cropped, letterboxed or not shown as a reel.
    recommended_aspect: float | None = None
    recommended_duration_s: tuple[float, float] | None = None
    recommended_min_size: tuple[int, int] | None = None


@dataclass(frozen=True)
class PlatformRules:
    name: str
    caption_limit: int
    caption_unit: Literal["characters", "bytes"]
    hashtag_limit: int
    mention_limit: int | None
    formats: dict[str, FormatRule]
    image: ImageRules | None
    video: VideoRules | None
    title_limit: int | None  # None: the platform takes no title
    forbidden_chars: str  # in the caption and the title
    source: str


H264_420 = frozenset({"yuv420p", "yuvj420p"})
RULES: dict[str, PlatformRules] = {
    "instagram": PlatformRules(
        name="Instagram",
        caption_limit=CAPTION_LIMITS["instagram"],
        caption_unit="characters",
        hashtag_limit=HASHTAG_LIMITS["instagram"],
        mention_limit=INSTAGRAM_MENTION_LIMIT,
        formats={
            "image": FormatRule("image", 1, 1),
            "carousel": FormatRule("image", 2, CAROUSEL_MAX_ITEMS["instagram"]),
            "reel": FormatRule("video", 1, 1),
        },
        image=ImageRules(
            formats=frozenset({"JPEG"}),  # JPEG only; MPO/JPS are not
            max_bytes=INSTAGRAM_IMAGE_MAX_BYTES,
            aspect=(0.8, 1.91),  # 4:5 to 1.91:1, else error 36003 / 2207009
            max_width=1440,
            max_box=None,
            source=INSTAGRAM_MEDIA_DOC,
        ),
        video=VideoRules(
            containers=frozenset({"mp4", "mov"}),
            video_codecs=frozenset({"h264", "hevc"}),
            pix_fmts=H264_420,
            audio_codecs=frozenset({"aac"}),
            max_audio_hz=48000,
            fps=(23, 60),
            duration_s=(3, 15 * 60),
            min_size=None,
            max_width=1920,
            max_side=None,
            aspect=(0.01, 10),
            max_bytes=300 * MB,
            max_bitrate=25 * MB,
            faststart=True,
            source=INSTAGRAM_MEDIA_DOC,
            recommended_aspect=9 / 16,
            recommended_min_size=(540, 960),
        ),
        title_limit=None,
        forbidden_chars="",
        source=INSTAGRAM_MEDIA_DOC,
    ),
    "facebook": PlatformRules(
        name="Facebook",
        caption_limit=CAPTION_LIMITS["facebook"],
        caption_unit="characters",
        hashtag_limit=HASHTAG_LIMITS["facebook"],
        mention_limit=None,
        formats={
            "image": FormatRule("image", 1, 1),
            "carousel": FormatRule("image", 2, CAROUSEL_MAX_ITEMS["facebook"]),
            "reel": FormatRule("video", 1, 1),
        },
        image=ImageRules(
            formats=frozenset({"JPEG", "PNG"}),
            max_bytes=FACEBOOK_PHOTO_MAX_BYTES,
            aspect=None,
            max_width=None,
            max_box=None,
            source=FACEBOOK_PHOTO_DOC,
        ),
        video=VideoRules(
            containers=frozenset({"mp4", "mov"}),
            video_codecs=frozenset({"h264", "hevc", "vp9", "av1"}),
            pix_fmts=None,
            audio_codecs=frozenset({"aac"}),
            max_audio_hz=48000,
            fps=(24, 60),
            duration_s=(None, None),
            min_size=None,
            max_width=None,
            max_side=None,
            aspect=None,
            max_bytes=None,
            max_bitrate=None,
            faststart=True,
            source=FACEBOOK_REELS_DOC,
            recommended_aspect=9 / 16,
            recommended_duration_s=(3, 90),
            recommended_min_size=(540, 960),
        ),
        title_limit=None,
        forbidden_chars="",
        source=FACEBOOK_POSTS_DOC,
    ),
    "youtube": PlatformRules(
        name="YouTube",
        caption_limit=CAPTION_LIMITS["youtube"],
        caption_unit="bytes",
        hashtag_limit=HASHTAG_LIMITS["youtube"],
        mention_limit=None,
        formats={"reel": FormatRule("video", 1, 1)},
        image=None,
        video=VideoRules(
            containers=None,
            video_codecs=None,
            pix_fmts=None,
            audio_codecs=None,
            max_audio_hz=None,
            fps=None,
            duration_s=(None, YOUTUBE_SHORTS_MAX_S),
            min_size=None,
            max_width=None,
            max_side=None,
            aspect=(0.0, 1.0),
            max_bytes=256 * 1000 * MB,  # 256 GB (YOUTUBE_INSERT_DOC: "Maximum file size")
            max_bitrate=None,
            faststart=False,
            source=YOUTUBE_SHORTS_DOC,
        ),
        title_limit=YOUTUBE_TITLE_LIMIT,
        forbidden_chars="<>",
        source=YOUTUBE_VIDEO_DOC,
    ),
    "tiktok": PlatformRules(
        name="TikTok",
        caption_limit=CAPTION_LIMITS["tiktok"],
        caption_unit="characters",
        hashtag_limit=HASHTAG_LIMITS["tiktok"],
        mention_limit=None,
        formats={
            "image": FormatRule("image", 1, 1),
            "carousel": FormatRule("image", 2, CAROUSEL_MAX_ITEMS["tiktok"]),
            "reel": FormatRule("video", 1, 1),
        },
        image=ImageRules(
            formats=frozenset({"JPEG", "WEBP"}),  # no PNG
            max_bytes=20 * MB,
            aspect=None,
            max_width=None,
            max_box=(1920, 1080),  # at most 1080p, else `picture_size_check_failed`
            source=TIKTOK_MEDIA_DOC,
        ),
        video=VideoRules(
            containers=frozenset({"mp4", "mov", "webm"}),
            video_codecs=frozenset({"h264"}),
            pix_fmts=H264_420,
            audio_codecs=frozenset({"aac"}),
            max_audio_hz=48000,
            fps=(23, 60),
            duration_s=(3, 600),
            min_size=(360, 360),
            max_width=None,
            max_side=4096,
            aspect=None,
            max_bytes=4000 * MB,
            max_bitrate=None,
            faststart=True,
            source=TIKTOK_MEDIA_DOC,
            recommended_aspect=9 / 16,
        ),
        title_limit=None,
        forbidden_chars="",
        source=TIKTOK_DIRECT_POST_DOC,
    ),
}
