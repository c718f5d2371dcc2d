"""Curate a persona's uploads into a square, de-duplicated training dataset with a record per upload.

Every upload file is either kept (written as `<image_id>.png` under the persona's dataset folder) or
rejected with the rule it broke and the fix; nothing under `uploads/` is ever written, changed or deleted.
Entries the media store will not read (symbolic links, pipes, devices, files above its read limit) are
rejected too, with that reason, and their content is never opened.
Files are decoded in worker processes (bytes are read here, so the workers never need store credentials);
near-duplicates can only be judged once every image is measured, so each kept PNG is written as it
arrives and the final clean-up removes every curated file whose image is no longer kept, duplicates
included. The manifest, written last, is the source of truth.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath

from PIL import Image

from influencer_pipeline.ingest.contact_sheet import contact_sheet, thumbnail
from influencer_pipeline.ingest.crop import square_crop
from influencer_pipeline.ingest.decode import Rejected, check_header, load_upload, open_upload
from influencer_pipeline.ingest.quality import (
    WORK_SIZE,
    Exposure,
    exposure,
    hamming,
    phash,
    sharpness,
    working_copy,
)
from influencer_pipeline.ingest.settings import IngestSettings
from influencer_pipeline.media.keys import (
    PERSONAS,
    contact_sheet_key,
    dataset_manifest_key,
    dataset_prefix,
    uploads_prefix,
)
from influencer_pipeline.media.store import MediaStore, UnsafeMediaError
from influencer_pipeline.personas import PROFILE_NAME, validate_slug

READY_MARKER = "READY"
SIDECAR_SUFFIXES = (".txt", ".caption")
CURATED_SUFFIXES = (".png", ".txt")
PROGRESS_EVERY = 10
# PNG is lossless at every level; level 1 encodes about 3x faster than the default 6 for ~25% more bytes.
PNG_COMPRESS_LEVEL = 1


@dataclass
class ImageRecord:
    """What happened to one upload. `width`/`height` are upright (after EXIF orientation) once decoded;
    for files rejected from their header alone they are the stored size."""

    source_key: str
    sha256: str
    size_bytes: int
    width: int | None = None
    height: int | None = None
    format: str | None = None
    status: str = "rejected"
    reason: str = ""
    notes: list[str] = field(default_factory=list)
    sharpness: float | None = None
    brightness: float | None = None
    phash: str | None = None
    image_id: str | None = None
    output_key: str | None = None


@dataclass
class CurationReport:
    """The outcome of `curate`; `contact_sheet_jpeg` is small enough for Dagster metadata."""

    persona: str
    records: list[ImageRecord]
    manifest_key: str
    contact_sheet_key: str
    contact_sheet_jpeg: bytes

    @property
    def kept(self) -> list[ImageRecord]:
        return [r for r in self.records if r.status == "kept"]

    @property
    def rejected(self) -> list[ImageRecord]:
        return [r for r in self.records if r.status == "rejected"]

    @property
    def mean_sharpness(self) -> float:
        values = [r.sharpness for r in self.kept if r.sharpness is not None]
        return sum(values) / len(values) if values else 0.0


@dataclass
class Processed:
    """A worker's answer: the record, and for a kept image its PNG and contact-sheet tile."""

    record: ImageRecord
    png: bytes | None = None
    thumb: Image.Image | None = None


def curate(
    store: MediaStore,
    persona: str,
    settings: IngestSettings = IngestSettings(),  # noqa: B008 - frozen, so sharing the default is safe
    progress: Callable[[str], None] = lambda msg: None,
) -> CurationReport:
    """Curate `uploads/<persona>/` into `personas/<persona>/dataset/`, with a manifest and a contact sheet."""
    validate_slug(persona)
    keys = _upload_keys(store, persona)
    records = [_refused_record(entry.key, entry.reason) for entry in store.refused(uploads_prefix(persona))]
    thumbs: dict[str, Image.Image] = {}
    for done, processed in enumerate(_process_all(store, keys, settings), start=1):
        record = processed.record
        if processed.png is not None and processed.thumb is not None:
            record.output_key = f"{dataset_prefix(persona)}{record.image_id}.png"
            _write(store, persona, record.output_key, processed.png)
            thumbs[record.source_key] = processed.thumb
        records.append(record)
        if done % PROGRESS_EVERY == 0:
            progress(f"{persona}: curated {done}/{len(keys)} uploads")
    records.sort(key=lambda r: r.source_key)
    _reject_duplicates(records, settings, uploads_prefix(persona))
    _remove_stale(store, persona, {r.image_id for r in records if r.status == "kept"})
    sheet = contact_sheet([thumbs[r.source_key] for r in records if r.status == "kept"])
    report = CurationReport(persona, records, dataset_manifest_key(persona), contact_sheet_key(persona), sheet)
    _write(store, persona, report.manifest_key, _manifest(persona, settings, records))
    _write(store, persona, report.contact_sheet_key, sheet)
    progress(_summary(report))
    return report


