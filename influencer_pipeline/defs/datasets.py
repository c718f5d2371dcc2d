"""The `datasets` group: curated training images and their captions, one partition per persona."""

import dagster as dg
from pydantic import Field

from influencer_pipeline.captions import caption_dataset
from influencer_pipeline.defs.metadata import image_preview, table
from influencer_pipeline.defs.partitions import personas
from influencer_pipeline.defs.resources import CaptionerResource, MediaStoreResource
from influencer_pipeline.ingest import IngestSettings, curate
from influencer_pipeline.media.keys import dataset_prefix
from influencer_pipeline.personas import load_persona

MIN_IMAGES = 10
RECOMMENDED_IMAGES = 15
_DEFAULTS = IngestSettings()


class TrainingImagesConfig(dg.Config):
    """Curation thresholds; defaults suit SD1.5 LoRA training. See docs/SETUP.md for what each rule does."""

    min_short_side: int = Field(_DEFAULTS.min_short_side, ge=64, le=8192)
    resolution: int = Field(_DEFAULTS.resolution, ge=128, le=2048, multiple_of=64)
    max_pixels: int = Field(_DEFAULTS.max_pixels, ge=1_000_000)
    min_sharpness: float = Field(_DEFAULTS.min_sharpness, ge=0)
    min_brightness: float = Field(_DEFAULTS.min_brightness, ge=0, le=255)
    max_brightness: float = Field(_DEFAULTS.max_brightness, ge=0, le=255)
    duplicate_distance: int = Field(_DEFAULTS.duplicate_distance, ge=0, le=64)
    animated: str = Field(_DEFAULTS.animated, pattern="^(first_frame|reject)$")
    workers: int = Field(_DEFAULTS.workers, ge=1, le=64)


class ImageCaptionsConfig(dg.Config):
    overwrite: bool = Field(False, description="Re-caption images that already have a caption (needs a model).")


@dg.asset(
    partitions_def=personas,
    group_name="datasets",
    kinds={"python", "image"},
    check_specs=[
        dg.AssetCheckSpec("min_images", asset="training_images", blocking=True),
        dg.AssetCheckSpec("recommended_images", asset="training_images"),
    ],
)
def training_images(
    context: dg.AssetExecutionContext, config: TrainingImagesConfig, media: MediaStoreResource
) -> dg.MaterializeResult:
    """Validated, EXIF-corrected, de-duplicated, square-cropped training images with a rejection report.

    Reads `uploads/<persona>/` and never changes it; writes `personas/<persona>/dataset/*.png` and a manifest.
    """
    persona = context.partition_key
    store = media.get_store()
    load_persona(store, persona)  # a bad persona.yaml fails here, before any work
    report = curate(store, persona, IngestSettings(**config.model_dump()), progress=context.log.info)
    kept, rejected = len(report.kept), len(report.rejected)
    # The path inside the upload folder: nested files and refused folders ("album/") stay recognisable.
    rejections = [
        {"file": r.source_key.removeprefix(f"uploads/{persona}/"), "reason": r.reason} for r in report.rejected
    ]
    return dg.MaterializeResult(
        metadata={
            "kept": kept,
            "rejected": rejected,
            "mean_sharpness": round(report.mean_sharpness, 2),
            "contact_sheet": image_preview(report.contact_sheet_jpeg, "contact sheet"),
            "rejections": table(rejections, [("file", "string"), ("reason", "string")]),
            "dataset": dg.MetadataValue.path(store.uri(dataset_prefix(persona))),
            "manifest": dg.MetadataValue.path(store.uri(report.manifest_key)),
            "media_store": media.engine,
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="min_images",
                passed=kept >= MIN_IMAGES,
                severity=dg.AssetCheckSeverity.ERROR,
                metadata={"kept": kept, "minimum": MIN_IMAGES},
                description=f"{kept} images kept; LoRA training needs at least {MIN_IMAGES}.",
            ),
            dg.AssetCheckResult(
                check_name="recommended_images",
                passed=kept >= RECOMMENDED_IMAGES,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"kept": kept, "recommended": RECOMMENDED_IMAGES},
                description=f"{kept} images kept; {RECOMMENDED_IMAGES}+ give a more consistent likeness.",
            ),
        ],
    )


@dg.asset(
    partitions_def=personas,
    group_name="datasets",
    deps=[training_images],
    kinds={"pytorch", "text"},
    automation_condition=dg.AutomationCondition.eager(),
    check_specs=[dg.AssetCheckSpec("caption_coverage", asset="image_captions", blocking=True)],
)
def image_captions(
    context: dg.AssetExecutionContext,
    config: ImageCaptionsConfig,
    media: MediaStoreResource,
    captioner: CaptionerResource,
) -> dg.MaterializeResult:
    """One kohya `.txt` caption per curated image, trigger word first; existing captions kept unless overwrite."""
    persona_slug = context.partition_key
    store = media.get_store()
    persona = load_persona(store, persona_slug)
    engine = captioner.get_captioner()
    report = caption_dataset(store, persona, engine, overwrite=config.overwrite, progress=context.log.info)
    by_source = {s: sum(r.source == s for r in report.records) for s in ("existing", "upload-sidecar", "model")}
    fallback = sum(r.source == "fallback" for r in report.records)
    missing = [r.caption_key for r in report.records if not store.exists(r.caption_key)]
    if missing:
        passed, severity = False, dg.AssetCheckSeverity.ERROR
        description = f"{len(missing)} curated images have no caption file, e.g. {missing[0]}"
    else:
        passed, severity = fallback == 0, dg.AssetCheckSeverity.WARN
        description = (
            f"{fallback} images use the fallback caption; set CAPTION_MODEL or add .txt sidecars to uploads"
            if fallback
            else "every curated image has a caption from a model or a sidecar"
        )
    rows = [{"image": r.image_id, "source": r.source, "caption": r.caption} for r in report.records]
    return dg.MaterializeResult(
        metadata={
            "captions": len(report.records),
            "from_model": by_source["model"],
            "from_sidecars": by_source["upload-sidecar"] + by_source["existing"],
            "fallback": fallback,
            "coverage": round(report.coverage, 3),
            "captioner": report.captioner,
            "caption_table": table(rows, [("image", "string"), ("source", "string"), ("caption", "string")]),
            "manifest": dg.MetadataValue.path(store.uri(report.manifest_key)),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name="caption_coverage",
                passed=passed,
                severity=severity,
                metadata={"coverage": round(report.coverage, 3), "missing": len(missing)},
                description=description,
            )
        ],
    )


persona_dataset_job = dg.define_asset_job(
    "persona_dataset",
    selection=dg.AssetSelection.groups("datasets"),
    description="Curate and caption one persona's uploads (requested by the upload sensor).",
)
