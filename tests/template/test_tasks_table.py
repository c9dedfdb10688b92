"""The tasks table's secondary indexes project only what their queries read (template.yaml as written).

That the functions which list may read the listed items back (BatchGetItem) is test_least_privilege's to check.
"""

from __future__ import annotations

from typing import Any

import pytest
from taskrunner.adapters import LISTING_INDEX, SCHEDULE_RUNS_INDEX, STATUS_AND_USAGE_INDEX

from tests.support.stack import template

#: What each index's queries read beyond the keys (DynamoTaskStore and DynamoScheduleStore):
#: - the listing index (tasks newest first, schedules by name) and the schedule-runs index: keys only; the listed
#:   items are read from the table by key (BatchGetItem);
#: - the status-and-usage index: `metering`, which the usage query sums and the reconciler's "unmetered only"
#:   filter tests, so neither reads the table.
READ_FROM_INDEX: dict[str, set[str]] = {
    LISTING_INDEX: set(),
    STATUS_AND_USAGE_INDEX: {"metering"},
    SCHEDULE_RUNS_INDEX: set(),
}


def _indexes() -> dict[str, dict[str, Any]]:
    table = template()["Resources"]["TasksTable"]["Properties"]
    return {index["IndexName"]: index for index in table["GlobalSecondaryIndexes"]}


def test_no_index_projects_every_attribute() -> None:
    # Given the tasks table of template.yaml
    indexes = _indexes()
    # Then no index copies whole items: with ALL, every change of a task (environment and spec included) was
    # written again into every index it is in
    projecting_all = [name for name, index in indexes.items() if index["Projection"]["ProjectionType"] == "ALL"]
    assert projecting_all == []


@pytest.mark.parametrize("name", sorted(READ_FROM_INDEX))
def test_each_index_projects_exactly_what_its_queries_read(name: str) -> None:
    # Given one index of the tasks table
    projection = _indexes()[name]["Projection"]
    # Then it holds the keys, plus exactly the attributes its queries read (KEYS_ONLY when that is nothing)
    wanted = READ_FROM_INDEX[name]
    if wanted:
        assert projection["ProjectionType"] == "INCLUDE"
        assert set(projection["NonKeyAttributes"]) == wanted
    else:
        assert projection == {"ProjectionType": "KEYS_ONLY"}


def test_the_table_has_exactly_the_indexes_the_store_queries() -> None:
    # The reconciler's policy names an index (`index/gsi2`): the names stay what the store queries.
    assert set(_indexes()) == set(READ_FROM_INDEX)
