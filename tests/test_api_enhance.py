"""``GET /api/enhance`` on a live node: the enhancement operator table the viewer builds its controls from, checked
against imaging/enhance.py's table and against what ``enhance=`` actually accepts at each served limit."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from dcmnode.errors import InvalidRequest
from dcmnode.imaging import enhance
from tests.conftest import LiveServer


def served(live: LiveServer) -> list[dict[str, Any]]:
    response = httpx.get(f"{live.url}/api/enhance", timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body: list[dict[str, Any]] = response.json()
    return body


def test_the_answer_is_the_operator_table(live: LiveServer) -> None:
    operators = served(live)
    assert [op["name"] for op in operators] == list(enhance.SPECS)
    for op in operators:
        spec = enhance.SPECS[op["name"]]
        assert op["stage"] == spec.stage and op["stage"] in (enhance.BEFORE, enhance.AFTER)
        assert [p["name"] for p in op["params"]] == [p.name for p in spec.params]
        for answer, param in zip(op["params"], spec.params, strict=True):
            assert answer["default"] == param.default
            if isinstance(param.default, str):
                assert answer["choices"] == list(param.limits) and answer["default"] in answer["choices"]
            else:
                assert (answer["min"], answer["max"]) == param.bounds()
                assert answer["min"] <= answer["default"] <= answer["max"] and answer["step"] > 0


def test_enhance_accepts_exactly_the_served_limits(live: LiveServer) -> None:
    """Each served limit is what the ``enhance=`` parser takes: the bounds and choices pass, beyond them is a 400."""
    for op in served(live):
        name, params = op["name"], op["params"]
        assert enhance.parse(name) == [enhance.Operator(name, ())]
        for i, param in enumerate(params):
            before = [str(p["default"]) for p in params[:i]]

            def text(value: Any, before: list[str] = before, name: str = name) -> str:
                return ":".join([name, *before, str(value)])

            if "choices" in param:
                for choice in param["choices"]:
                    enhance.parse(text(choice))
                refused = ["not-a-choice"]
            else:
                enhance.parse(text(param["min"]))
                enhance.parse(text(param["max"]))
                refused = [param["min"] - param["step"], param["max"] + param["step"]]
            for value in refused:
                with pytest.raises(InvalidRequest, match=f"{name} argument {i + 1}"):
                    enhance.parse(text(value))
        with pytest.raises(InvalidRequest, match="at most"):
            enhance.parse(":".join([name, *(str(p["default"]) for p in params), "1"]))
