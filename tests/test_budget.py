from __future__ import annotations

import pytest

from pruner.budget import Budget, count_scale, format_count, parse_budget
from pruner.errors import PrunerError

SDXL_PARAMS = 2_567_463_684
SDXL_MACS = 3.38e12


@pytest.mark.parametrize(
    ("text", "metric", "value", "relative"),
    [
        ("0.74B", "params", 0.74e9, False),
        ("740M", "params", 740e6, False),
        ("740m", "params", 740e6, False),
        ("1.2e9", "params", 1.2e9, False),
        ("745225604", "params", 745_225_604, False),
        ("2G", "params", 2e9, False),
        ("500k", "params", 500e3, False),
        ("1T", "params", 1e12, False),
        ("0.74 B", "params", 0.74e9, False),
        ("45%", "params", 0.45, True),
        ("100%", "params", 1.0, True),
        ("params=0.74B", "params", 0.74e9, False),
        ("params=45%", "params", 0.45, True),
        ("flops=2.8T", "macs", 2.8e12, False),
        ("macs=2.8T", "macs", 2.8e12, False),
        ("MACs=900G", "macs", 900e9, False),
        ("macs=1.5b", "macs", 1.5e9, False),
        ("macs=60%", "macs", 0.6, True),
        ("latency=40ms", "latency", 40.0, False),
        ("latency=0.04s", "latency", 40.0, False),
        ("latency=60%", "latency", 0.6, True),
        ("  latency = 40 ms  ", "latency", 40.0, False),
    ],
)
def test_accepted_forms(text: str, metric: str, value: float, relative: bool) -> None:
    budget = parse_budget(text)
    assert (budget.metric, budget.relative) == (metric, relative)
    assert budget.value == pytest.approx(value)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("flop=2T", "unknown metric 'flop'"),
        ("=45%", "unknown metric ''"),
        ("params=", "no value"),
        ("0%", "(0, 100]"),
        ("150%", "(0, 100]"),
        ("-5%", "(0, 100]"),
        ("macs=100.5%", "(0, 100]"),
        ("0", "positive"),
        ("0B", "positive"),
        ("-1B", "positive"),
        ("latency=0ms", "positive"),
        ("1e400", "finite"),
        ("0.5", "less than one parameter"),
        ("3x", "unknown suffix 'x'"),
        ("3 MB", "unknown suffix 'MB'"),
        ("45%%", "unknown suffix '%%'"),
        ("latency=40", "needs a unit"),
        ("latency=40us", "unknown latency unit 'us'"),
        ("latency=4B", "unknown latency unit 'B'"),
        ("nan", "not a number"),
        ("big", "not a number"),
        ("%", "not a number"),
    ],
)
def test_rejections_name_the_text_and_show_examples(text: str, why: str) -> None:
    with pytest.raises(PrunerError) as info:
        parse_budget(text)
    message = str(info.value)
    assert "\n" not in message
    assert repr(text) in message
    assert why in message
    assert "0.74B" in message and "45%" in message and "latency=40ms" in message


def test_absolute_limit_is_the_value_in_the_metric_unit() -> None:
    assert parse_budget("0.74B").limit(SDXL_PARAMS) == pytest.approx(0.74e9)
    assert parse_budget("macs=2.8T").limit(SDXL_MACS) == pytest.approx(2.8e12)
    assert parse_budget("latency=0.04s").limit(120.0) == pytest.approx(40.0)


def test_absolute_budget_above_the_teacher_is_left_to_the_caller() -> None:
    assert parse_budget("3B").limit(SDXL_PARAMS) == pytest.approx(3e9)


def test_relative_limit_is_a_fraction_of_the_teacher() -> None:
    assert parse_budget("45%").limit(SDXL_PARAMS) == pytest.approx(0.45 * SDXL_PARAMS)
    assert parse_budget("macs=60%").limit(SDXL_MACS) == pytest.approx(0.6 * SDXL_MACS)
    assert parse_budget("latency=50%").limit(80.0) == pytest.approx(40.0)
    assert parse_budget("100%").limit(SDXL_PARAMS) == pytest.approx(SDXL_PARAMS)


def test_relative_limit_needs_a_positive_teacher_total() -> None:
    with pytest.raises(ValueError, match="positive"):
        parse_budget("45%").limit(0)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("0.74B", "0.74B params"),
        ("740M", "0.74B params"),
        ("745225604", "0.745B params"),
        ("400M", "400M params"),
        ("45%", "45% of the teacher's params"),
        ("flops=2.8T", "2.8T MACs"),
        ("macs=300G", "300G MACs"),
        ("macs=45%", "45% of the teacher's MACs"),
        ("latency=40ms", "40 ms"),
        ("latency=0.07s", "70 ms"),
        ("latency=60%", "60% of the teacher's latency"),
    ],
)
def test_describe(text: str, words: str) -> None:
    assert parse_budget(text).describe() == words


def test_budget_rejects_impossible_values_when_built_directly() -> None:
    with pytest.raises(ValueError):
        Budget("params", 1.5, relative=True)
    with pytest.raises(ValueError):
        Budget("params", 0.0, relative=False)
    with pytest.raises(ValueError):
        Budget("watts", 1.0, relative=False)


def test_count_display_units() -> None:
    assert count_scale(3.38e12, "macs") == (1e12, "T")
    assert count_scale(4.2e11, "macs") == (1e9, "G")
    assert count_scale(2.57e9, "params") == (1e9, "B")
    assert format_count(4_672_932, "params") == "4.67M"
    assert format_count(300, "params") == "300"
