"""Schemathesis checks for the parts of the contract an OpenAPI 3.1 schema
cannot make a validator enforce (loaded by scripts/schemathesis).

`sse_event_conformance`: schemathesis validates each server-sent event's
`event` name against openapi.yaml, but the event's `data` is JSON text whose
schema is only an annotation (`contentSchema`). This check parses that JSON
and validates it against the schema openapi.yaml names, and checks the stream
as a whole: one `image_generation.completed` event per image asked for, or a
single `error` event.
"""

from __future__ import annotations

import json
import re

import jsonschema_rs
import schemathesis

_LINE = re.compile(r"\r\n|\r|\n")
_validators: dict[tuple[int, str], jsonschema_rs.Validator] = {}


def _validator(raw_schema: dict, ref: str) -> jsonschema_rs.Validator:
    key = (id(raw_schema), ref)
    if key not in _validators:
        # The whole document as the root, so `#/components/...` refs resolve.
        root = {"$ref": ref, "components": raw_schema.get("components", {})}
        _validators[key] = jsonschema_rs.Draft202012Validator(root)
    return _validators[key]


def _events(text: str) -> list[tuple[str, str]]:
    """(event, data) pairs per the SSE rules; comments are skipped."""
    events, name, data = [], None, []
    for line in _LINE.split(text):
        if line == "":
            if data:
                events.append((name or "message", "\n".join(data)))
            name, data = None, []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
    if data:
        events.append((name or "message", "\n".join(data)))
    return events


@schemathesis.check
def sse_event_conformance(ctx, response, case):
    content_type = (response.headers.get("content-type") or [""])[0]
    if not content_type.startswith("text/event-stream"):
        return None
    if getattr(response, "stream_cut_short", False):
        return None
    raw = case.operation.schema.raw_schema
    events = _events(response.content.decode("utf-8"))
    if not events:
        raise AssertionError("The event stream ended without any event")
    names = [name for name, _ in events]
    for index, (name, data) in enumerate(events):
        ref = {
            "image_generation.completed": "#/components/schemas/ImageGenerationCompletedEvent",
            "error": "#/components/schemas/StreamErrorEvent",
        }.get(name)
        if ref is None:
            raise AssertionError(f"Event #{index} has an undocumented name {name!r}")
        try:
            value = json.loads(data)
        except ValueError as exc:
            raise AssertionError(f"Event #{index} ({name}): data is not JSON: {exc}") from None
        errors = [e.message for e in _validator(raw, ref).iter_errors(value)]
        if errors:
            shown = {k: (v[:40] + "...") if isinstance(v, str) and len(v) > 40 else v for k, v in value.items()}
            raise AssertionError(f"Event #{index} ({name}) violates {ref}: {errors[:3]}; data: {shown}")
    if "error" in names:
        # The images arrive together, so a failure means no image at all.
        if names != ["error"]:
            raise AssertionError(f"A failed stream carries one error event and nothing else: {names}")
        return None
    body = case.body if isinstance(case.body, dict) else {}
    n = body.get("n")
    expected = n if isinstance(n, int) and not isinstance(n, bool) else 1
    if len(names) != expected:
        raise AssertionError(f"Asked for {expected} image(s), the stream carried {len(names)} completed event(s)")
    return None
