"""Which `persona.yaml` fields feed which work: training (a new LoRA) or planning (new posts).

Editing a theme, a posting time or the hashtags must not retrain a LoRA (hours of GPU) but must make the days
already planned from the old profile stale; editing the trigger or class word, or the preset, is a new LoRA.
Both answers are digests of the relevant fields, so they can be stored beside what they produced and compared.
"""

from __future__ import annotations

import hashlib
import json

from influencer_pipeline.errors import InputError
from influencer_pipeline.personas import Persona, parse_persona

# What the trainer and the captions read (the trigger and class word begin every caption).
TRAINING_FIELDS = ("trigger_word", "class_word", "lora_preset")
# What neither a plan nor a LoRA depends on: which version renders, the sample prompts, whether to plan at all.
NOT_PLAN_FIELDS = ("lora_preset", "lora_version", "test_prompts", "active")


def _digest(values: dict[str, object]) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=list).encode()).hexdigest()


def training_digest(persona: Persona) -> str:
    """Digest of the profile fields a LoRA is trained from."""
    return _digest({name: getattr(persona, name) for name in TRAINING_FIELDS})


def plan_digest(persona: Persona) -> str:
    """Digest of the profile fields a day's plan is written from (themes, times, platforms, voice, ...)."""
    fields = persona.model_dump(exclude=set(NOT_PLAN_FIELDS) & set(Persona.model_fields))
    return _digest(fields)


def profile_training_digest(slug: str, text: bytes, where: str) -> str:
    """The training digest of a `persona.yaml`'s bytes; a file that does not load digests as its bytes, so
    fixing it is a change (and the run that follows says what is wrong with it)."""
    try:
        return training_digest(parse_persona(slug, text.decode("utf-8"), where))
    except (InputError, UnicodeDecodeError, TypeError, ValueError):
        return "raw:" + hashlib.sha256(text).hexdigest()
