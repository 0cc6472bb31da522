from hypothesis import given
from hypothesis import strategies as st

import pytest

from pipeline.batching import plan_batches


def test_short_items_are_grouped_shortest_first():
    assert plan_batches([3.0, 1.0, 2.0, 10.0], max_seconds=6.0) == [[1, 2], [0], [3]]
    assert plan_batches([3.0, 1.0, 2.0, 10.0], max_seconds=9.0) == [[1, 2, 0], [3]]


def test_an_item_longer_than_the_budget_gets_its_own_batch():
    assert plan_batches([100.0, 1.0], max_seconds=10.0) == [[1], [0]]


def test_rejects_non_positive_budget():
    with pytest.raises(ValueError, match="max_seconds"):
        plan_batches([1.0], 0)


@given(st.lists(st.floats(0.01, 100.0), max_size=60), st.floats(1.0, 200.0))
def test_every_index_once_and_padded_cost_within_budget(durations, budget):
    batches = plan_batches(durations, budget)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(durations)))
    for b in batches:
        cost = len(b) * max(durations[i] for i in b)
        assert cost <= budget or len(b) == 1
