"""Benchmark rendering, and the alert path's failure-to-notification latency.

    .venv/bin/python scripts/bench.py              # defaults: 5 repetitions
    .venv/bin/python scripts/bench.py --repeat 9
    .venv/bin/python scripts/bench.py --quick      # 2 repetitions, no latency run

Prints, in one run (docs/benchmarks.md explains every number):

1. The floor, a fresh Python that only imports cdk8s and cdk8s_plus_27,
   beside the render of every built-in environment in a fresh process, once
   without promtool (this script calls the construct code directly) and once
   as ``main.py --check`` (render, reference checks and promtool).
2. Render time for 1, 2 and 8 generated environments (copies of
   staging.yaml named qa1..qa8), and the cost of each further environment.
3. The time from stopping PostgreSQL to the PagerDuty notification, measured
   by the helpers in tests/e2e when they exist, beside the bound computed
   from the rendered production configuration.

Every measurement runs in a fresh subprocess, so each one pays what a user
pays: interpreter start, the jsii Node.js process, and its shutdown. Runs of
all variants are interleaved, so a burst of load on the machine spreads over
all of them instead of skewing one. Nothing in the project is written: the
renders go to temporary directories that are removed at the end.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import inspect
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SETTINGS_DIR = ROOT / "charts" / "settings"
E2E_DIR = ROOT / "tests" / "e2e"
# The callable tests/e2e is expected to expose (docs/benchmarks.md).
E2E_FUNCTION = "measure_failure_to_notification"
SCALING_SIZES = (1, 2, 8)
TEMPLATE_ENVIRONMENT = "staging"
LATENCY_ENVIRONMENT = "production"
LATENCY_ALERT = "DatabaseDown"
LATENCY_TIMEOUT = 1200.0  # seconds; the e2e helper must finish well before
RUN_TIMEOUT = 300.0  # seconds for one render subprocess

FLOOR_CODE = "import cdk8s, cdk8s_plus_27"


# --------------------------------------------------------------------------
# Child processes: what one measured subprocess runs.
# --------------------------------------------------------------------------


def child_render(settings_dir: Path, outdir: Path) -> None:
    """Run ``main.render`` without promtool, timing each phase.

    One JSON line with the phase durations goes to stdout.
    """
    started = time.perf_counter()
    sys.path.insert(0, str(ROOT))
    import constructs_lib  # noqa: F401  (quiets the JavaScript bridge first)

    # isort: split
    from main import render

    phases: dict[str, float] = {}
    mark = time.perf_counter()
    phases["imports"] = mark - started

    def lap(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        phases[name] = phases.get(name, 0.0) + now - mark
        mark = now

    try:
        files = render(settings_dir, outdir, promtool=False, lap=lap)
    except Exception as error:  # noqa: BLE001  (the parent reports the failure)
        raise SystemExit(f"render failed: {error}") from None
    print(json.dumps({"environments": len(files), "phases": phases}))


def child_latency(params: dict[str, Any]) -> None:
    """Call the e2e helper with production intervals; print one JSON line."""
    sys.path.insert(0, str(ROOT))
    import importlib

    module = importlib.import_module(params.pop("module"))
    function = getattr(module, E2E_FUNCTION)
    accepted = inspect.signature(function).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in accepted.values())
    kwargs = {k: v for k, v in params.items() if takes_any or k in accepted}
    missing = [
        name
        for name, p in accepted.items()
        if p.default is p.empty
        and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and name not in kwargs
    ]
    if missing:
        raise SystemExit(
            f"{module.__name__}.{E2E_FUNCTION} needs {', '.join(missing)}, "
            f"which bench.py does not know; it passes {', '.join(sorted(params))}"
        )
    result = function(**kwargs)
    print(json.dumps({"result": _jsonable(result)}))


def _jsonable(value: Any) -> Any:
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "total_seconds"):
        return value.total_seconds()
    if hasattr(value, "__dict__"):
        return {k: _jsonable(v) for k, v in vars(value).items() if k[0] != "_"}
    return str(value)


# --------------------------------------------------------------------------
# Running and timing subprocesses.
# --------------------------------------------------------------------------


class RunFailed(Exception):
    """A measured subprocess exited non-zero."""


def child_env(settings_dir: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    for name in ("MONITORING_SETTINGS_DIR", "MONITORING_DIST_DIR", "CDK8S_OUTDIR"):
        env.pop(name, None)
    if settings_dir is not None:
        env["MONITORING_SETTINGS_DIR"] = str(settings_dir)
    # The floor does not import constructs_lib, which sets these itself.
    env.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
    env.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")
    return env


def timed_run(
    argv: Sequence[str],
    env: Mapping[str, str],
    timeout: float = RUN_TIMEOUT,
    name: str | None = None,
) -> tuple[float, float, str]:
    """Wall-clock and CPU seconds of one subprocess, and its stdout.

    CPU is user + system time of the process and every descendant it waited
    for, the jsii Node.js process included: less sensitive than wall-clock
    time to other work on the machine.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(
        argv,
        cwd=ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if result.returncode != 0:
        lines = (result.stderr.strip() or result.stdout.strip()).splitlines()
        where = [line.strip() for line in lines if line.lstrip().startswith("File ")]
        detail = lines[-1] if lines else "no output"
        if where:
            detail += f" ({where[-1]})"
        raise RunFailed(
            f"`{name or ' '.join(argv[1:])}` exited {result.returncode}: {detail}"
        )
    return elapsed, cpu, result.stdout


class Variant:
    """One measured command, and what its repetitions took."""

    def __init__(
        self, label: str, argv: list[str], env: dict[str, str], phases: bool = False
    ) -> None:
        self.label = label
        self.argv = argv
        self.env = env
        self.phases = phases
        self.times: list[float] = []
        self.cpus: list[float] = []
        self.phase_runs: list[dict[str, float]] = []
        self.attempts = 0
        self.errors: list[str] = []  # distinct messages of failed runs
        self.outdir: Path | None = None

    def run(self) -> None:
        """One run. A failure is recorded and the next repetition tries
        again: files edited while the benchmark runs can break one run."""
        self.attempts += 1
        try:
            elapsed, cpu, stdout = timed_run(self.argv, self.env)
        except (RunFailed, subprocess.TimeoutExpired) as error:
            if str(error) not in self.errors:
                self.errors.append(str(error))
            return
        self.times.append(elapsed)
        self.cpus.append(cpu)
        if self.phases:
            self.phase_runs.append(
                json.loads(stdout.strip().splitlines()[-1])["phases"]
            )

    def reset(self) -> None:
        self.times.clear()
        self.cpus.clear()
        self.phase_runs.clear()
        self.errors.clear()
        self.attempts = 0

    @property
    def failed(self) -> int:
        return self.attempts - len(self.times)

    @property
    def median(self) -> float | None:
        return statistics.median(self.times) if self.times else None

    @property
    def cpu(self) -> float | None:
        return statistics.median(self.cpus) if self.cpus else None

    def runs_text(self) -> str:
        ok = len(self.times)
        return str(ok) if not self.failed else f"{ok} of {self.attempts}"

    def phase_medians(self) -> dict[str, float]:
        if not self.phase_runs:
            return {}
        names = list(self.phase_runs[0])
        return {
            n: statistics.median(r.get(n, 0.0) for r in self.phase_runs) for n in names
        }


# --------------------------------------------------------------------------
# Settings for the scaling runs.
# --------------------------------------------------------------------------


def qa_environment(template: dict[str, Any], index: int) -> dict[str, Any]:
    """staging.yaml turned into a valid environment ``qa<index>``.

    Everything that names the environment changes: its name (which must
    match the file name), its cluster label, the application namespace it
    watches (which must differ from the stack's own namespace), and the
    required database and cache addresses.
    """
    import copy

    name = f"qa{index}"
    app_namespace = f"sunday-{name}"
    data = copy.deepcopy(template)
    data["environment"] = name
    data["cluster"] = f"sunday-{name}"
    data["namespace"] = "monitoring"
    data.setdefault("prometheus", {})["app_namespaces"] = [app_namespace]
    data.setdefault("postgres_exporter", {})["data_source_uri"] = (
        f"postgres.{app_namespace}.svc:5432/sunday?sslmode=require"
    )
    data.setdefault("redis_exporter", {})["redis_addr"] = (
        f"redis://redis.{app_namespace}.svc:6379"
    )
    receivers = data.get("alertmanager", {}).get("receivers", {})
    if "slack_channel" in receivers:
        receivers["slack_channel"] = f"#alerts-{name}"
    return data


def write_scaling_dirs(base: Path) -> dict[int, Path]:
    import yaml

    template = yaml.safe_load(
        (SETTINGS_DIR / f"{TEMPLATE_ENVIRONMENT}.yaml").read_text(encoding="utf-8")
    )
    dirs = {}
    for size in SCALING_SIZES:
        directory = base / f"settings-{size}"
        directory.mkdir()
        for index in range(1, size + 1):
            text = yaml.safe_dump(qa_environment(template, index), sort_keys=False)
            (directory / f"qa{index}.yaml").write_text(text, encoding="utf-8")
        dirs[size] = directory
    return dirs


# --------------------------------------------------------------------------
# The theoretical failure-to-notification bound, from rendered manifests.
# --------------------------------------------------------------------------

_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_UNITS = {
    "ms": 0.001,
    "s": 1,
    "m": 60,
    "h": 3600,
    "d": 86400,
    "w": 604800,
    "y": 31536000,
}


def seconds(duration: str | int | float) -> float:
    """A Prometheus/Alertmanager duration ('1m', '1h30m', '0s') in seconds."""
    if isinstance(duration, (int, float)):
        return float(duration)
    text = str(duration).strip()
    if text == "0":
        return 0.0
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {duration!r}")
    return sum(int(n) * _UNITS[u] for n, u in parts)


def _flag(args: Sequence[str], name: str, default: str) -> str:
    for arg in args:
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    return default


def latency_bound(manifest: Path) -> dict[str, Any]:
    """Every term between PostgreSQL stopping and the PagerDuty call."""
    import yaml

    docs = [d for d in yaml.safe_load_all(manifest.read_text()) if d]

    def get(kind: str, name: str) -> dict[str, Any]:
        for doc in docs:
            if doc["kind"] == kind and doc["metadata"]["name"] == name:
                return doc
        raise LookupError(f"{manifest.name} has no {kind} {name}")

    prometheus = yaml.safe_load(
        get("ConfigMap", "prometheus-config")["data"]["prometheus.yml"]
    )
    glob = prometheus.get("global", {})
    job = next(
        (
            j
            for j in prometheus["scrape_configs"]
            if j["job_name"] == "postgres-exporter"
        ),
        {},
    )
    scrape = job.get("scrape_interval", glob.get("scrape_interval", "1m"))
    timeout = job.get("scrape_timeout", glob.get("scrape_timeout"))
    timeout = f"{timeout}" if timeout else "10s (Prometheus default)"
    evaluation = glob.get("evaluation_interval", "1m")

    rule, rule_file = None, None
    for file_name, text in get("ConfigMap", "prometheus-rules")["data"].items():
        for group in yaml.safe_load(text).get("groups", []):
            for candidate in group.get("rules", []):
                if candidate.get("alert") == LATENCY_ALERT:
                    rule, rule_file = candidate, file_name
                    evaluation = group.get("interval", evaluation)
    if rule is None:
        raise LookupError(f"no alert {LATENCY_ALERT} in the rendered rules")
    hold = rule.get("for", "0s")

    alertmanager = yaml.safe_load(
        get("ConfigMap", "alertmanager-config")["data"]["alertmanager.yml"]
    )
    labels = {"alertname": LATENCY_ALERT, **rule.get("labels", {})}
    sys.path.insert(0, str(ROOT))
    import constructs_lib  # noqa: F401  (quiets the JavaScript bridge first)

    # isort: split
    from constructs_lib.alertmanager import route_for

    route = route_for(alertmanager, labels)
    peers = get("StatefulSet", "alertmanager")
    args = next(
        c.get("args", [])
        for c in peers["spec"]["template"]["spec"]["containers"]
        if c["name"] == "alertmanager"
    )
    peer_timeout = _flag(args, "cluster.peer-timeout", "15s")

    s, e, f, g = (seconds(v) for v in (scrape, evaluation, hold, route["group_wait"]))
    # An alert fires at the first evaluation at least `for` after it became
    # pending; evaluations are `e` apart.
    f_eval = -(-f // e) * e if e else f
    return {
        "scrape_interval": scrape,
        "scrape_timeout": timeout,
        "evaluation_interval": evaluation,
        "for": hold,
        "rule_file": rule_file,
        "receiver": route["receiver"],
        "route": ".".join(route["path"]),
        "group_wait": route["group_wait"],
        "alertmanager_replicas": peers["spec"].get("replicas", 1),
        "peer_timeout": peer_timeout,
        "best": f_eval + g,
        "mid": f_eval + g + (s + e) / 2,
        "worst": s + e + f_eval + g,
        "worst_with_timeout": s + seconds(timeout.split()[0]) + e + f_eval + g,
        "seconds": {"scrape": s, "evaluation": e, "for": f_eval, "group_wait": g},
    }


def find_e2e() -> tuple[str | None, str]:
    """The module in tests/e2e defining the latency helper, or why there is none."""
    if not E2E_DIR.is_dir():
        return None, "not measured: tests/e2e missing"
    pattern = re.compile(rf"^\s*def {E2E_FUNCTION}\s*\(", re.M)
    init = E2E_DIR / "__init__.py"
    candidates = ([init] if init.exists() else []) + sorted(
        p for p in E2E_DIR.glob("*.py") if p.name != "__init__.py"
    )
    for path in candidates:
        text = path.read_text(encoding="utf-8", errors="replace")
        if pattern.search(text) or (
            path == init and re.search(rf"\b{E2E_FUNCTION}\b", text)
        ):
            module = "tests.e2e" if path == init else f"tests.e2e.{path.stem}"
            return module, ""
    return None, f"not measured: tests/e2e has no {E2E_FUNCTION}() yet"


def latency_from(result: Any) -> float | None:
    if isinstance(result, (int, float)) and not isinstance(result, bool):
        return float(result)
    if isinstance(result, Mapping):
        for key in ("latency_seconds", "latency", "seconds", "elapsed"):
            if isinstance(result.get(key), (int, float)):
                return float(result[key])
    return None


# --------------------------------------------------------------------------
# Facts and printing.
# --------------------------------------------------------------------------


def _output(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


def machine_facts() -> list[tuple[str, str]]:
    memory = "unknown"
    cpu = platform.processor() or "unknown"
    try:
        meminfo = Path("/proc/meminfo").read_text()
        kib = int(re.search(r"MemTotal:\s+(\d+)", meminfo).group(1))
        memory = f"{kib / 1024 / 1024:.1f} GiB"
        cpuinfo = Path("/proc/cpuinfo").read_text()
        found = re.search(r"model name\s*:\s*(.+)", cpuinfo)
        cpu = found.group(1).strip() if found else cpu
    except (OSError, AttributeError):
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"

    def version(package: str) -> str:
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        ("date", datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")),
        ("cores", f"{os.cpu_count()} ({usable} usable by this process)"),
        ("cpu", cpu),
        ("memory", memory),
        ("kernel", f"{platform.system()} {platform.release()}"),
        ("python", f"{platform.python_version()} ({sys.executable})"),
        ("node", _output(["node", "--version"])),
        (
            "cdk8s / cdk8s-plus-27 / jsii",
            f"{version('cdk8s')} / {version('cdk8s-plus-27')} / {version('jsii')}",
        ),
        ("promtool", _output(["promtool", "--version"]).split(" (")[0]),
        ("load average at start", load),
    ]


_NUMBER = re.compile(r"^[-~]?[0-9.]+(s|%)?( \.\. [0-9.]+)?( \([0-9.]+\))?$|^-$")


def table(
    header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  "
) -> str:
    """Plain columns: numbers right-aligned, text left-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for number, row in enumerate([header, *rows]):
        cells = [
            str(cell).rjust(widths[i])
            if i
            and _NUMBER.match(str(cell))
            or (number == 0 and i and _numeric(rows, i))
            else str(cell).ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        lines.append(indent + "  ".join(cells).rstrip())
        if number == 0:
            lines.append(indent + "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _numeric(rows: Sequence[Sequence[str]], column: int) -> bool:
    return all(_NUMBER.match(str(r[column])) for r in rows if str(r[column]))


def fmt(value: float | None, unit: str = "s") -> str:
    return "-" if value is None else f"{value:.2f}{unit}"


def stats_row(variant: Variant) -> list[str]:
    if not variant.times:
        return [variant.label, "FAILED", "", "", "", variant.runs_text()]
    return [
        variant.label,
        fmt(variant.median),
        fmt(min(variant.times)),
        fmt(max(variant.times)),
        fmt(variant.cpu),
        variant.runs_text(),
    ]


def slope(points: Sequence[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares fit t = fixed + per_env * n; returns (fixed, per_env)."""
    xs, ys = zip(*points, strict=True)
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    per = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs
    )
    return my - per * mx, per


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# The benchmark.
# --------------------------------------------------------------------------


def benchmark(repeat: int, quick: bool) -> int:
    sys.stdout.reconfigure(line_buffering=True)
    started = time.perf_counter()
    print("Sunday monitoring stack: render and alert-latency benchmark")
    print()
    print(table(["machine", ""], machine_facts()))
    print()
    with tempfile.TemporaryDirectory(prefix="monitoring-bench-") as tmp:
        base = Path(tmp)
        runs = Runs(base, quick)
        if not quick:
            progress("warm-up (not counted) ...")
            for variant in (runs.floor, runs.builtin_render):
                variant.run()
                variant.reset()
        for rep in range(1, repeat + 1):
            progress(f"repetition {rep}/{repeat} ({len(runs.all)} runs) ...")
            for variant in runs.all:
                variant.run()
        render_seconds = time.perf_counter() - started
        print_floor(runs)
        print_scaling(runs, quick)
        failed = [v for v in runs.all if v.failed]
        for variant in failed:
            for error in variant.errors:
                print(f"  failed run of {variant.label}: {error}")
        if failed:
            print()
        print_latency(runs, quick)
    total = time.perf_counter() - started
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"Ran in {total:.0f}s ({render_seconds:.0f}s of render runs, {repeat} "
        f"repetitions{', --quick' if quick else ''}); load average at end {load}."
    )
    return 1 if failed else 0


class Runs:
    """Every measured command of one benchmark, in the order they run."""

    def __init__(self, base: Path, quick: bool) -> None:
        python = sys.executable
        main_check = [python, str(ROOT / "main.py"), "--check"]
        self.base = base
        self.builtin = sorted(p.stem for p in SETTINGS_DIR.glob("*.y*ml"))
        self.floor = Variant(
            "floor: python -c 'import cdk8s, cdk8s_plus_27'",
            [python, "-c", FLOOR_CODE],
            child_env(),
        )
        self.builtin_render = self._render_only(
            "render only, no promtool (bench.py --child-render)", SETTINGS_DIR
        )
        self.builtin_check = Variant(
            "main.py --check (render + promtool)", main_check, child_env()
        )
        dirs = write_scaling_dirs(base)
        self.scale_render = {
            n: self._render_only(f"{n} env render only", d) for n, d in dirs.items()
        }
        self.scale_check = {
            n: Variant(f"{n} env main.py --check", main_check, child_env(d))
            for n, d in dirs.items()
        }
        self.all = [
            self.floor,
            self.builtin_render,
            self.builtin_check,
            *self.scale_render.values(),
        ]
        if not quick:
            self.all += self.scale_check.values()

    def _render_only(self, label: str, settings: Path) -> Variant:
        out = Path(tempfile.mkdtemp(prefix="render-", dir=self.base))
        argv = [sys.executable, str(Path(__file__).resolve())]
        argv += ["--child-render", str(settings), str(out)]
        env = child_env(None if settings == SETTINGS_DIR else settings)
        variant = Variant(label, argv, env, phases=True)
        variant.outdir = out
        return variant


def print_floor(runs: Runs) -> None:
    floor, render, check = runs.floor, runs.builtin_render, runs.builtin_check
    print(
        "1. Floor versus rendering every built-in environment "
        f"({', '.join(runs.builtin)}), a fresh process each run"
    )
    print()
    header = ["command", "median", "min", "max", "CPU", "runs"]
    print(table(header, [stats_row(v) for v in (floor, render, check)]))
    print()
    wall = (floor.median, render.median, check.median)
    cpu = (floor.cpu, render.cpu, check.cpu)
    if None not in wall + cpu:
        rows = [
            [
                "render only minus floor (this library's own work)",
                fmt(wall[1] - wall[0]),
                fmt(cpu[1] - cpu[0]),
            ],
            [
                "main.py --check minus render only (promtool)",
                fmt(wall[2] - wall[1]),
                fmt(cpu[2] - cpu[1]),
            ],
            [
                "floor share of main.py --check",
                f"{100 * wall[0] / wall[2]:.0f}%",
                f"{100 * cpu[0] / cpu[2]:.0f}%",
            ],
        ]
        print(table(["derived from the medians", "wall-clock", "CPU"], rows))
        print()
    phases = render.phase_medians()
    if phases:
        rows = [[name, fmt(value)] for name, value in phases.items()]
        rows.append(
            ["sum (the rest is process start and exit)", fmt(sum(phases.values()))]
        )
        print(table(["render only, phases inside the process (medians)", ""], rows))
        print()


def spread(variant: Variant) -> str:
    if not variant.attempts:
        return ""
    if not variant.times:
        return "FAILED"
    text = f"{fmt(min(variant.times))}..{fmt(max(variant.times))}"
    return text + (f" ({variant.failed} failed)" if variant.failed else "")


def print_scaling(runs: Runs, quick: bool) -> None:
    print(
        "2. Render time as environments are added "
        f"(copies of {TEMPLATE_ENVIRONMENT}.yaml: qa1..qaN), medians"
    )
    print()
    rows = []
    for n in SCALING_SIZES:
        render, check = runs.scale_render[n], runs.scale_check[n]
        rows.append(
            [
                str(n),
                fmt(render.median),
                spread(render),
                fmt(render.cpu),
                "(--quick)" if quick else fmt(check.median),
                spread(check),
                "" if quick else fmt(check.cpu),
            ]
        )
    header = ["environments", "render only", "min..max", "CPU"]
    header += ["main.py --check", "min..max", "CPU"]
    print(table(header, rows))
    print()
    marginal = []
    for label, group in (
        ("render only", runs.scale_render),
        ("main.py --check", runs.scale_check),
    ):
        for measure in ("median", "cpu"):
            points = [(n, getattr(v, measure)) for n, v in group.items()]
            if any(t is None for _, t in points):
                continue
            fixed, per = slope(points)
            t = dict(points)
            first, last = SCALING_SIZES[0], SCALING_SIZES[-1]
            per_span = (t[last] - t[first]) / (last - first)
            name = f"{label}, {'wall-clock' if measure == 'median' else 'CPU'}"
            marginal.append(
                [name, fmt(per), fmt(per_span), fmt(t[2] - t[1]), fmt(fixed)]
            )
    if marginal:
        header = [
            "cost of one more environment",
            "fit over 1,2,8",
            "(t8-t1)/7",
            "t2-t1",
            "fixed (fit at 0)",
        ]
        print(table(header, marginal))
        print()


def print_latency(runs: Runs, quick: bool) -> None:
    print(
        f"3. Failure-to-notification latency: PostgreSQL stopped -> {LATENCY_ALERT}"
        " -> PagerDuty sink, production intervals"
    )
    print()
    manifest = runs.builtin_render.outdir / f"{LATENCY_ENVIRONMENT}.k8s.yaml"
    source = "this run's render"
    if not manifest.exists():
        manifest = ROOT / "dist" / f"{LATENCY_ENVIRONMENT}.k8s.yaml"
        source = "dist/"
    try:
        bound = latency_bound(manifest)
    except (OSError, LookupError, KeyError, TypeError, ValueError) as error:
        bound = None
        print(f"  theoretical bound: not computed ({error})")
        print()
    measured, duration = measure_latency(bound, quick, manifest.parent)
    if bound:
        print_bound(bound, source)
        theory = f"{bound['best']:.0f} .. {bound['worst']:.0f} (mid {bound['mid']:.0f})"
    else:
        theory = "-"
    rows = [
        ["measured (tests/e2e)", measured],
        ["theoretical best .. worst", theory],
        ["duration of the latency run", duration],
    ]
    print(table(["", "seconds"], rows))
    print()


def print_bound(bound: dict[str, Any], source: str) -> None:
    s = bound["seconds"]
    rows = [
        [
            "wait for the next scrape of postgres-exporter",
            f"0 .. {s['scrape']:.0f}",
            f"scrape_interval {bound['scrape_interval']}",
        ],
        [
            "the scrape itself (refused connection: ms)",
            "~0",
            f"at most scrape_timeout {bound['scrape_timeout']}",
        ],
        [
            "wait for the next rule evaluation",
            f"0 .. {s['evaluation']:.0f}",
            f"evaluation_interval {bound['evaluation_interval']}",
        ],
        [
            f"pending for `for` of {LATENCY_ALERT}",
            f"{s['for']:.0f}",
            f"for: {bound['for']} ({bound['rule_file']})",
        ],
        ["Prometheus -> Alertmanager", "~0", "sent in the evaluation that fires it"],
        [
            f"group_wait of route to {bound['receiver']}",
            f"{s['group_wait']:.0f}",
            f"{bound['route']} group_wait {bound['group_wait']}",
        ],
        [
            "cluster wait of alertmanager-0",
            "0",
            f"+{bound['peer_timeout']} per lower peer down "
            f"({bound['alertmanager_replicas']} replicas)",
        ],
        ["HTTP POST to PagerDuty", "~0", "network round trip"],
        [
            "total",
            f"{bound['best']:.0f} .. {bound['worst']:.0f}",
            f"mid {bound['mid']:.0f}; {bound['worst_with_timeout']:.0f} if the scrape "
            "times out (then ServiceDown pages instead)",
        ],
    ]
    print(
        f"  theoretical bound, from the rendered {LATENCY_ENVIRONMENT} manifest "
        f"({source}):"
    )
    print(table(["term", "seconds", "from"], rows, indent="    "))
    print()


def measure_latency(
    bound: dict[str, Any] | None, quick: bool, dist_dir: Path
) -> tuple[str, str]:
    """Run the e2e helper if it exists; (result text, duration text)."""
    module, why = find_e2e()
    if module is None:
        return why, "-"
    if quick:
        return "not measured: --quick", "-"
    if bound is None:
        return "not measured: the rendered intervals could not be read", "-"
    params = {
        "module": module,
        "environment": LATENCY_ENVIRONMENT,
        "dist_dir": str(dist_dir),
        "scrape_interval": bound["scrape_interval"],
        "evaluation_interval": bound["evaluation_interval"],
        "rule_for": bound["for"],
        "group_wait": bound["group_wait"],
    }
    progress(f"latency run: {module}.{E2E_FUNCTION}(...) (takes minutes) ...")
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child-latency",
        json.dumps(params),
    ]
    try:
        elapsed, _, stdout = timed_run(
            argv, child_env(), LATENCY_TIMEOUT, f"{module}.{E2E_FUNCTION}()"
        )
    except RunFailed as error:
        return f"not measured: {error}", "-"
    except subprocess.TimeoutExpired:
        return f"not measured: no result within {LATENCY_TIMEOUT:.0f}s", "-"
    result = json.loads(stdout.strip().splitlines()[-1])["result"]
    value = latency_from(result)
    if value is None:
        return f"not understood: {module}.{E2E_FUNCTION} returned {result!r}", fmt(
            elapsed
        )
    return f"{value:.1f}", fmt(elapsed)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        metavar="N",
        help="runs of each measurement (default 5; 2 with --quick)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="2 runs each, no warm-up, no main.py --check scaling, no latency run",
    )
    parser.add_argument("--child-render", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--child-latency", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_render:
        child_render(Path(args.child_render[0]), Path(args.child_render[1]))
        return 0
    if args.child_latency:
        child_latency(json.loads(args.child_latency))
        return 0
    repeat = args.repeat if args.repeat is not None else (2 if args.quick else 5)
    if repeat < 1:
        parser.error("--repeat must be at least 1")
    return benchmark(repeat, args.quick)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
