"""Captions for LoRA datasets: a captioner (BLIP family, offline) and the kohya `.txt` sidecars it feeds."""

from influencer_pipeline.captions.captioner import BlipCaptioner, Captioner
from influencer_pipeline.captions.sidecars import CaptionRecord, CaptionReport, caption_dataset, with_trigger

__all__ = ["BlipCaptioner", "CaptionRecord", "CaptionReport", "Captioner", "caption_dataset", "with_trigger"]
