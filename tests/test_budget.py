import pytest

from npu_compress import Budget, BudgetError, BudgetKind


@pytest.mark.parametrize("text,kind,value,relative", [
    ("latency=2.5ms", BudgetKind.LATENCY, 2.5e-3, False),
    ("latency=50%", BudgetKind.LATENCY, 0.5, True),
    ("memory=1.5MiB", BudgetKind.MEMORY, 1.5 * 2 ** 20, False),
    ("memory=40%", BudgetKind.MEMORY, 0.4, True),
    ("memory=2KB", BudgetKind.MEMORY, 2000, False),
    ("latency=300us", BudgetKind.LATENCY, 3e-4, False),
    ("latency=0.5s", BudgetKind.LATENCY, 0.5, False),
    (" latency = 100% ", BudgetKind.LATENCY, 1.0, True),
    ("memory=1e3B", BudgetKind.MEMORY, 1000, False),
])
def test_parse(text, kind, value, relative):
    b = Budget.parse(text)
    assert b.kind == kind and b.relative == relative
    assert b.value == pytest.approx(value)
    assert Budget.parse(str(b)) == b or not relative and Budget.parse(str(b)).value == pytest.approx(value, rel=1e-3)


@pytest.mark.parametrize("text,fragment", [
    ("latncy=2ms", "unknown kind 'latncy'"),
    ("latency=2.5MiB", "does not fit latency"),
    ("memory=3ms", "does not fit memory"),
    ("latency=5", "unit '' does not fit"),
    ("memory=0%", "(0, 100]"),
    ("memory=101%", "(0, 100]"),
    ("latency=-1ms", "kind=value<unit>"),
    ("latency", "kind=value<unit>"),
    ("", "kind=value<unit>"),
    ("memory=1.5 mib", "valid units"),
    ("latency=0ms", "> 0"),
])
def test_rejects(text, fragment):
    with pytest.raises(BudgetError) as info:
        Budget.parse(text)
    assert fragment in str(info.value)


def test_not_a_string():
    with pytest.raises(BudgetError, match="must be a string"):
        Budget.parse(0.5)  # type: ignore[arg-type]
