"""Caption a persona's curated dataset into kohya-style `.txt` sidecars, trigger word first.

Captions a person already wrote win over a model: an existing sidecar in the dataset is kept, and a `.txt` or
`.caption` file next to an upload is used as is. Only the rest go to the captioner; with none configured they
get a plain fallback caption, which `coverage` reports so a check can flag it. Uploads are never written to.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import PurePosixPath
from typing import Any

from PIL import Image

from influencer_pipeline.captions.captioner import Captioner
from influencer_pipeline.errors import InputError, ModelNotAvailableError
from influencer_pipeline.media.keys import UPLOADS, captions_manifest_key, dataset_manifest_key
from influencer_pipeline.media.store import MediaStore
from influencer_pipeline.personas import Persona

# Prompts commonly given to BLIP; conditional generation repeats them at the start of the caption.
PROMPT_ECHOES = ("a photography of", "a picture of", "a photo of", "an image of")
UPLOAD_SIDECAR_SUFFIXES = (".txt", ".caption")
CONFIGURE_HINT = (
    "set CAPTION_MODEL to a local BLIP model directory (or a repo id already in the Hugging Face cache) "
    "to caption with a model"
)


def with_trigger(caption: str, trigger: str, class_word: str) -> str:
    """One line that starts with the trigger, so the LoRA ties the subject to it and kohya `keep_tokens=1` works.

    "a photo of a woman smiling on a beach" becomes "ohwx woman, smiling on a beach"; a caption that already
    starts with the trigger is only tidied.
    """
    text = " ".join(caption.split())
    text = _strip_prefix(text, PROMPT_ECHOES)
    if re.split(r"[\s,]+", text, maxsplit=1)[0].casefold() == trigger.casefold():
        return text
    head = f"{trigger} {class_word}".strip()
    if class_word:
        text = re.sub(rf"^(?:(?:a|an|the)\s+)?{re.escape(class_word)}(?=[\s,.;:]|$)", "", text, flags=re.I)
    rest = text.strip(" ,.;:")
    return f"{head}, {rest}" if rest else head


def _strip_prefix(text: str, prefixes: tuple[str, ...]) -> str:
    for prefix in prefixes:
        if text.lower().startswith(prefix + " ") or text.lower() == prefix:
            return text[len(prefix) :].strip()
    return text


def fallback_caption(persona: Persona) -> str:
    return f"{persona.trigger}, a photo of a {persona.class_word}"


@dataclass
class CaptionRecord:
    """Where one caption came from: "existing", "upload-sidecar", "model" or "fallback"."""

    image_id: str
    image_key: str
    caption_key: str
    caption: str
    source: str


@dataclass
class CaptionReport:
    persona: str
    records: list[CaptionRecord]
    manifest_key: str
    captioner: str

    @property
    def coverage(self) -> float:
        """Share of kept images with a real (not fallback) caption; 0 when there are no images."""
        if not self.records:
            return 0.0
        return sum(r.source != "fallback" for r in self.records) / len(self.records)


@dataclass(frozen=True)
class _Kept:
    image_id: str
    image_key: str
    source_key: str

    @property
    def caption_key(self) -> str:
        return str(PurePosixPath(self.image_key).with_suffix(".txt"))


def caption_dataset(
    store: MediaStore,
    persona: Persona,
    captioner: Captioner | None,
    overwrite: bool = False,
    progress: Callable[[str], None] = lambda m: None,
) -> CaptionReport:
    """Write a trigger-first `.txt` next to every kept dataset image and a captions manifest; see module doc."""
    if overwrite and captioner is None:
        raise ModelNotAvailableError(f"overwrite re-captions every image and needs a caption model: {CONFIGURE_HINT}")
    images = _kept_images(store, persona.slug)
    records: list[CaptionRecord] = []
    pending: list[_Kept] = []
    for image in images:
        found = None if overwrite else _human_caption(store, image)
        if found is None:
            pending.append(image)
            continue
        text, source = found
        if source == "upload-sidecar":
            text = _write_caption(store, image, text, persona)
        records.append(_record(image, text, source))
    _report_human(records, progress)
    if captioner is None:
        records += _fallback(store, persona, pending, progress)
    else:
        records += _model(store, persona, captioner, pending, progress)
    order = {image.image_key: i for i, image in enumerate(images)}
    records.sort(key=lambda r: order[r.image_key])
    report = CaptionReport(
        persona.slug, records, captions_manifest_key(persona.slug), captioner.name if captioner else "none"
    )
    _write_manifest(store, report)
    return report


def _kept_images(store: MediaStore, persona: str) -> list[_Kept]:
    key = dataset_manifest_key(persona)
    if not store.exists(key):
        raise FileNotFoundError(
            f"{store.uri(key)}: no dataset manifest for persona {persona!r}. "
            f"Fix: materialize `training_images` for partition {persona!r} first."
        )
    manifest: dict[str, Any] = json.loads(store.read_bytes(key))
    return [
        _Kept(entry["image_id"], entry["output_key"], entry["source_key"])
        for entry in manifest["images"]
        if entry["status"] == "kept"
    ]


def _human_caption(store: MediaStore, image: _Kept) -> tuple[str, str] | None:
    """An existing dataset sidecar, else an upload sidecar, with its source; None if neither has text."""
    candidates = [(image.caption_key, "existing")] + [
        (str(PurePosixPath(image.source_key).with_suffix(suffix)), "upload-sidecar")
        for suffix in UPLOAD_SIDECAR_SUFFIXES
    ]
    for key, source in candidates:
        text = _read_text(store, key) if store.exists(key) else ""
        if text:
            return text, source
    return None


def _read_text(store: MediaStore, key: str) -> str:
    try:
        return store.read_bytes(key).decode("utf-8-sig").strip()
    except UnicodeDecodeError:
        raise InputError(store.uri(key), "is not UTF-8 text", "save the caption file as UTF-8") from None


def _report_human(records: list[CaptionRecord], progress: Callable[[str], None]) -> None:
    for source, what in (("existing", "existing dataset captions"), ("upload-sidecar", "upload sidecars")):
        count = sum(r.source == source for r in records)
        if count:
            progress(f"kept {count} caption(s) from {what}")


def _fallback(
    store: MediaStore, persona: Persona, pending: list[_Kept], progress: Callable[[str], None]
) -> list[CaptionRecord]:
    if pending:
        progress(
            f"no caption model configured: {len(pending)} image(s) get {fallback_caption(persona)!r}; {CONFIGURE_HINT}"
        )
    return [
        _record(image, _write_caption(store, image, fallback_caption(persona), persona), "fallback")
        for image in pending
    ]


def _model(
    store: MediaStore,
    persona: Persona,
    captioner: Captioner,
    pending: list[_Kept],
    progress: Callable[[str], None],
) -> list[CaptionRecord]:
    records: list[CaptionRecord] = []
    for batch in _batches(pending, captioner.batch_size):
        pictures = [_open(store, image.image_key) for image in batch]
        for image, text in zip(batch, captioner.caption(pictures), strict=True):
            records.append(_record(image, _write_caption(store, image, text, persona), "model"))
        progress(f"captioned {len(records)}/{len(pending)} image(s) with {captioner.name}")
    return records


def _batches(items: list[_Kept], size: int) -> Iterator[list[_Kept]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _open(store: MediaStore, key: str) -> Image.Image:
    with Image.open(io.BytesIO(store.read_bytes(key))) as image:
        return image.convert("RGB")


def _write_caption(store: MediaStore, image: _Kept, text: str, persona: Persona) -> str:
    """Write the trigger-first caption sidecar and return the text written."""
    key = image.caption_key
    if key.startswith(UPLOADS + "/"):
        raise ValueError(f"refusing to write caption {key!r}: uploads are never modified")
    line = with_trigger(text, persona.trigger, persona.class_word)
    store.write_bytes(key, (line + "\n").encode("utf-8"))
    return line


def _record(image: _Kept, caption: str, source: str) -> CaptionRecord:
    return CaptionRecord(image.image_id, image.image_key, image.caption_key, caption, source)


def _write_manifest(store: MediaStore, report: CaptionReport) -> None:
    body = {
        "persona": report.persona,
        "captioner": report.captioner,
        "captions": [asdict(record) for record in report.records],
    }
    store.write_bytes(report.manifest_key, json.dumps(body, indent=2, ensure_ascii=False).encode("utf-8"))
