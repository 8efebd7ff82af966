"""``exec_cluster`` refuses a negative agent count before it starts anything."""

from __future__ import annotations

from typing import Any

import pytest

from cloudless.testing.cluster import exec_cluster


async def test_a_negative_agent_count_is_refused_before_anything_starts() -> None:
    client: Any = object()  # never used: the count is checked first
    with pytest.raises(ValueError, match=r"agents=-1; give a count of 0 or more"):
        async with exec_cluster(client, "neg", agents=-1):
            pass
