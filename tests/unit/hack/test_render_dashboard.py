"""Pure parts of hack/render_dashboard.py, on the chart's real dashboard JSON."""

from __future__ import annotations

import json
from pathlib import Path

from hack.render_dashboard import (
    DASHBOARD,
    GRID_COLUMNS,
    dashboard_rows,
    legend,
    panel_box,
    panel_queries,
    substitute_variables,
)

ALL = {"sftjob": ".*", "namespace": ".*", "datasource": "prometheus"}


def test_template_variables_are_substituted_in_both_spellings() -> None:
    expr = 'x{sftjob=~"$sftjob", sftjob_namespace=~"${namespace}"} + $unknown'
    assert substitute_variables(expr, ALL) == 'x{sftjob=~".*", sftjob_namespace=~".*"} + $unknown'


def test_legend_format_fills_labels_and_never_returns_empty() -> None:
    assert legend("train {{sftjob}}", {"sftjob": "demo"}) == "train demo"
    assert legend("{{ phase }}", {"phase": "Running"}) == "Running"
    assert legend("{{missing}}", {}) == "value"


def test_panel_boxes_follow_the_grid() -> None:
    box = panel_box({"x": 0, "y": 0, "w": GRID_COLUMNS, "h": 8}, total_rows=16, pad=0.0)
    assert (box.left, box.width) == (0.0, 1.0)
    assert (box.bottom, box.height) == (0.5, 0.5)
    lower_right = panel_box({"x": 12, "y": 8, "w": 12, "h": 8}, total_rows=16, pad=0.0)
    assert (lower_right.left, lower_right.bottom) == (0.5, 0.0)


def test_every_panel_of_the_chart_dashboard_yields_concrete_promql() -> None:
    dashboard = json.loads(Path(DASHBOARD).read_text())
    queries = panel_queries(dashboard, ALL)
    assert len(queries) == len([p for p in dashboard["panels"] if p.get("targets")]) >= 6
    for title, targets in queries:
        assert title and targets
        for expr, _ in targets:
            assert "$" not in expr, (title, expr)
    assert dashboard_rows(dashboard["panels"]) >= 16
