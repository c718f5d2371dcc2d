"""caption_dataset: which caption wins, what is written where, and with_trigger's normalisation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from influencer_pipeline.captions.captioner import BlipCaptioner
from influencer_pipeline.captions.sidecars import caption_dataset, with_trigger
from influencer_pipeline.errors import InputError, ModelNotAvailableError
from influencer_pipeline.media import MediaStore
from influencer_pipeline.media.keys import captions_manifest_key
from influencer_pipeline.personas import Persona
from tests.captions.conftest import MakeDataset


class FakeCaptioner:
    """Records the batches it is asked for and captions each image with its size."""

    name = "fake:v1"

    def __init__(self, batch_size: int = 8) -> None:
        self.batch_size = batch_size
        self.batches: list[int] = []

    def caption(self, images: list[Image.Image]) -> list[str]:
        self.batches.append(len(images))
        return [f"a woman standing in a {image.width}px\nstreet" for image in images]


def txt(key: str) -> str:
    return key.removesuffix(".png") + ".txt"


def read(store: MediaStore, key: str) -> str:
    return store.read_bytes(key).decode("utf-8")


def uploads(store: MediaStore) -> dict[str, bytes]:
    return {obj.key: store.read_bytes(obj.key) for obj in store.list("uploads/")}


@pytest.mark.parametrize(
    ("caption", "expected"),
    [
        ("a woman smiling on a beach", "ohwx woman, smiling on a beach"),
        ("smiling on a beach", "ohwx woman, smiling on a beach"),
        ("a photo of a woman smiling on a beach", "ohwx woman, smiling on a beach"),
        ("A picture of  a dog\nin a park ", "ohwx woman, a dog in a park"),
        ("ohwx woman, smiling on a beach", "ohwx woman, smiling on a beach"),
        ("OHWX, a photo of a woman", "OHWX, a photo of a woman"),
        ("a woman's hand on a table", "ohwx woman, a woman's hand on a table"),
        ("a womanly figure", "ohwx woman, a womanly figure"),
        ("a woman", "ohwx woman"),
        ("  \n ", "ohwx woman"),
        ("a photo of", "ohwx woman"),
        ("ohwxian art", "ohwx woman, ohwxian art"),
    ],
)
def test_with_trigger(caption: str, expected: str) -> None:
    assert with_trigger(caption, "ohwx", "woman") == expected


def test_with_trigger_without_class_word() -> None:
    assert with_trigger("a person at the park", "sks", "") == "sks, a person at the park"


def test_no_captioner_writes_fallback_and_says_how_to_configure(
    store: MediaStore, persona: Persona, make_dataset: MakeDataset
) -> None:
    kept = make_dataset(kept=3, rejected=2)
    messages: list[str] = []

    report = caption_dataset(store, persona, None, progress=messages.append)

    assert [r.source for r in report.records] == ["fallback"] * 3
    assert report.coverage == 0.0
    assert report.captioner == "none"
    assert [r.image_key for r in report.records] == [e["output_key"] for e in kept]
    for entry in kept:
        assert read(store, txt(entry["output_key"])) == "ohwx, a photo of a woman\n"
    assert any("CAPTION_MODEL" in m for m in messages)


def test_model_captions_in_batches_and_writes_manifest(
    store: MediaStore, persona: Persona, make_dataset: MakeDataset
) -> None:
    kept = make_dataset(kept=5)
    captioner = FakeCaptioner(batch_size=2)
    messages: list[str] = []

    report = caption_dataset(store, persona, captioner, progress=messages.append)

    assert captioner.batches == [2, 2, 1]
    assert sum("captioned" in m for m in messages) == 3
    assert report.coverage == 1.0
    assert all(r.source == "model" for r in report.records)
    assert read(store, txt(kept[0]["output_key"])) == "ohwx woman, standing in a 512px street\n"
    manifest = json.loads(store.read_bytes(captions_manifest_key("ava")))
    assert manifest["persona"] == "ava"
    assert manifest["captioner"] == "fake:v1"
    assert manifest["captions"][0] == {
        "image_id": kept[0]["image_id"],
        "image_key": kept[0]["output_key"],
        "caption_key": txt(kept[0]["output_key"]),
        "caption": "ohwx woman, standing in a 512px street",
        "source": "model",
    }
    assert report.manifest_key == captions_manifest_key("ava")


def test_existing_and_upload_sidecars_win_over_the_model(
    store: MediaStore, persona: Persona, make_dataset: MakeDataset
) -> None:
    kept = make_dataset(kept=4)
    store.write_bytes(txt(kept[0]["output_key"]), b"my own words, kept verbatim\n")
    store.write_bytes("uploads/ava/img01.txt", "\ufeffa woman laughing in Café Zoë\n".encode())
    store.write_bytes("uploads/ava/img02.caption", b"ohwx woman, reading a book")
    before = uploads(store)
    captioner = FakeCaptioner()

    report = caption_dataset(store, persona, captioner)

    assert [r.source for r in report.records] == ["existing", "upload-sidecar", "upload-sidecar", "model"]
    assert captioner.batches == [1]
    assert read(store, txt(kept[0]["output_key"])) == "my own words, kept verbatim\n"
    assert read(store, txt(kept[1]["output_key"])) == "ohwx woman, laughing in Café Zoë\n"
    assert read(store, txt(kept[2]["output_key"])) == "ohwx woman, reading a book\n"
    assert report.records[0].caption == "my own words, kept verbatim"
    assert uploads(store) == before


def test_blank_sidecars_count_as_missing(store: MediaStore, persona: Persona, make_dataset: MakeDataset) -> None:
    kept = make_dataset(kept=1)
    store.write_bytes(txt(kept[0]["output_key"]), b"  \n")
    store.write_bytes("uploads/ava/img00.txt", b"")

    report = caption_dataset(store, persona, FakeCaptioner())

    assert report.records[0].source == "model"


def test_overwrite_recaptions_everything(store: MediaStore, persona: Persona, make_dataset: MakeDataset) -> None:
    kept = make_dataset(kept=2)
    store.write_bytes(txt(kept[0]["output_key"]), b"old caption\n")
    store.write_bytes("uploads/ava/img01.txt", b"user caption")
    captioner = FakeCaptioner()

    report = caption_dataset(store, persona, captioner, overwrite=True)

    assert [r.source for r in report.records] == ["model", "model"]
    assert read(store, txt(kept[0]["output_key"])).startswith("ohwx woman, standing")


def test_overwrite_without_a_model_is_refused(store: MediaStore, persona: Persona, make_dataset: MakeDataset) -> None:
    make_dataset()
    with pytest.raises(ModelNotAvailableError, match=r"overwrite.*CAPTION_MODEL"):
        caption_dataset(store, persona, None, overwrite=True)


def test_rerun_keeps_what_the_first_run_wrote(store: MediaStore, persona: Persona, make_dataset: MakeDataset) -> None:
    make_dataset(kept=2)
    first = caption_dataset(store, persona, FakeCaptioner())
    captioner = FakeCaptioner()

    second = caption_dataset(store, persona, captioner)

    assert captioner.batches == []
    assert [r.source for r in second.records] == ["existing", "existing"]
    assert [r.caption for r in second.records] == [r.caption for r in first.records]


def test_missing_dataset_manifest_says_to_materialize_training_images(store: MediaStore, persona: Persona) -> None:
    with pytest.raises(FileNotFoundError, match="materialize `training_images`"):
        caption_dataset(store, persona, None)


def test_non_utf8_upload_sidecar_names_the_file(store: MediaStore, persona: Persona, make_dataset: MakeDataset) -> None:
    make_dataset(kept=1)
    store.write_bytes("uploads/ava/img00.txt", "caf\xe9".encode("latin-1"))
    with pytest.raises(InputError, match=r"img00\.txt.*UTF-8"):
        caption_dataset(store, persona, None)


def test_empty_dataset_has_zero_coverage(store: MediaStore, persona: Persona, make_dataset: MakeDataset) -> None:
    make_dataset(kept=0, rejected=2)
    report = caption_dataset(store, persona, FakeCaptioner())
    assert report.records == []
    assert report.coverage == 0.0


def test_tiny_blip_captions_a_dataset_end_to_end(
    store: MediaStore, persona: Persona, make_dataset: MakeDataset, tiny_blip_dir: Path
) -> None:
    kept = make_dataset(kept=3)
    captioner = BlipCaptioner(str(tiny_blip_dir), device="cpu", batch_size=2, max_new_tokens=10)

    report = caption_dataset(store, persona, captioner)

    assert report.coverage == 1.0
    assert report.captioner == f"blip:{tiny_blip_dir}"
    for entry, record in zip(kept, report.records, strict=True):
        text = read(store, txt(entry["output_key"]))
        assert text == record.caption + "\n"
        assert text.startswith("ohwx woman") and text.count("\n") == 1
