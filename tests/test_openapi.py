"""The OpenAPI schema (router/openapi.py): a valid OpenAPI 3.1 document, served as is at
`GET /openapi.json`, naming every reason code. That live answers conform to it is
`test_fuzz_server.py`'s (schemathesis against a running server)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
import schemathesis
from openapi_spec_validator import validate

from router.app import App
from router.config import Config
from router.layout import REJECT_REASONS
from router.mailbox import Command
from router.openapi import SCHEMA


def test_openapi_schema_is_valid_openapi_31() -> None:
    validate(SCHEMA)  # raises on an invalid document
    schema = schemathesis.openapi.from_dict(SCHEMA)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {f"{op.method.upper()} {op.path}" for op in operations} == {
        "POST /predict",
        "POST /events",
        "GET /status",
        *(f"POST /admin/rollout/{c.value}" for c in Command),
    }


def test_openapi_error_answer_names_every_reason_code() -> None:
    error = SCHEMA["components"]["schemas"]["Error"]
    assert error["properties"]["error"]["enum"] == list(REJECT_REASONS)
    assert error["required"] == ["error", "detail"]


@pytest.mark.parametrize("path", ["/predict", "/events"])
def test_openapi_serving_endpoints_take_and_answer_both_content_types(path: str) -> None:
    post = SCHEMA["paths"][path]["post"]
    kinds = ["application/json", "application/msgpack"]
    assert list(post["requestBody"]["content"]) == kinds
    for answer in post["responses"].values():
        assert list(answer["content"]) == kinds


def test_openapi_admin_endpoints_need_the_bearer_token() -> None:
    assert SCHEMA["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for c in Command:
        assert SCHEMA["paths"][f"/admin/rollout/{c.value}"]["post"]["security"] == [{"bearer": []}]


def test_openapi_json_is_served_as_the_schema(tmp_path: Path) -> None:
    app = App(Config.from_dict({"serve": {"state_dir": str(tmp_path)}}))

    async def get() -> httpx.Response:  # no lifespan: the route needs no worker
        transport = httpx.ASGITransport(app=app.starlette)
        async with httpx.AsyncClient(transport=transport, base_url="http://rampart") as client:
            return await client.get("/openapi.json")

    answer = asyncio.run(get())
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    assert json.loads(answer.content) == SCHEMA