def process_upload(key: str, data: bytes, settings: IngestSettings) -> Processed:
    """Decode, check, crop and measure one upload (runs in a worker process; pure function of its inputs)."""
    digest = hashlib.sha256(data).hexdigest()
    record = ImageRecord(source_key=key, sha256=digest, size_bytes=len(data))
    try:
        square = _decode_square(key, data, settings, record)
        _check_quality(key, record, _measure(square, record), settings)
    except Rejected as exc:
        record.reason = exc.reason
        return Processed(record)
    record.status = "kept"
    record.image_id = digest[:16]
    return Processed(record, _png(square), thumbnail(square))


def _decode_square(key: str, data: bytes, settings: IngestSettings, record: ImageRecord) -> Image.Image:
    image = open_upload(key, data, settings)
    record.format = image.format
    record.width, record.height = image.size
    check_header(key, image, settings)
    decoded = load_upload(key, image, settings)
    record.width, record.height, record.notes = decoded.width, decoded.height, decoded.notes
    return square_crop(decoded.image, settings.resolution)


def _measure(square: Image.Image, record: ImageRecord) -> Exposure:
    gray = working_copy(square)
    measured = exposure(gray)
    record.sharpness = round(sharpness(gray), 2)
    record.brightness = round(measured.brightness, 2)
    record.phash = phash(gray)
    return measured


def _check_quality(key: str, record: ImageRecord, measured: Exposure, settings: IngestSettings) -> None:
    """Exposure first: a nearly black frame also has no edges, and "too dark" is the useful diagnosis."""
    if measured.brightness < settings.min_brightness:
        raise Rejected(
            key,
            f"too dark: mean brightness {measured.brightness:.1f} is below min_brightness "
            f"{settings.min_brightness:g} ({measured.dark_fraction:.0%} of pixels are near black)",
            "use a better-lit photo, or brighten it before uploading",
        )
    if measured.brightness > settings.max_brightness:
        raise Rejected(
            key,
            f"too bright: mean brightness {measured.brightness:.1f} is above max_brightness "
            f"{settings.max_brightness:g} ({measured.bright_fraction:.0%} of pixels are blown to white)",
            "use a photo that is not over-exposed",
        )
    if record.sharpness is not None and record.sharpness < settings.min_sharpness:
        raise Rejected(
            key,
            f"too blurry: sharpness {record.sharpness:.1f} is below min_sharpness {settings.min_sharpness:g} "
            f"(variance of the Laplacian at {WORK_SIZE} pixels)",
            "use an in-focus photo without motion blur, or lower min_sharpness",
        )


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def _upload_keys(store: MediaStore, persona: str) -> list[str]:
    """Image candidates, sorted: the profile, the READY marker, caption sidecars and dotfiles are not uploads."""
    prefix = uploads_prefix(persona)
    return sorted(obj.key for obj in store.list(prefix) if _is_candidate(obj.key[len(prefix) :]))


def _refused_record(key: str, reason: str) -> ImageRecord:
    """A link or special file in the upload folder: reported with the reason, never read."""
    err = UnsafeMediaError(key, reason)
    return ImageRecord(source_key=key, sha256="", size_bytes=0, reason=f"{err.rule}. Fix: {err.fix}")


def _read(store: MediaStore, key: str) -> bytes | Processed:
    """The upload's bytes, or a rejection when the store refuses it (replaced by a link since the listing,
    larger than the read limit)."""
    try:
        return store.read_bytes(key)
    except UnsafeMediaError as err:
        return Processed(ImageRecord(source_key=key, sha256="", size_bytes=0, reason=f"{err.rule}. Fix: {err.fix}"))


def _is_candidate(relative: str) -> bool:
    path = PurePosixPath(relative)
    if any(part.startswith(".") for part in path.parts) or path.name in (PROFILE_NAME, READY_MARKER):
        return False
    return path.suffix.lower() not in SIDECAR_SUFFIXES


