"""The flow's parameter model as the Prefect UI renders it: every field titled for people, in decision order."""

from __future__ import annotations

from prefect.utilities.callables import parameter_schema

from flows.edit_videos import edit_videos
from klingflow.models import EditParams


def _form() -> dict:
    return parameter_schema(edit_videos).model_dump()["definitions"]["EditParams"]["properties"]


def test_every_field_of_the_form_has_a_title_that_is_not_its_name() -> None:
    for name, field in EditParams.model_fields.items():
        assert field.title and field.title != name.replace("_", " ").title(), name
    titles = {name: prop.get("title") for name, prop in _form().items()}
    assert titles["max_budget_usd"] == "Budget cap (USD)" and titles["job_timeout_s"] == "Job timeout (s)"
    assert titles["backend"] == "Backend (fal or the simulator)"


def test_the_form_asks_first_what_a_user_decides_first() -> None:
    assert list(_form())[:5] == ["manifest", "backend", "max_budget_usd", "dry_run", "max_concurrency"]
