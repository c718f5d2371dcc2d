"""Hostile persona.yaml (issue 11): alias bombs, non-text keys, oversized files, links out of the root.

persona.yaml sits in an upload folder anyone with upload access can write. The loader must refuse what would
take the run worker down, report it as a normal input error naming the file, and never echo the file's
content (or anything a link points at) back into errors.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg
import pytest
from pydantic import ValidationError

from influencer_pipeline.dagster_layer.resources import LocalMediaStoreResource
from influencer_pipeline.defs.datasets.assets import training_images
from influencer_pipeline.errors import InputError
from influencer_pipeline.media import LocalMediaStore
from influencer_pipeline.personas import Persona, load_persona, parse_persona

WHERE = "media/uploads/ava/persona.yaml"
LIMIT = 64 * 1024  # issue 11: persona.yaml is capped at 64 KB


def alias_bomb(levels: int = 9) -> str:
    """The "billion laughs" document: each level lists the previous one nine times (9**9 strings once expanded)."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for level in range(1, levels):
        refs = ",".join([f"*a{level - 1}"] * 9)
        lines.append(f"a{level}: &a{level} [{refs}]")
    lines.append(f"themes: *a{levels - 1}")
    return "\n".join(lines) + "\n"


def test_the_bomb_is_small() -> None:
    assert len(alias_bomb().encode()) < 600


def test_alias_bomb_is_refused_before_it_expands(tmp_path) -> None:
    """Run in a child process limited to 1 GB of address space: a loader that expands the bomb (or an error
    that renders it) dies there instead of taking this test run down with it."""
    store = LocalMediaStore(tmp_path)
    store.write_bytes("uploads/ava/persona.yaml", alias_bomb().encode())
    script = textwrap.dedent(
        f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        from influencer_pipeline.errors import InputError
        from influencer_pipeline.media import LocalMediaStore
        from influencer_pipeline.personas import load_persona
        try:
            load_persona(LocalMediaStore({str(tmp_path)!r}), "ava")
        except InputError as err:
            print("REFUSED", str(err)[:2000])
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("REFUSED"), done.stdout[:2000]
    assert "persona.yaml" in done.stdout and "anchor or alias" in done.stdout
    assert "lol" not in done.stdout


@pytest.mark.parametrize(
    ("text", "shown"),
    [("1: 2\n", "'1'"), ("on: true\n", "'on'"), ("? [a, b]\n: 1\n", "list or mapping"), ("tone: {3: x}\n", "'3'")],
)
def test_non_text_keys_are_input_errors_naming_the_key(text: str, shown: str) -> None:
    with pytest.raises(InputError) as err:
        parse_persona("ava", text, WHERE)
    assert str(err.value).startswith(WHERE)
    assert shown in err.value.rule and "line" in err.value.rule
    assert "quote" in err.value.fix


def test_anchors_are_refused_even_when_harmless() -> None:
    with pytest.raises(InputError, match="anchor or alias"):
        parse_persona("ava", "tone: &t calm\nstyle_notes: *t\n", WHERE)


def test_oversized_profile_is_refused_without_reading_it_all(tmp_path) -> None:
    big = "style_notes: '" + "x" * (2 * LIMIT) + "'\n"
    with pytest.raises(InputError, match="64 KB limit"):
        parse_persona("ava", big, WHERE)
    store = LocalMediaStore(tmp_path)
    store.write_bytes("uploads/ava/persona.yaml", big.encode())
    with pytest.raises(InputError, match="64 KB limit") as err:
        load_persona(store, "ava")
    assert "xxxxxxxx" not in str(err.value)


def test_errors_chain_nothing_and_do_not_echo_values() -> None:
    """The InputError is raised outside the `except`: no ValidationError (holding the input) rides along."""
    text = "active: {nested: PLANTED-VALUE}\ncolour: PLANTED-VALUE\n"
    with pytest.raises(InputError) as err:
        parse_persona("ava", text, WHERE)
    assert err.value.__context__ is None and err.value.__cause__ is None
    assert "PLANTED-VALUE" not in str(err.value)
    with pytest.raises(ValidationError) as raw:
        Persona(slug="ava", active={"nested": "PLANTED-VALUE"})
    assert "PLANTED-VALUE" not in str(raw.value)  # hide_input_in_errors


def test_linked_persona_yaml_is_refused_and_its_target_never_read(tmp_path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("PLANTED-SECRET-persona\n")
    (tmp_path / "media" / "uploads" / "ava").mkdir(parents=True)
    os.symlink(secret, tmp_path / "media" / "uploads" / "ava" / "persona.yaml")
    with pytest.raises(InputError) as err:
        load_persona(LocalMediaStore(tmp_path / "media"), "ava")
    assert "persona.yaml" in str(err.value) and "symbolic link" in err.value.rule
    assert "PLANTED-SECRET" not in str(err.value)


def _failure_text(result: dg.ExecuteInProcessResult) -> tuple[str, list]:
    errors = [e.event_specific_data.error for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    return "\n".join(error.to_string() for error in errors), errors


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("1: 2\n", "is not a field name"),
        ("tone: &t calm\nthemes: [*t]\n", "anchor or alias"),
        ("timezon: UTC\nplatforms: [myspace]\n", "2 problems"),
    ],
)
def test_training_images_fails_with_the_persona_message_alone(tmp_path: Path, text: str, rule: str) -> None:
    """Through the real asset: the step fails with the file and the rule, no TypeError, no chained traceback."""
    root = tmp_path / "media"
    LocalMediaStore(root).write_bytes("uploads/ava/persona.yaml", text.encode())
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("personas", ["ava"])
        result = dg.materialize(
            [training_images],
            partition_key="ava",
            instance=instance,
            resources={"media": LocalMediaStoreResource(root=str(root))},
            raise_on_error=False,
        )
    assert not result.success
    message, errors = _failure_text(result)
    assert "uploads/ava/persona.yaml" in message and rule in message
    assert "TypeError" not in message
    assert all(error.cause is None and error.context is None for error in errors)