def _process_all(store: MediaStore, keys: Sequence[str], settings: IngestSettings) -> Iterator[Processed]:
    """Yield results in completion order, keeping only a few files' bytes in flight at a time."""
    workers = min(settings.workers, len(keys))
    if workers <= 1:
        for key in keys:
            data = _read(store, key)
            yield data if isinstance(data, Processed) else process_upload(key, data, settings)
        return
    with ProcessPoolExecutor(workers, mp_context=_start_method()) as pool:
        pending: dict[Future[Processed], str] = {}
        for key in keys:
            if len(pending) >= 2 * workers:
                yield from _collect(pending, FIRST_COMPLETED)
            data = _read(store, key)
            if isinstance(data, Processed):
                yield data
                continue
            pending[pool.submit(process_upload, key, data, settings)] = key
        yield from _collect(pending, ALL_COMPLETED)


def _collect(pending: dict[Future[Processed], str], return_when: str) -> Iterator[Processed]:
    """Results of the finished futures; an unexpected worker failure says which upload it was working on."""
    done, _ = wait(pending, return_when=return_when)
    for future in done:
        key = pending.pop(future)
        try:
            result = future.result()
        except Exception as exc:
            exc.add_note(f"while curating {key}")
            raise
        yield result


def _start_method() -> multiprocessing.context.BaseContext:
    """Never fork: Dagster's processes run threads, and forking a threaded process can deadlock.

    The fork server imports this module (and PIL, numpy) once; workers forked from it start in milliseconds.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["__main__", __name__])
    return context


def _reject_duplicates(records: list[ImageRecord], settings: IngestSettings, prefix: str) -> None:
    """Keep the sharpest of each group of look-alikes (ties go to the first name), reject the others."""
    candidates = [r for r in records if r.status == "kept"]
    candidates.sort(key=lambda r: (-(r.sharpness or 0.0), r.source_key))
    kept: list[ImageRecord] = []
    for record in candidates:
        near = [(hamming(record.phash or "", k.phash or ""), k.source_key) for k in kept]
        close = min((pair for pair in near if pair[0] <= settings.duplicate_distance), default=None)
        if close is None:
            kept.append(record)
            continue
        distance, original = close[0], close[1][len(prefix) :]
        record.status, record.image_id, record.output_key = "rejected", None, None
        record.reason = Rejected(
            record.source_key,
            f"near-duplicate: looks the same as {original} (perceptual-hash distance {distance}, "
            f"duplicate_distance is {settings.duplicate_distance}); kept {original}, the sharper of the two",
            "remove one of the two uploads, or lower duplicate_distance if they are different photos",
        ).reason


def _remove_stale(store: MediaStore, persona: str, kept_ids: set[str | None]) -> None:
    """Delete curated images and caption sidecars (top level of the dataset folder) no longer kept."""
    prefix = dataset_prefix(persona)
    for obj in list(store.list(prefix)):
        path = PurePosixPath(obj.key[len(prefix) :])
        if len(path.parts) == 1 and path.suffix in CURATED_SUFFIXES and path.stem not in kept_ids:
            _guard(obj.key, persona)
            store.delete(obj.key)


def _write(store: MediaStore, persona: str, key: str, data: bytes) -> None:
    _guard(key, persona)
    store.write_bytes(key, data)


def _guard(key: str, persona: str) -> None:
    """Curation owns only `personas/<persona>/`: uploads are never touched, even by a future bug."""
    if not key.startswith(f"{PERSONAS}/{persona}/"):
        raise RuntimeError(f"refusing to modify {key!r}: curation only writes under {PERSONAS}/{persona}/")


def _manifest(persona: str, settings: IngestSettings, records: list[ImageRecord]) -> bytes:
    """`workers` is left out: it changes how fast, never what, so the manifest depends only on the inputs."""
    used = {name: value for name, value in asdict(settings).items() if name != "workers"}
    document = {"persona": persona, "settings": used, "images": [asdict(r) for r in records]}
    return json.dumps(document, indent=2).encode()


def _summary(report: CurationReport) -> str:
    rules = Counter(r.reason.split(":", 1)[0] for r in report.rejected)
    detail = ", ".join(f"{count} {rule}" for rule, count in sorted(rules.items()))
    return (
        f"{report.persona}: curated {len(report.records)} uploads: {len(report.kept)} kept, "
        f"{len(report.rejected)} rejected" + (f" ({detail})" if detail else "")
    )
