"""Media storage: one interface, a local-folder backend and an S3/MinIO backend."""

from influencer_pipeline.media.store import LocalMediaStore, MediaObject, MediaStore, S3MediaStore

__all__ = ["LocalMediaStore", "MediaObject", "MediaStore", "S3MediaStore"]
