"""The endpoint's constraints and price, used by preprocessing, the simulator and cost math."""

from __future__ import annotations

from decimal import Decimal

import pytest

from klingflow.endpoint import (
    MAX_PROMPT_CHARS,
    EditInput,
    billable_seconds,
    cost_usd,
    duration_in_limits,
    prompt_reference_errors,
    size_in_limits,
)


def test_price_matches_the_published_example() -> None:
    """A 5 s video costs $1.68 at $0.336 per second."""
    assert cost_usd(5) == Decimal("1.68")
    assert cost_usd(billable_seconds(10.0)) == Decimal("3.36")


@pytest.mark.parametrize(("duration", "billed"), [(5.0, 5), (5.01, 5), (4.5, 5), (3.0, 3), (9.96, 10), (0.0, 0)])
def test_billable_seconds_round_up_whole_seconds(duration: float, billed: int) -> None:
    """Billing counts whole generated seconds, rounding up past container jitter."""
    assert billable_seconds(duration) == billed


def test_limits() -> None:
    """3-10 s (with rounding tolerance) and 720-2160 px on both displayed sides."""
    assert duration_in_limits(3.0) and duration_in_limits(10.04) and not duration_in_limits(10.2)
    assert not duration_in_limits(2.9)
    assert size_in_limits(720, 1280) and size_in_limits(2160, 2160)
    assert not size_in_limits(640, 1280) and not size_in_limits(3840, 2160)


@pytest.mark.parametrize(
    ("prompt", "images", "elements", "fragment"),
    [
        ("Use @Image2", 1, 0, "@Image2 but 1 image"),
        ("Add @Element1", 0, 0, "@Element1 but 0 element"),
        ("  ", 0, 0, "prompt is empty"),
        ("x", 3, 2, "at most 4"),
    ],
)
def test_prompt_reference_errors(prompt: str, images: int, elements: int, fragment: str) -> None:
    """Every dangling reference, an empty prompt and too many references are reported."""
    errors = prompt_reference_errors(prompt, has_video=True, n_images=images, n_elements=elements)
    assert any(fragment in e for e in errors), errors


def test_valid_references_pass() -> None:
    """References within what is given produce no error."""
    assert prompt_reference_errors("@Video1 as @Image1 with @Element2", has_video=True, n_images=1, n_elements=2) == []
    assert prompt_reference_errors("@Video1", has_video=False, n_images=0, n_elements=0)


def test_input_schema_defaults() -> None:
    """keep_audio defaults to true and shot_type to customize, as the schema says."""
    payload = EditInput(prompt="p", video_url="https://x/v.mp4")
    assert payload.keep_audio is True and payload.shot_type == "customize"


def test_a_prompt_over_the_limit_is_refused_before_any_spend() -> None:
    ok = "Make @Video1 snowy " + "x" * (MAX_PROMPT_CHARS - 19)
    assert len(ok) == MAX_PROMPT_CHARS
    assert prompt_reference_errors(ok, has_video=True, n_images=0, n_elements=0) == []
    (error,) = prompt_reference_errors(ok + "!", has_video=True, n_images=0, n_elements=0)
    assert error == "prompt is 2,501 characters long; at most 2,500 are taken"
