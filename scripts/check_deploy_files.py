"""Checks of deploy/ that no off-the-shelf validator makes (run by
scripts/check-deploy, with .venv-deploy's Python):

- the ServiceMonitor against the prometheus-operator CRD schema (the pydantic
  models that cloudcoil.models.prometheus_operator generates from the
  published CRDs), with unknown fields reported (the models drop them
  silently, so the document must survive a round trip unchanged);
- the Dockerfile's runtime stage agrees with itself (numeric non-root user,
  entrypoint, exposed port, CA roots), .dockerignore keeps what cargo needs
  out of its excludes, and the HEALTHCHECK command works under /bin/sh
  against the real binary (and fails without it);
- the files the compose file builds from and mounts exist, and its gateway
  environment is accepted by the real binary (`--check-config`);
- the Kubernetes ConfigMap's config.toml is accepted by the real binary;
- names and ports agree across files (Service -> Deployment labels and
  ports, ServiceMonitor -> Service port, Secret keys, ConfigMap name,
  listen ports, the image's user id, the scrape target);
- kustomization.yaml lists exactly the manifests in its directory;
- every alert rule has `for`, a severity label, summary and description;
- the Grafana dashboard is well formed (unique ids, a datasource variable
  used by every query, panels inside the 24-column grid and not
  overlapping), and every PromQL expression in it parses (promtool).

Whether the metric names those expressions use exist is tested in Rust
(tests/api/dashboards.rs), against the gateway's own registry.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"

failures: list[str] = []
passed: list[str] = []


def check(name: str, problems: list[str]) -> None:
    if problems:
        failures.append(name)
        print(f"FAIL {name}")
        for p in problems:
            print(f"     - {p}")
    else:
        passed.append(name)
        print(f"ok   {name}")


def load_yaml(path: Path):
    with path.open() as f:
        return yaml.safe_load(f)


def port_of(listen: str) -> int:
    return int(listen.rsplit(":", 1)[1])


# --- ServiceMonitor ----------------------------------------------------------


def dropped_fields(given, kept, path="") -> list[str]:
    """Keys present in `given` but missing from `kept` (the model's dump)."""
    out = []
    if isinstance(given, dict):
        for k, v in given.items():
            if not isinstance(kept, dict) or k not in kept:
                out.append(f"{path}.{k}" if path else k)
            else:
                out += dropped_fields(v, kept[k], f"{path}.{k}" if path else k)
    elif isinstance(given, list) and isinstance(kept, list):
        for i, (g, k) in enumerate(zip(given, kept)):
            out += dropped_fields(g, k, f"{path}[{i}]")
    return out


def check_servicemonitor() -> None:
    from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor
    from importlib.metadata import version

    problems = []
    doc = load_yaml(K8S / "servicemonitor.yaml")
    try:
        model = ServiceMonitor.model_validate(doc)
    except Exception as e:  # pydantic.ValidationError, with every field path
        problems.append(str(e))
    else:
        kept = model.model_dump(by_alias=True, exclude_unset=True, mode="json")
        for field in dropped_fields(doc, kept):
            problems.append(f"unknown field {field} (not in the ServiceMonitor schema)")
    models = version("cloudcoil.models.prometheus_operator")
    check(f"ServiceMonitor against the prometheus-operator CRD schema (models {models})", problems)


# --- Dockerfile ----------------------------------------------------------------


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, closely enough for our patterns: the last matching
    pattern wins, `!` re-includes, a matched directory excludes its content,
    `**/` matches any depth."""
    import fnmatch

    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for raw in patterns:
        neg = raw.startswith("!")
        pat = raw[1:] if neg else raw
        pat = pat.strip("/")
        cands = [pat, pat[3:]] if pat.startswith("**/") else [pat]
        hit = any(
            fnmatch.fnmatchcase(prefix, c) or (pat.startswith("**/") and fnmatch.fnmatchcase(prefix.split("/")[-1], c))
            for prefix in prefixes for c in cands
        )
        if hit:
            excluded = not neg
    return excluded


def check_dockerfile(binary: Path) -> None:
    import socket
    import time
    import tomllib

    problems = []
    text = (DEPLOY / "Dockerfile").read_text()
    lines = re.sub(r"\\\n\s*", " ", text).splitlines()
    stages = [l for l in lines if l.startswith("FROM ")]
    final = text[text.rindex("\nFROM "):]
    if len(stages) < 3:
        problems.append("not multi-stage")
    if "cargo chef cook" not in text:
        problems.append("no cargo-chef dependency layer")
    user = dockerfile_user()
    if not re.fullmatch(r"\d+(:\d+)?", user) or user.startswith("0"):
        problems.append(f"USER {user!r} is not a numeric non-root user")
    entry = json.loads(re.search(r"^ENTRYPOINT (\[.*\])$", final, re.M).group(1))
    copied = re.findall(r"^COPY --from=\w+ \S+ (\S+)$", final, re.M)
    if entry[0] not in copied:
        problems.append(f"ENTRYPOINT {entry[0]} is not what the runtime stage copies ({copied})")
    listen = re.search(r"^ENV IMAGE_GATEWAY__SERVER__LISTEN=(\S+)$", final, re.M).group(1)
    exposed = re.findall(r"^EXPOSE (\d+)$", final, re.M)
    if [str(port_of(listen))] != exposed:
        problems.append(f"EXPOSE {exposed} != the port of {listen}")
    if "ca-certificates" not in final:
        problems.append("runtime stage lacks ca-certificates (rustls-platform-verifier reads the system store)")

    # The build context keeps every file cargo needs.
    patterns = [l.strip() for l in (ROOT / ".dockerignore").read_text().splitlines()
                if l.strip() and not l.startswith("#")]
    manifest = tomllib.loads((ROOT / "Cargo.toml").read_text())
    needed = ["Cargo.toml", "Cargo.lock", "src/main.rs"]
    for section in ("lib", "bin", "test", "bench", "example"):
        entries = manifest.get(section, [])
        for e in entries if isinstance(entries, list) else [entries]:
            if "path" in e:
                needed.append(e["path"])
    # Cargo loads every workspace member (cargo-chef plans from their
    # manifests), even when the image builds only the gateway.
    for member in manifest.get("workspace", {}).get("members", []):
        if member != ".":
            needed += [f"{member}/Cargo.toml", f"{member}/src/lib.rs", f"{member}/src/main.rs"]
    for path in needed:
        if dockerignored(path, patterns):
            problems.append(f".dockerignore excludes {path}, which the build needs")
    for path in ("target/debug/x", ".git/HEAD", ".venv/bin/python", ".venv-deploy/bin/python"):
        if not dockerignored(path, patterns):
            problems.append(f".dockerignore lets {path} into the build context")

    # The HEALTHCHECK command, run by /bin/sh as Docker runs it, against the
    # real binary: healthy while it serves, unhealthy once it is gone.
    cmd = json.loads(re.search(r"^HEALTHCHECK .*CMD (\[.*\])$", "\n".join(lines), re.M).group(1))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGE_GATEWAY") and k != "FAL_KEY"}
    env["IMAGE_GATEWAY__SERVER__LISTEN"] = f"127.0.0.1:{port}"
    env["IMAGE_GATEWAY__DATABASE__URL"] = "sqlite::memory:"
    proc = subprocess.Popen([str(binary)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        healthy = None
        for _ in range(100):
            healthy = subprocess.run(cmd, env=env, capture_output=True).returncode
            if healthy == 0:
                break
            time.sleep(0.1)
        if healthy != 0:
            problems.append(f"HEALTHCHECK {cmd} fails against a running gateway")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            problems.append("the gateway did not exit within 10 s of SIGTERM (docker stop would kill it)")
    if subprocess.run(cmd, env=env, capture_output=True).returncode == 0:
        problems.append("HEALTHCHECK passes with no gateway running")
    check("Dockerfile: stages, user, entrypoint, port, build context, HEALTHCHECK run against the binary", problems)


# --- compose -------------------------------------------------------------------


def run_check_config(binary: Path, env: dict[str, str], config: Path | None = None) -> str | None:
    """None when `image-gateway --check-config` accepts it, else its message."""
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith("IMAGE_GATEWAY") and k != "FAL_KEY"}
    clean.update(env)
    args = [str(binary), "--check-config"]
    if config is not None:
        args += ["--config", str(config)]
    res = subprocess.run(args, env=clean, capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        return (res.stderr or res.stdout).strip()
    return None


def check_compose(binary: Path) -> None:
    path = DEPLOY / "docker-compose.yml"
    compose = load_yaml(path)
    base = path.parent
    problems = []
    services = compose["services"]
    for name, svc in services.items():
        build = svc.get("build")
        if build:
            ctx = (base / build["context"]).resolve()
            if not ctx.is_dir():
                problems.append(f"{name}: build context {ctx} missing")
            elif not (ctx / build.get("dockerfile", "Dockerfile")).is_file():
                problems.append(f"{name}: Dockerfile {build.get('dockerfile')} missing in {ctx}")
        for vol in svc.get("volumes", []):
            source = vol.split(":", 1)[0] if isinstance(vol, str) else vol.get("source", "")
            if source.startswith((".", "/")) and not (base / source).exists():
                problems.append(f"{name}: bind mount source {source} missing")

    gw = services["gateway"]
    explicit = {}
    for item in gw.get("environment", []):
        if "=" in item:
            k, v = item.split("=", 1)
            # compose's ${VAR:-default}, with the host variable unset.
            explicit[k] = re.sub(r"\$\{[A-Za-z0-9_]+(?::-([^}]*))?\}", lambda m: m.group(1) or "", v)
        elif not (item.startswith("IMAGE_GATEWAY__") or item == "FAL_KEY"):
            problems.append(f"gateway: passes through {item}, which the gateway does not read")
    # Pass-through variables (FAL_KEY, ...) unset: `docker compose up` as is.
    err = run_check_config(binary, explicit)
    if err:
        problems.append(f"gateway environment rejected by image-gateway --check-config: {err}")
    err = run_check_config(binary, {**explicit, "FAL_KEY": "placeholder", "IMAGE_GATEWAY__BACKEND": "fal"})
    if err:
        problems.append(f"gateway environment with FAL_KEY rejected: {err}")
    # The scale-out profile's documented URL.
    if "redis" in services:
        err = run_check_config(binary, {**explicit, "IMAGE_GATEWAY__CACHE__REDIS_URL": "redis://redis:6379/0"})
        if err:
            problems.append(f"gateway environment with the scale-out Redis URL rejected: {err}")

    # Prometheus scrapes the admin listener's port.
    metrics_port = port_of(explicit["IMAGE_GATEWAY__METRICS__LISTEN"])
    prom = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    if "image-gateway" not in jobs:
        problems.append("prometheus.yml has no job_name image-gateway (alerts select job=\"image-gateway\")")
    else:
        targets = [t for sc in jobs["image-gateway"]["static_configs"] for t in sc["targets"]]
        if targets != [f"gateway:{metrics_port}"]:
            problems.append(f"prometheus.yml scrapes {targets}, the gateway's metrics listen on gateway:{metrics_port}")
    check("compose: build and mount sources exist, gateway env accepted by the binary, scrape target", problems)


# --- Kubernetes ---------------------------------------------------------------


def dockerfile_user() -> str:
    users = re.findall(r"^USER\s+(\S+)", (DEPLOY / "Dockerfile").read_text(), re.M)
    return users[-1] if users else ""


# The gateway's RSS beyond its three bounds (docs/performance.md#memory).
BASELINE_BYTES = 64 * 1024 * 1024
# What glibc keeps of freed answers between the gateway's trims, as a share
# of limits.max_memory_bytes: up to 224 MiB over the bound with a 256 MiB
# budget in CI's hostile smoke (docs/performance.md#memory); counted as the
# whole budget again.
OVERSHOOT_OF_BUDGET = 1.0


def quantity_bytes(q: str) -> int:
    """A Kubernetes memory quantity (`1Gi`, `768Mi`, `1G`, `1073741824`) in bytes."""
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40,
             "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    for suffix, mult in units.items():
        if q.endswith(suffix):
            return int(float(q[: -len(suffix)]) * mult)
    return int(q)


def memory_fits(settings: dict, limit: str) -> list[str]:
    """The pod's memory limit and the gateway's memory settings agree: the
    gateway's memory in use is under limits.max_memory_bytes +
    cache.max_bytes + files.max_bytes + the baseline, and its peak RSS under
    a hostile b64_json load up to limits.max_memory_bytes more (freed
    answers glibc keeps between trims); that must leave the pod 10%
    headroom. The ConfigMap states limits.max_memory_bytes itself (no silent
    default)."""
    problems = []
    mem = settings.get("limits", {}).get("max_memory_bytes")
    if mem is None:
        return ["ConfigMap config.toml does not set limits.max_memory_bytes"]
    cache = settings.get("cache", {}).get("max_bytes", 256 * 1024 * 1024)
    files = settings.get("files", {}).get("max_bytes", 512 * 1024 * 1024)
    overshoot = int(mem * OVERSHOOT_OF_BUDGET)
    need = mem + cache + files + BASELINE_BYTES + overshoot
    have = quantity_bytes(limit)
    if need > have * 0.9:
        problems.append(
            f"memory limit {limit} ({have} bytes) leaves under 10% headroom over "
            f"limits.max_memory_bytes {mem} + cache.max_bytes {cache} + files.max_bytes {files} "
            f"+ baseline {BASELINE_BYTES} + allocator overshoot {overshoot} = {need} bytes")
    return problems


def check_kubernetes(binary: Path) -> None:
    problems = []
    kust = load_yaml(K8S / "kustomization.yaml")
    listed = set(kust["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    if listed != present:
        problems.append(f"kustomization.yaml resources {sorted(listed)} != manifests {sorted(present)}")

    docs = {}
    for name in present:
        d = load_yaml(K8S / name)
        docs[d["kind"]] = d
    dep, svc, cm = docs["Deployment"], docs["Service"], docs["ConfigMap"]
    secret, sm = docs["Secret"], docs["ServiceMonitor"]
    hpa, pdb = docs["HorizontalPodAutoscaler"], docs["PodDisruptionBudget"]

    pod = dep["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    if not all(pod_labels.get(k) == v for k, v in dep["spec"]["selector"]["matchLabels"].items()):
        problems.append("Deployment selector does not match its pod labels")
    if not all(pod_labels.get(k) == v for k, v in svc["spec"]["selector"].items()):
        problems.append("Service selector does not match the pod labels")
    if not all(pod_labels.get(k) == v for k, v in pdb["spec"]["selector"]["matchLabels"].items()):
        problems.append("PodDisruptionBudget selector does not match the pod labels")
    if hpa["spec"]["scaleTargetRef"]["name"] != dep["metadata"]["name"]:
        problems.append("HPA scaleTargetRef is not the Deployment")
    if not all(svc["metadata"]["labels"].get(k) == v for k, v in sm["spec"]["selector"]["matchLabels"].items()):
        problems.append("ServiceMonitor selector does not match the Service labels")

    (container,) = pod["spec"]["containers"]
    cports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for p in svc["spec"]["ports"]:
        if p["targetPort"] not in cports:
            problems.append(f"Service targetPort {p['targetPort']} is no container port")
    sports = {p["name"] for p in svc["spec"]["ports"]}
    for ep in sm["spec"]["endpoints"]:
        if ep["port"] not in sports:
            problems.append(f"ServiceMonitor port {ep['port']} is no Service port")
    for probe in ("livenessProbe", "readinessProbe"):
        port = container[probe]["httpGet"]["port"]
        if port not in cports:
            problems.append(f"{probe} port {port} is no container port")
    if container["livenessProbe"]["httpGet"]["path"] != "/healthz":
        problems.append("liveness probe is not /healthz")
    if container["readinessProbe"]["httpGet"]["path"] != "/readyz":
        problems.append("readiness probe is not /readyz")

    for env in container["env"]:
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        # An optional reference (the Redis URL) may name a Secret made apart.
        if ref and not ref.get("optional") and (ref["name"] != secret["metadata"]["name"] or ref["key"] not in secret["stringData"]):
            problems.append(f"env {env['name']} refers to a missing Secret key {ref}")
    env_names = {e["name"] for e in container["env"]}
    if "FAL_KEY" not in env_names:
        problems.append("FAL_KEY is not taken from the Secret")

    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    (mount,) = [m for m in container["volumeMounts"] if volumes[m["name"]].get("configMap")]
    if volumes[mount["name"]]["configMap"]["name"] != cm["metadata"]["name"]:
        problems.append("the config volume does not mount the ConfigMap")
    args = container["args"]
    config_arg = args[args.index("--config") + 1]
    (key,) = cm["data"].keys()
    if config_arg != f"{mount['mountPath']}/{key}":
        problems.append(f"--config {config_arg} is not the mounted {mount['mountPath']}/{key}")

    # The TOML the pod reads, through the real binary, with a placeholder key.
    import tomllib

    toml_text = cm["data"][key]
    settings = tomllib.loads(toml_text)
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
        f.write(toml_text)
    try:
        err = run_check_config(binary, {"FAL_KEY": "placeholder"}, Path(f.name))
        if err:
            problems.append(f"ConfigMap config.toml rejected by image-gateway --check-config: {err}")
        err = run_check_config(binary, {}, Path(f.name))
        if err is None and settings.get("backend") == "fal":
            problems.append("backend = \"fal\" without FAL_KEY was accepted")
    finally:
        os.unlink(f.name)
    if port_of(settings["server"]["listen"]) != cports.get("http"):
        problems.append("server.listen port != container port http")
    if port_of(settings["metrics"]["listen"]) != cports.get("metrics"):
        problems.append("metrics.listen port != container port metrics")

    sc = {**pod["spec"].get("securityContext", {}), **container.get("securityContext", {})}
    user = dockerfile_user().split(":")[0]
    if str(sc.get("runAsUser")) != user:
        problems.append(f"runAsUser {sc.get('runAsUser')} != the image's USER {user}")
    for key, want in (("runAsNonRoot", True), ("readOnlyRootFilesystem", True), ("allowPrivilegeEscalation", False)):
        if sc.get(key) is not want:
            problems.append(f"securityContext.{key} is not {want}")
    if sc.get("capabilities", {}).get("drop") != ["ALL"]:
        problems.append("capabilities do not drop ALL")
    res = container["resources"]
    if not all(k in res.get(kind, {}) for kind in ("requests", "limits") for k in ("cpu", "memory")):
        problems.append("resources need cpu and memory requests and limits")
    else:
        problems += memory_fits(settings, res["limits"]["memory"])
    check("kubernetes: kustomization lists every manifest, names/ports/labels agree, ConfigMap accepted by the binary", problems)


# --- alert rules ------------------------------------------------------------------


def check_alert_rules() -> None:
    problems = []
    rules = [r for g in load_yaml(DEPLOY / "prometheus" / "alerts.yml")["groups"] for r in g["rules"]]
    for r in rules:
        name = r.get("alert", r.get("record"))
        if "alert" not in r:
            continue
        if "for" not in r:
            problems.append(f"{name}: no `for`")
        if r.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
            problems.append(f"{name}: severity label missing or not critical/warning/info")
        for a in ("summary", "description"):
            if not r.get("annotations", {}).get(a):
                problems.append(f"{name}: no {a} annotation")
    tested = set()
    for t in load_yaml(DEPLOY / "prometheus" / "alerts.test.yml")["tests"]:
        tested |= {c["alertname"] for c in t.get("alert_rule_test", [])}
    for required in ("ImageGatewayFalAuthFailures", "ImageGatewayHighErrorRatio"):
        if required not in tested:
            problems.append(f"{required} has no unit test in alerts.test.yml")
    untested = sorted({r["alert"] for r in rules if "alert" in r} - tested)
    label = f"alerts.yml: {len(rules)} rules with for/severity/summary/description"
    if untested:
        label += f" (no unit test: {', '.join(untested)})"
    check(label, problems)


# --- dashboard ---------------------------------------------------------------


def grafana_to_promql(expr: str) -> str:
    """Grafana's variables replaced by values that keep the PromQL valid."""
    expr = expr.replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$__range", "1h")
    expr = re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]", "x", expr)
    return expr


