"""Dataset ingest: decode, check, crop and de-duplicate a persona's uploads (plain Python, no Dagster)."""

from influencer_pipeline.ingest.curate import CurationReport, ImageRecord, curate
from influencer_pipeline.ingest.decode import Rejected
from influencer_pipeline.ingest.quality import hamming, phash, sharpness
from influencer_pipeline.ingest.settings import IngestSettings

__all__ = ["CurationReport", "ImageRecord", "IngestSettings", "Rejected", "curate", "hamming", "phash", "sharpness"]
