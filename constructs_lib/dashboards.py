"""The two Sunday dashboards, as Grafana dashboard JSON models.

Grafana loads these files through its file provisioner, so they are plain
dicts in the dashboard JSON model at ``schemaVersion`` 37, the version
Grafana 9.3 writes itself and therefore reads without migrating.

They are rebuilt from the original design with two corrections: every panel
is a ``timeseries``, ``stat`` or ``table`` panel, because the design's
``graph`` panel is an Angular panel Grafana is removing; and the error rate
is the ratio of all 5xx responses to all responses, where the design divided
each 5xx series by itself and so always showed 100%.

Builder: written here, not grafana-foundation-sdk. The SDK is the maintained
way to build dashboards in code, but its Python releases are generated per
Grafana version from 10.1 onwards (versions such as ``1769699998!10.1.0``),
so none of them describes the 9.3 model this stack runs, and their output
carries fields and schema versions 9.3 predates. It is also marked public
preview with breaking changes expected, and would be a further pinned
dependency to save a few hundred lines of dicts. Should the image move to Grafana
10.1 or later, the SDK release for that version is worth revisiting; the
panels here are then the specification to port.

The builder stamps what must agree everywhere (panel ids, target ``refId``s,
the datasource on each panel and target) in :func:`dashboard`, so no panel
can lack an id and none can query another datasource than the one the
dashboard was built for.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from string import ascii_uppercase
from typing import Any, NamedTuple

SCHEMA_VERSION = 37
"""The dashboard JSON model version that Grafana 9.3 writes."""

PLUGIN_VERSION = "9.3.0"
"""Panel options below are in this release's shape; later ones migrate them."""


class Grid(NamedTuple):
    """Where a panel sits on the dashboard's 24-column grid."""

    x: int
    y: int
    w: int
    h: int


def query(
    expr: str,
    legend: str | None = None,
    *,
    instant: bool = False,
    table_format: bool = False,
) -> dict[str, Any]:
    """A Prometheus target; :func:`dashboard` adds its refId and datasource."""
    target: dict[str, Any] = {"expr": expr, "range": not instant, "instant": instant}
    if legend is not None:
        target["legendFormat"] = legend
    target["format"] = "table" if table_format else "time_series"
    return target


def thresholds(*steps: tuple[str, float | None]) -> dict[str, Any]:
    """Absolute thresholds; the first step's value must be None (the base)."""
    if not steps or steps[0][1] is not None:
        raise ValueError("the first threshold step is the base and has no value")
    return {
        "mode": "absolute",
        "steps": [{"color": color, "value": value} for color, value in steps],
    }


_NEUTRAL = thresholds(("green", None))


