import pytest

from influencer_pipeline.errors import InputError
from influencer_pipeline.media import LocalMediaStore
from influencer_pipeline.personas import load_persona, parse_persona, validate_slug

WHERE = "uploads/ava/persona.yaml"


@pytest.mark.parametrize("name", ["ava", "ava-rossi", "studio_7", "a1"])
def test_valid_slugs(name: str) -> None:
    assert validate_slug(name) == name


@pytest.mark.parametrize("name", ["Ava", "ava rossi", "-ava", "ava-", "", "a" * 41, "ava.rossi", "àva"])
def test_invalid_slugs_name_the_rule_and_a_rename(name: str) -> None:
    with pytest.raises(InputError) as err:
        validate_slug(name, where=f"uploads/{name}/")
    assert "lowercase letters, digits" in err.value.rule
    assert "rename the folder" in err.value.fix


def test_defaults_when_no_profile() -> None:
    persona = parse_persona("ava-rossi", None, WHERE)
    assert persona.trigger == "avarossi"
    assert persona.name == "Ava Rossi"
    assert persona.platforms == ("instagram",)


def test_full_profile_parses() -> None:
    text = """
display_name: Ava
trigger_word: ohwx
class_word: woman
timezone: Europe/Rome
posting_times: ["09:30", "18:00"]
hashtags: ["#travel", slowliving]
platforms: [instagram, tiktok]
lora_preset: sd15-standard
"""
    persona = parse_persona("ava", text, WHERE)
    assert persona.trigger == "ohwx"
    assert persona.hashtags == ("travel", "slowliving")
    assert persona.timezone == "Europe/Rome"


@pytest.mark.parametrize(
    ("text", "field", "rule", "fix"),
    [
        ("timezone: Mars/Olympus", "timezone", "not an IANA time zone", "IANA name"),
        ("posting_times: ['25:61']", "posting_times", "24-hour HH:MM", "HH:MM"),
        ("posting_times: [9:30]", "posting_times", "valid string", "quoted"),
        ("platforms: [myspace]", "platforms", "unknown platform", "instagram"),
        ("trigger_word: two words", "trigger_word", "single token", "ohwx"),
        ("hashtags: ['has space']", "hashtags", "not a hashtag", "travel"),
        ("colour: red", "colour", "not a persona field", "trigger_word"),
        ("active: maybe", "active", "boolean", "documented type"),
        ("lora_preset: 'My Preset!'", "lora_preset", "preset name", "lora_presets"),
        ("slug: other", "slug", "set by the folder name", "remove"),
    ],
)
def test_bad_fields_name_file_field_rule_and_fix(text: str, field: str, rule: str, fix: str) -> None:
    with pytest.raises(InputError) as err:
        parse_persona("ava", text, WHERE)
    message = str(err.value)
    assert message.startswith(f"{WHERE}: field '{field}")  # list items add their index: 'posting_times.0'
    assert rule in err.value.rule
    assert fix in err.value.fix


@pytest.mark.parametrize(("text", "rule"), [("a: [", "not valid YAML at line 1"), ("- a\n- b", "YAML mapping")])
def test_malformed_yaml(text: str, rule: str) -> None:
    with pytest.raises(InputError, match=rule) as err:
        parse_persona("ava", text, WHERE)
    assert err.value.where == WHERE


def test_load_persona_from_store(tmp_path) -> None:
    store = LocalMediaStore(tmp_path)
    assert load_persona(store, "ava").trigger == "ava"
    store.write_bytes("uploads/ava/persona.yaml", b"trigger_word: ohwx\n")
    assert load_persona(store, "ava").trigger == "ohwx"
    store.write_bytes("uploads/ava/persona.yaml", b"timezone: nowhere\n")
    with pytest.raises(InputError, match=r"uploads/ava/persona.yaml: field 'timezone'"):
        load_persona(store, "ava")


def test_every_problem_of_a_file_is_reported_at_once() -> None:
    """Issue 13: one message lists every field error with the file name, not one problem per run."""
    text = "timezone: Mars/Olympus\nposting_times: ['25:61']\nplatforms: [myspace]\nslug: other\ncolour: red\n"
    with pytest.raises(InputError) as err:
        parse_persona("ava", text, WHERE)
    message = str(err.value)
    assert message.startswith(f"{WHERE}: 5 problems")
    for expected in (
        "field 'timezone': 'Mars/Olympus' is not an IANA time zone",
        "field 'posting_times': '25:61' is not a 24-hour HH:MM time",
        "field 'platforms': unknown platform",
        "field 'slug': is set by the folder name",
        "field 'colour': is not a persona field",
    ):
        assert expected in message


@pytest.mark.parametrize(
    ("typo", "meant"), [("timezon", "timezone"), ("platfroms", "platforms"), ("hashtag", "hashtags"), ("Tone", "tone")]
)
def test_unknown_fields_get_a_did_you_mean(typo: str, meant: str) -> None:
    with pytest.raises(InputError) as err:
        parse_persona("ava", f"{typo}: x\n", WHERE)
    assert f"did you mean '{meant}'?" in err.value.fix
