"""Resources: which engine each role uses, chosen from environment variables at load time.

Unset variables mean the embedded defaults (local media folder, no caption model); see README for the list.
Secrets are passed as `dg.EnvVar` so their values are read at run time and never stored in definitions.
"""

from __future__ import annotations

import os

import dagster as dg
from dagster_aws.s3 import S3Resource

from influencer_pipeline.captions import BlipCaptioner, Captioner
from influencer_pipeline.media import LocalMediaStore, MediaStore, S3MediaStore


class MediaStoreResource(dg.ConfigurableResource):
    """Base for the media-store backends; assets depend on this type and call `get_store()`."""

    def get_store(self) -> MediaStore:
        raise NotImplementedError

    @property
    def engine(self) -> str:
        raise NotImplementedError


class LocalMediaStoreResource(MediaStoreResource):
    root: str = "media"

    def get_store(self) -> MediaStore:
        return LocalMediaStore(self.root)

    @property
    def engine(self) -> str:
        return "local"


class S3MediaStoreResource(MediaStoreResource):
    bucket: str
    prefix: str = ""
    s3: S3Resource

    def get_store(self) -> MediaStore:
        return S3MediaStore(self.s3.get_client(), self.bucket, self.prefix)

    @property
    def engine(self) -> str:
        return "s3"


class CaptionerResource(dg.ConfigurableResource):
    """The dataset captioner. An empty `model` means none: uploaded sidecars or a marked fallback caption."""

    model: str = ""
    device: str = "auto"
    batch_size: int = 8
    max_new_tokens: int = 30

    def get_captioner(self) -> Captioner | None:
        if not self.model:
            return None
        return BlipCaptioner(
            self.model, device=self.device, batch_size=self.batch_size, max_new_tokens=self.max_new_tokens
        )


class UploadPolicy(dg.ConfigurableResource):
    """When the upload sensor treats a persona folder as ready to use."""

    settle_seconds: float = 60.0
    require_ready_marker: bool = False
    full_scan_seconds: float = 300.0


def _optional_env(name: str) -> dg.EnvVar | None:
    return dg.EnvVar(name) if os.environ.get(name) else None


def media_store_from_env() -> MediaStoreResource:
    """`MEDIA_S3_BUCKET` switches to S3/MinIO (`S3_ENDPOINT_URL` for MinIO); otherwise `MEDIA_ROOT` or ./media."""
    bucket = os.environ.get("MEDIA_S3_BUCKET")
    if not bucket:
        return LocalMediaStoreResource(root=os.path.abspath(os.environ.get("MEDIA_ROOT", "media")))
    s3 = S3Resource(
        endpoint_url=os.environ.get("S3_ENDPOINT_URL") or None,
        region_name=os.environ.get("AWS_REGION", "us-east-1"),
        aws_access_key_id=_optional_env("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=_optional_env("AWS_SECRET_ACCESS_KEY"),
    )
    return S3MediaStoreResource(bucket=bucket, prefix=os.environ.get("MEDIA_S3_PREFIX", ""), s3=s3)


def resources_from_env() -> dict[str, dg.ConfigurableResource]:
    return {
        "media": media_store_from_env(),
        "captioner": CaptionerResource(
            model=os.environ.get("CAPTION_MODEL", ""), device=os.environ.get("CAPTION_DEVICE", "auto")
        ),
        "upload_policy": UploadPolicy(settle_seconds=float(os.environ.get("UPLOAD_SETTLE_SECONDS", "60"))),
    }
