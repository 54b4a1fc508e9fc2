"""Runs the dashboard's and the alert rules' PromQL in a real Prometheus
that scrapes a live gateway (scripts/check-metrics starts both and sends the
traffic). Fails when:

- a dashboard query errors at evaluation (what a syntax check cannot see:
  many-to-many matches, duplicate label sets, wrong types);
- a dashboard query returns nothing although every metric it names has
  series (its label filters or aggregations select nothing that exists);
- an alert rule's evaluation is unhealthy;
- an alert that the traffic must have triggered (--expect-active) is neither
  pending nor firing.

Prints which queries returned data, so an empty panel is visible.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NAME = re.compile(r"\b(image_gateway_[a-z0-9_]+|process_[a-z0-9_]+|up)\b(?!\s*\()")


def api(base: str, path: str, **params) -> dict:
    url = f"{base}{path}"
    if params:
        url += "?" + urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:  # 400/422 carry the error as JSON
        return json.load(e)


def to_promql(expr: str, rate_interval: str) -> str:
    expr = expr.replace("$__rate_interval", rate_interval)
    expr = expr.replace('job=~"$job"', 'job=~"image-gateway"').replace('instance=~"$instance"', 'instance=~".*"')
    if "$" in expr.replace("$1", ""):
        raise ValueError(f"unhandled Grafana variable in {expr}")
    return expr


def panel_queries(dashboard: dict) -> list[tuple[str, str]]:
    out = []

    def walk(panels):
        for p in panels:
            for t in p.get("targets", []):
                out.append((p["title"], t["expr"]))
            walk(p.get("panels", []))

    walk(dashboard["panels"])
    return out


def has_series(base: str, name: str) -> bool:
    res = api(base, "/api/v1/query", query=f"count({name})")
    return res.get("status") == "success" and bool(res["data"]["result"])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prometheus", required=True, help="base URL, e.g. http://127.0.0.1:9099")
    ap.add_argument("--rate-interval", default="30s")
    ap.add_argument("--expect-active", action="append", default=[], help="alert that must be pending or firing")
    a = ap.parse_args()
    base = a.prometheus.rstrip("/")
    problems: list[str] = []

    dashboard = json.loads((ROOT / "deploy/grafana/image-gateway.json").read_text())
    queries = panel_queries(dashboard)
    with_data = 0
    empty_ok = []
    series_cache: dict[str, bool] = {}
    for title, expr in queries:
        promql = to_promql(expr, a.rate_interval)
        res = api(base, "/api/v1/query", query=promql)
        if res.get("status") != "success":
            problems.append(f"panel {title!r}: {res.get('error')}\n       {promql}")
            continue
        if res["data"]["result"]:
            with_data += 1
            continue
        names = sorted(set(NAME.findall(promql)))
        for n in names:
            if n not in series_cache:
                series_cache[n] = has_series(base, n)
        if names and all(series_cache[n] for n in names):
            problems.append(f"panel {title!r}: no data although {', '.join(names)} have series\n       {promql}")
        else:
            missing = [n for n in names if not series_cache[n]]
            empty_ok.append(f"{title} (no series yet: {', '.join(missing)})")
    print(f"dashboard: {len(queries)} queries evaluated, {with_data} return data")
    for e in empty_ok:
        print(f"  empty, as the traffic made no series for it: {e}")

    # Alert rules: wait for an evaluation of every rule, then check health.
    deadline = time.time() + 30
    while True:
        groups = api(base, "/api/v1/rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        if rules and all(r.get("health") != "unknown" for r in rules) or time.time() > deadline:
            break
        time.sleep(0.5)
    if not rules:
        problems.append("Prometheus loaded no alert rules")
    for r in rules:
        if r.get("health") != "ok":
            problems.append(f"rule {r['name']}: health {r.get('health')}: {r.get('lastError')}")
    active = {r["name"]: r["state"] for r in rules if r.get("state") in ("pending", "firing")}
    print(f"alert rules: {len(rules)} evaluated, health ok: {sum(r.get('health') == 'ok' for r in rules)}; "
          f"active: {', '.join(f'{k} ({v})' for k, v in sorted(active.items())) or 'none'}")
    for name in a.expect_active:
        if name not in active:
            problems.append(f"alert {name} is not pending or firing after the traffic meant to trigger it")

    for p in problems:
        print(f"FAIL {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
