"""How the model's key reaches the actors that call the model (the planner and the coders), and no
other place.

The driver reads the key from its own environment: GROQ_API_KEY, or the file GROQ_API_KEY_FILE
names. On a cluster, that is the head node's environment, where `ray job submit` runs the driver.
The driver puts the key into Ray's object store (`ray.put`) and hands the reference, nested in a
list, down to the supervisor and from it to the planner and coder actors. Each of them gets the
value when it starts, keeps it in memory in its Settings, and registers it for redaction.

A reference nested in an argument travels as a reference: the value is not copied into the actor's
creation spec. The other ways Ray offers would leave the key somewhere:

- a runtime_env `env_vars` entry is kept in the cluster's job table and printed by `ray job status`;
- a constructor argument passed by value is kept in the actor table;
- an environment variable of the workers is inherited by every process they start.

Only the driver, which owns the object, and the actors that ask for it ever hold the value. The
object goes when the driver does, and a restarted actor gets it again in its `__init__`. The
workers of a cluster that Flakebot starts itself get `GROQ_API_KEY` set to empty, so they cannot
inherit the driver's key (the testers, the deployers and the janitors never need it). Sandboxes
are given a whole new environment (flakebot.sandbox), so the key never reaches one.

Caveat: Ray may spill objects to disk when its object store is full. A key is a few bytes and its
object is only read, so it is the last candidate to be spilled.
"""

from __future__ import annotations

from typing import Any

import ray
from pydantic import SecretStr

from flakebot import redact
from flakebot.settings import Settings

SecretRefs = list[Any]  # [] (no key), or [the object reference of {"GROQ_API_KEY": key}]


def hand_over(settings: Settings) -> SecretRefs:
    """The driver's model secrets, put in the object store; [] when it has none."""
    if settings.groq_api_key is None:
        return []
    return [ray.put({"GROQ_API_KEY": settings.groq_api_key.get_secret_value()})]


def received(settings: Settings, secrets: SecretRefs) -> Settings:
    """`settings` with the secrets handed over (fetched from the object store) in them."""
    if not secrets:
        return settings
    values: dict[str, str] = ray.get(secrets[0], timeout=60)  # type: ignore[assignment]
    key = values.get("GROQ_API_KEY", "")
    if not key:
        return settings
    redact.register(key)
    return settings.model_copy(update={"groq_api_key": SecretStr(key)})
