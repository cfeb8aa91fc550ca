"""The OpenAPI 3.1 schema of the serving and admin endpoints, served at `GET /openapi.json`.

One place for the request and answer shapes of DESIGN.md's interface list: the tests load
it with openapi-spec-validator and schemathesis and hold a running server to it. Every
refusal has the same shape, `{"error": <reason>, "detail": <text>}`, and its reason is a
`router.layout.Reject` code (a rollout command the evaluator refuses answers its own
`error`, e.g. `rollout_in_progress`). Limits are the defaults of `[serve]`.
"""

from __future__ import annotations

from typing import Any

from router.config import ServeConfig
from router.layout import Reject
from router.mailbox import Command

_DEFAULTS = ServeConfig()
BOTH = ("application/json", "application/msgpack")
Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _content(schema: Schema, kinds: tuple[str, ...] = BOTH) -> Schema:
    return {kind: {"schema": schema} for kind in kinds}


def _answer(description: str, schema: Schema, kinds: tuple[str, ...] = BOTH) -> Schema:
    return {"description": description, "content": _content(schema, kinds)}


def _refusals(*statuses: int, kinds: tuple[str, ...] = BOTH) -> dict[str, Schema]:
    text = {
        400: "Bad input (reason code in `error`)",
        401: "No or wrong admin token (`unauthorized`)",
        405: "Not POST (`method_not_allowed`)",
        408: "The body did not arrive within `[serve] body_timeout_s` (`body_timeout`)",
        413: "Body over the limit (`body_too_large`) or too many events (`too_many_events`)",
        415: "Content type neither JSON nor msgpack (`unsupported_media_type`)",
        503: "No model can answer (`model_unavailable`)",
    }
    return {str(s): _answer(text[s], _ref("Error"), kinds) for s in statuses}


_NUMBER = {"type": "number"}
_SEGMENT = {
    "type": "object",
    "description": "Optional; a value the configuration does not list counts as `other`.",
    "properties": {
        dim: {"type": "string"}
        for dim in ("publisher_category", "device_type", "country_tier", "creative_type")
    },
}
_CANDIDATE = {
    "oneOf": [
        {
            "type": "object",
            "description": "Feature name to number: always accepted, each arm takes its own.",
            "additionalProperties": _NUMBER,
            "minProperties": 1,
        },
        {
            "type": "array",
            "description": "Numbers in the champion's feature order (`/status` lists them).",
            "items": _NUMBER,
            "minItems": 1,
        },
    ]
}