def check_dashboard(promtool: str) -> None:
    path = DEPLOY / "grafana" / "image-gateway.json"
    problems = []
    dash = json.loads(path.read_text())
    for key in ("uid", "title", "panels", "templating", "schemaVersion"):
        if key not in dash:
            problems.append(f"no {key}")
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    ds = variables.get("datasource")
    if not ds or ds["type"] != "datasource" or ds["query"] != "prometheus":
        problems.append("no `datasource` variable of type datasource (prometheus)")

    ids, exprs, boxes = set(), [], []

    def walk(panels):
        for p in panels:
            if p["id"] in ids:
                problems.append(f"duplicate panel id {p['id']}")
            ids.add(p["id"])
            g = p["gridPos"]
            if g["x"] < 0 or g["w"] <= 0 or g["x"] + g["w"] > 24:
                problems.append(f"panel {p['title']!r} outside the 24-column grid")
            boxes.append((p["title"], g))
            if p["type"] != "row":
                if p.get("datasource", {}).get("uid") != "${datasource}":
                    problems.append(f"panel {p['title']!r} does not use the datasource variable")
                refs = [t["refId"] for t in p.get("targets", [])]
                if not refs or len(refs) != len(set(refs)):
                    problems.append(f"panel {p['title']!r} has no targets or duplicate refIds")
                for t in p.get("targets", []):
                    if t.get("datasource", {}).get("uid") != "${datasource}":
                        problems.append(f"a query of {p['title']!r} does not use the datasource variable")
                    exprs.append((p["title"], t["expr"]))
            walk(p.get("panels", []))

    walk(dash["panels"])
    for i, (a, ga) in enumerate(boxes):
        for b, gb in boxes[i + 1:]:
            if (ga["x"] < gb["x"] + gb["w"] and gb["x"] < ga["x"] + ga["w"]
                    and ga["y"] < gb["y"] + gb["h"] and gb["y"] < ga["y"] + ga["h"]):
                problems.append(f"panels {a!r} and {b!r} overlap")

    # Every expression must parse: promtool checks them as recording rules.
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:expr_{i}", "expr": grafana_to_promql(e)} for i, (_, e) in enumerate(exprs)]}]}
    for name, v in variables.items():
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", q or "")
        if m:
            rules["groups"][0]["rules"].append({"record": f"dashboard:var_{name}", "expr": grafana_to_promql(m.group(1))})
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        yaml.safe_dump(rules, f)
    try:
        res = subprocess.run([promtool, "check", "rules", f.name], capture_output=True, text=True)
        if res.returncode != 0:
            out = res.stdout + res.stderr
            for i in sorted({int(n) for n in re.findall(r"dashboard:expr_(\d+)", out)}):
                problems.append(f"panel {exprs[i][0]!r}: {exprs[i][1]}")
            problems.append("PromQL does not parse:\n" + out)
    finally:
        os.unlink(f.name)
    check(f"dashboard: {len(ids)} panels, {len(exprs)} PromQL expressions parse, layout and datasource variable", problems)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--binary", required=True, type=Path, help="the built image-gateway")
    ap.add_argument("--promtool", default="promtool")
    a = ap.parse_args()
    check_servicemonitor()
    check_dockerfile(a.binary)
    check_compose(a.binary)
    check_kubernetes(a.binary)
    check_alert_rules()
    check_dashboard(a.promtool)
    print(f"deploy file checks: {len(passed)} ok, {len(failures)} failing")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
