"""Media storage: one interface, a local-folder backend and an S3/MinIO backend."""

from influencer_pipeline.media.store import (
    LocalMediaStore,
    MediaObject,
    MediaStore,
    RefusedEntry,
    S3MediaStore,
    UnsafeMediaError,
)

__all__ = ["LocalMediaStore", "MediaObject", "MediaStore", "RefusedEntry", "S3MediaStore", "UnsafeMediaError"]