def timeseries(
    title: str,
    targets: Sequence[dict[str, Any]],
    unit: str,
    grid: Grid,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    description: str = "",
) -> dict[str, Any]:
    """A time series panel, Grafana's replacement for the ``graph`` panel."""
    defaults: dict[str, Any] = {
        "unit": unit,
        "color": {"mode": "palette-classic"},
        "custom": {
            "drawStyle": "line",
            "lineInterpolation": "linear",
            "lineWidth": 1,
            "fillOpacity": 10,
            "gradientMode": "none",
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"group": "A", "mode": "none"},
            "axisPlacement": "auto",
            "scaleDistribution": {"type": "linear"},
            "thresholdsStyle": {"mode": "off"},
        },
        "mappings": [],
        "thresholds": _NEUTRAL,
    }
    # Without fixed bounds a flat series is drawn as if it swung wildly.
    if minimum is not None:
        defaults["min"] = minimum
    if maximum is not None:
        defaults["max"] = maximum
    return _panel(
        "timeseries",
        title,
        targets,
        grid,
        description,
        field_defaults=defaults,
        options={
            "legend": {
                "calcs": [],
                "displayMode": "list",
                "placement": "bottom",
                "showLegend": True,
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    )


def stat(
    title: str,
    targets: Sequence[dict[str, Any]],
    unit: str,
    grid: Grid,
    *,
    steps: dict[str, Any] | None = None,
    decimals: int | None = None,
    description: str = "",
) -> dict[str, Any]:
    """A single current value, coloured by its thresholds when given."""
    defaults: dict[str, Any] = {
        "unit": unit,
        "color": {"mode": "thresholds"},
        "mappings": [],
        "thresholds": steps or _NEUTRAL,
    }
    if decimals is not None:
        defaults["decimals"] = decimals
    return _panel(
        "stat",
        title,
        targets,
        grid,
        description,
        field_defaults=defaults,
        options={
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "orientation": "auto",
            "textMode": "auto",
            # Without thresholds the colour carries no meaning: keep it quiet.
            "colorMode": "background" if steps else "value",
            "graphMode": "area",
            "justifyMode": "auto",
        },
    )


def table(
    title: str,
    targets: Sequence[dict[str, Any]],
    grid: Grid,
    *,
    hide: Sequence[str] = (),
    rename: dict[str, str] | None = None,
    description: str = "",
) -> dict[str, Any]:
    """A table of instant query results, with columns hidden or renamed."""
    transformations = []
    if hide or rename:
        transformations.append(
            {
                "id": "organize",
                "options": {
                    "excludeByName": {column: True for column in hide},
                    "indexByName": {},
                    "renameByName": dict(rename or {}),
                },
            }
        )
    return _panel(
        "table",
        title,
        targets,
        grid,
        description,
        field_defaults={
            "custom": {"align": "auto", "displayMode": "auto", "inspect": False},
            "mappings": [],
            "thresholds": _NEUTRAL,
        },
        options={
            "showHeader": True,
            "footer": {"show": False, "reducer": ["sum"], "fields": ""},
        },
        transformations=transformations,
    )


def _panel(
    kind: str,
    title: str,
    targets: Sequence[dict[str, Any]],
    grid: Grid,
    description: str,
    *,
    field_defaults: dict[str, Any],
    options: dict[str, Any],
    transformations: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    if not targets:
        raise ValueError(f"panel {title!r} has no queries")
    return {
        "type": kind,
        "title": title,
        "description": description,
        "pluginVersion": PLUGIN_VERSION,
        "gridPos": grid._asdict(),
        "targets": [dict(target) for target in targets],
        "fieldConfig": {"defaults": field_defaults, "overrides": []},
        "options": options,
        "transformations": transformations or [],
    }


def dashboard(
    uid: str,
    title: str,
    tags: Sequence[str],
    panels: Sequence[dict[str, Any]],
    datasource_uid: str,
    *,
    refresh: str = "30s",
    time_from: str = "now-1h",
) -> dict[str, Any]:
    """A dashboard; numbers its panels and points every query at one source."""
    datasource = {"type": "prometheus", "uid": datasource_uid}
    numbered = []
    for panel_id, panel in enumerate(panels, start=1):
        if len(panel["targets"]) > len(ascii_uppercase):
            raise ValueError(f"panel {panel['title']!r} has too many queries")
        numbered.append(
            {
                "id": panel_id,
                **panel,
                "datasource": dict(datasource),
                "targets": [
                    {**target, "refId": ref_id, "datasource": dict(datasource)}
                    for ref_id, target in zip(
                        ascii_uppercase, panel["targets"], strict=False
                    )
                ],
            }
        )
    return {
        # Grafana assigns the numeric id; provisioning matches on the uid.
        "id": None,
        "uid": uid,
        "title": title,
        "tags": list(tags),
        "timezone": "browser",
        # Provisioned from code and not saveable from the UI; say so up front.
        "editable": False,
        "graphTooltip": 1,
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "refresh": refresh,
        "time": {"from": time_from, "to": "now"},
        "timepicker": {},
        "templating": {"list": []},
        # Grafana adds its built-in annotation query itself when loading.
        "annotations": {"list": []},
        "links": [],
        "panels": numbered,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
    }


# --- the dashboards --------------------------------------------------------

ERROR_RATE = (
    'sum(rate(http_requests_total{status_code=~"5.."}[5m]))'
    " / sum(rate(http_requests_total[5m]))"
)
"""Share of all responses that were 5xx, over every route and method."""


def _latency(quantile: float) -> str:
    return (
        f"histogram_quantile({quantile}, "
        "sum by (le) (rate(http_request_duration_seconds_bucket[5m])))"
    )


def application_dashboard(datasource_uid: str) -> dict[str, Any]:
    """Traffic, latency, errors and users of the Sunday backend."""
    return dashboard(
        "sunday-application",
        "Sunday.com Application Dashboard",
        ["sunday", "application"],
        [
            timeseries(
                "Request Rate",
                [
                    query(
                        "sum by (method, route) (rate(http_requests_total[5m]))",
                        "{{method}} {{route}}",
                    )
                ],
                "reqps",
                Grid(0, 0, 12, 8),
            ),
            timeseries(
                "Response Time",
                [
                    query(_latency(quantile), f"p{round(quantile * 100)}")
                    for quantile in (0.5, 0.95, 0.99)
                ],
                "s",
                Grid(12, 0, 12, 8),
                minimum=0,
            ),
            stat(
                "Error Rate",
                [query(ERROR_RATE, "5xx share")],
                "percentunit",
                Grid(0, 8, 12, 6),
                steps=thresholds(("green", None), ("yellow", 0.01), ("red", 0.05)),
                decimals=2,
                description="Share of all responses in the last 5 minutes that "
                "had a 5xx status. Yellow from 1%, red from 5%.",
            ),
            stat(
                "Active Users",
                [query("sum(active_users_total)", "users")],
                "short",
                Grid(12, 8, 12, 6),
            ),
        ],
        datasource_uid,
    )


def infrastructure_dashboard(datasource_uid: str) -> dict[str, Any]:
    """Node CPU and memory, and pods by phase from kube-state-metrics."""
    return dashboard(
        "sunday-infrastructure",
        "Sunday.com Infrastructure Dashboard",
        ["sunday", "infrastructure"],
        [
            timeseries(
                "CPU Usage",
                [
                    query(
                        "100 - (avg by (instance) "
                        '(rate(node_cpu_seconds_total{mode="idle"}[5m])) * 100)',
                        "{{instance}}",
                    )
                ],
                "percent",
                Grid(0, 0, 12, 8),
                minimum=0,
                maximum=100,
            ),
            timeseries(
                "Memory Usage",
                [
                    query(
                        "(1 - (node_memory_MemAvailable_bytes"
                        " / node_memory_MemTotal_bytes)) * 100",
                        "{{instance}}",
                    )
                ],
                "percent",
                Grid(12, 0, 12, 8),
                minimum=0,
                maximum=100,
            ),
            table(
                "Pod Status",
                [
                    query(
                        "sum by (namespace, phase) (kube_pod_status_phase)",
                        instant=True,
                        table_format=True,
                    )
                ],
                Grid(0, 8, 24, 8),
                # An instant query's one timestamp says nothing in a table.
                hide=["Time"],
                rename={"Value": "Pods"},
            ),
        ],
        datasource_uid,
    )


def dashboards(datasource_uid: str) -> dict[str, dict[str, Any]]:
    """Every dashboard by the file name it is provisioned under."""
    built = (application_dashboard, infrastructure_dashboard)
    return {
        f"{board['uid']}.json": board
        for board in (build(datasource_uid) for build in built)
    }


def _panels(panels: Sequence[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        # Collapsed rows keep their panels inside the row panel.
        yield from _panels(panel.get("panels", []))


def dashboard_panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel of a dashboard, including those inside collapsed rows."""
    return list(_panels(board.get("panels", [])))


def dashboard_queries(board: dict[str, Any]) -> list[str]:
    """Every PromQL expression of a dashboard, in panel order."""
    return [
        target["expr"]
        for panel in dashboard_panels(board)
        for target in panel.get("targets", [])
        if "expr" in target
    ]