COMPONENTS: dict[str, Schema] = {
    "Error": {
        "type": "object",
        "required": ["error", "detail"],
        "properties": {
            "error": {"type": "string", "enum": [r.value for r in Reject]},
            "detail": {"type": "string"},
        },
    },
    "PredictRequest": {
        "type": "object",
        "required": ["request_id", "features"],
        "properties": {
            "request_id": {
                "type": "string",
                "minLength": 1,
                "maxLength": _DEFAULTS.max_request_id_chars,
                "description": "Hashed to choose the arm: the same ID always gets the same arm.",
            },
            "features": {
                "description": "One candidate, or a list of them (a batch).",
                "oneOf": [
                    _CANDIDATE,
                    {
                        "type": "array",
                        "items": _CANDIDATE,
                        "minItems": 1,
                        "maxItems": _DEFAULTS.max_batch,
                    },
                ],
            },
            "segment": _SEGMENT,
        },
    },
    "PredictAnswer": {
        "type": "object",
        "required": ["arm", "model", "predictions", "token"],
        "properties": {
            "arm": {"type": "string", "enum": ["champion", "challenger"]},
            "model": {"type": "string", "description": "`<name>:<version>` that answered"},
            "predictions": {
                "type": "array",
                "items": {"type": "number", "minimum": 0, "maximum": 1},
            },
            "token": {"type": "string", "description": "Hand back with this request's events."},
            "fallback": {
                "type": "string",
                "description": "The challenger failed this request; the champion answered.",
                "enum": [
                    "challenger_features",
                    "challenger_error",
                    "challenger_timeout",
                    "challenger_invalid",
                ],
            },
        },
    },
    "Event": {
        "type": "object",
        "required": ["token", "type", "prediction"],
        "properties": {
            "token": {"type": "string"},
            "type": {"type": "string", "enum": ["impression", "click"]},
            "prediction": {"type": "number", "minimum": 0, "maximum": 1},
            "candidate": {
                "type": "integer",
                "minimum": 0,
                "description": "Which candidate of the request's batch (optional).",
            },
        },
    },
    "EventsRequest": {
        "type": "object",
        "required": ["events"],
        "properties": {
            "events": {"type": "array", "items": _ref("Event"), "maxItems": _DEFAULTS.max_events}
        },
    },
    "EventsAnswer": {
        "type": "object",
        "required": ["accepted", "rejected", "errors"],
        "properties": {
            "accepted": {"type": "integer", "minimum": 0},
            "rejected": {"type": "integer", "minimum": 0},
            "duplicates": {
                "type": "integer",
                "minimum": 0,
                "description": "Accepted events already counted once (not counted again).",
            },
            "errors": {
                "type": "array",
                "description": "The first 100 refused events: index in `events`, reason.",
                "items": {
                    "type": "object",
                    "required": ["index", "reason"],
                    "properties": {
                        "index": {"type": "integer", "minimum": 0},
                        "reason": {"type": "string", "enum": [r.value for r in Reject]},
                    },
                },
            },
        },
    },
    "Model": {
        "type": ["object", "null"],
        "required": ["version", "features"],
        "properties": {
            "version": {"type": "string"},
            "name": {"type": "string"},
            "label": {"type": "string"},
            "features": {"type": "array", "items": {"type": "string"}},
        },
    },
    "Guardrail": {
        "type": "object",
        "required": ["name", "value", "threshold", "state"],
        "properties": {
            "name": {"type": "string"},
            "value": {"type": ["number", "string", "null"]},
            "threshold": {"type": "string"},
            "state": {"type": "string", "enum": ["pass", "fail", "waiting"]},
        },
    },
    "Rollout": {
        "type": ["object", "null"],
        "required": ["id", "challenger", "phase_started"],
        "properties": {
            "id": {"type": "string"},
            "challenger": {"type": "string"},
            "champion": {"type": "string"},
            "phase": {"type": "integer"},
            "state": {"type": "string"},
            "phase_started": {"type": "number"},
        },
    },
    "Status": {
        "type": "object",
        "description": "The fields named here are a contract; the document has more.",
        "required": ["phase", "state", "split_bp", "models", "guardrails", "rollout"],
        "properties": {
            "phase": {
                "type": "integer",
                "minimum": 0,
                "maximum": 5,
                "description": "0: no rollout, or its shadow phase (`phase_name` says which)",
            },
            "phase_name": {"type": "string", "description": "none, shadow, or 1-5"},
            "state": {"type": "string"},
            "split_bp": {"type": "integer", "minimum": 0, "maximum": 10_000},
            "effective_split_bp": {"type": "integer", "minimum": 0, "maximum": 10_000},
            "models": {
                "type": "object",
                "required": ["champion", "challenger"],
                "properties": {"champion": _ref("Model"), "challenger": _ref("Model")},
            },
            "guardrails": {"type": "array", "items": _ref("Guardrail")},
            "rollout": _ref("Rollout"),
            "rejected": {"type": "object", "additionalProperties": {"type": "integer"}},
            "fleet": {
                "type": "object",
                "description": "Fleet mode only.",
                "properties": {
                    "name": {"type": "string"},
                    "leader": {"type": ["string", "null"]},
                    "hosts": {"type": "array", "items": {"type": "object"}},
                    "store": {"type": "string", "enum": ["ok", "unreachable"]},
                },
            },
        },
    },
    "StartCommand": {
        "type": "object",
        "required": ["version"],
        "properties": {"version": {"type": "string", "description": "A registered candidate"}},
    },
    "CommandAnswer": {
        "type": "object",
        "required": ["ok"],
        "description": "The evaluator's answer; refused commands name why in `error`.",
        "properties": {
            "ok": {"type": "boolean"},
            "error": {"type": "string"},
            "detail": {"type": "string"},
            "rollout": {"type": "string"},
            "state": {"type": "string"},
            "split_bp": {"type": "integer"},
            "command": {"type": ["integer", "null"]},
        },
    },
}


def _serving(summary: str, request: str, answer: str) -> Schema:
    return {
        "post": {
            "summary": summary,
            "requestBody": {"required": True, "content": _content(_ref(request))},
            "responses": {
                "200": _answer("Answered in the request's content type", _ref(answer)),
                **_refusals(400, 405, 408, 413, 415, 503),
            },
        }
    }


def _admin(command: Command) -> Schema:
    body = _ref("StartCommand") if command == Command.START else {"type": "object"}
    json_only = ("application/json",)
    return {
        "post": {
            "summary": f"{command.value} the rollout (the evaluator applies it on its tick)",
            "security": [{"bearer": []}],
            "requestBody": {
                "required": command == Command.START,
                "content": _content(body, json_only),
            },
            "responses": {
                "200": _answer("Done", _ref("CommandAnswer"), json_only),
                "202": _answer(
                    "Queued; no evaluator answered within the deadline (`evaluator_timeout`)",
                    _ref("CommandAnswer"),
                    json_only,
                ),
                "409": _answer("Refused by the evaluator", _ref("CommandAnswer"), json_only),
                "503": _answer(
                    "The admin mailbox (SQLite, state directory) failed (`mailbox_unavailable`)",
                    _ref("CommandAnswer"),
                    json_only,
                ),
                **_refusals(400, 401, 408, 413, kinds=json_only),
            },
        }
    }


SCHEMA: Schema = {
    "openapi": "3.1.0",
    "info": {
        "title": "Rampart",
        "version": "1",
        "description": "Champion/challenger CTR prediction with a guarded progressive rollout.",
    },
    "paths": {
        "/predict": _serving("Predict click-through rates", "PredictRequest", "PredictAnswer"),
        "/events": _serving("Report impressions and clicks", "EventsRequest", "EventsAnswer"),
        "/status": {
            "get": {
                "summary": "The rollout, its guardrails and what this worker serves",
                "responses": {"200": _answer("Status", _ref("Status"), ("application/json",))},
            }
        },
        **{f"/admin/rollout/{c.value}": _admin(c) for c in Command},
    },
    "components": {
        "schemas": COMPONENTS,
        "securitySchemes": {
            "bearer": {
                "type": "http",
                "scheme": "bearer",
                "description": "RAMPART_ADMIN_TOKEN",
            }
        },
    },
}
