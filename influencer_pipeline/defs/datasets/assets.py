"""The `datasets` group: curated training images and their captions, one partition per persona."""

from collections.abc import Iterator

import dagster as dg

from influencer_pipeline.captions import caption_dataset
from influencer_pipeline.dagster_layer.errors import final_failure, user_errors_are_final
from influencer_pipeline.dagster_layer.loras import MIN_IMAGES
from influencer_pipeline.dagster_layer.metadata import image_preview, table
from influencer_pipeline.dagster_layer.partitions import personas
from influencer_pipeline.dagster_layer.resources import CaptionerResource, MediaStoreResource
from influencer_pipeline.defs.datasets.config import ImageCaptionsConfig, TrainingImagesConfig
from influencer_pipeline.ingest import IngestSettings, curate
from influencer_pipeline.media.keys import dataset_prefix, uploads_prefix
from influencer_pipeline.media.store import MediaStore
from influencer_pipeline.personas import load_persona
from influencer_pipeline.uploads import READY_MARKER, content_key

RECOMMENDED_IMAGES = 15


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
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """Validated, EXIF-corrected, de-duplicated, square-cropped training images with a rejection report.

    Reads `uploads/<persona>/` and never changes it; writes `personas/<persona>/dataset/*.png` and a manifest.
    Too few usable images fail the step (after recording the `min_images` check), so the persona shows as
    failed and nothing downstream runs or is started by automation for it.
    """
    persona = context.partition_key
    store = media.get_store()
    with user_errors_are_final():
        load_persona(store, persona)  # a bad persona.yaml fails here, before any work
        upload_key = upload_content_key(store, persona)
        report = curate(store, persona, IngestSettings(**config.model_dump()), progress=context.log.info)
    kept, rejected = len(report.kept), len(report.rejected)
    # The path inside the upload folder: nested files and refused folders ("album/") stay recognisable.
    rejections = [
        {"file": r.source_key.removeprefix(f"uploads/{persona}/"), "reason": r.reason} for r in report.rejected
    ]
    metadata = {
        "kept": kept,
        "rejected": rejected,
        "mean_sharpness": round(report.mean_sharpness, 2),
        "contact_sheet": image_preview(report.contact_sheet_jpeg, "contact sheet"),
        "rejections": table(rejections, [("file", "string"), ("reason", "string")]),
        "dataset": dg.MetadataValue.path(store.uri(dataset_prefix(persona))),
        "manifest": dg.MetadataValue.path(store.uri(report.manifest_key)),
        "media_store": media.engine,
        "upload_content": upload_key,
    }
    enough = dg.AssetCheckResult(
        check_name="min_images",
        passed=kept >= MIN_IMAGES,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={"kept": kept, "minimum": MIN_IMAGES},
        description=f"{kept} images kept; LoRA training needs at least {MIN_IMAGES}.",
    )
    recommended = dg.AssetCheckResult(
        check_name="recommended_images",
        passed=kept >= RECOMMENDED_IMAGES,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"kept": kept, "recommended": RECOMMENDED_IMAGES},
        description=f"{kept} images kept; {RECOMMENDED_IMAGES}+ give a more consistent likeness.",
    )
    if kept < MIN_IMAGES:
        yield enough
        yield recommended
        raise final_failure(
            f"{uploads_prefix(persona)}: {kept} usable images ({rejected} rejected); LoRA training needs at least "
            f"{MIN_IMAGES}. Fix: add {MIN_IMAGES - kept} or more photos of the persona to {uploads_prefix(persona)} "
            "(the rejections table says why the others were refused)",
            metadata={k: metadata[k] for k in ("kept", "rejected", "rejections", "contact_sheet")},
        )
    yield dg.MaterializeResult(metadata=metadata, check_results=[enough, recommended])


def upload_content_key(store: MediaStore, persona: str) -> str:
    """The upload sensor's content key of the persona's folder: recorded so the sensor can tell this content was
    already curated (e.g. by `make demo`) and not start the same work again."""
    prefix = uploads_prefix(persona)
    objects = [o for o in store.list(prefix) if not o.key.rsplit("/", 1)[-1].startswith(".")]
    return content_key(store, [o for o in objects if o.key != prefix + READY_MARKER])


@dg.asset(
    partitions_def=personas,
    group_name="datasets",
    deps=[training_images],
    kinds={"pytorch", "text"},
    # Follow new datasets, but never one whose blocking checks (min_images) failed.
    automation_condition=(
        dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed()
    ).with_label("eager, upstream blocking checks passed"),
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
    with user_errors_are_final():
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
