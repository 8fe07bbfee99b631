"""Checks of one rendered chart scenario (called by helm/check.sh).

Usage: check_rendered.py RENDERED_YAML WORK_DIR VALUES_FILE...

The values files are merged over helm/values.yaml the way Helm merges them
(maps deep, a null deletes a default). Writes WORK_DIR/config-N.toml for
`kafka-delay run --check`, WORK_DIR/core.yaml for kubernetes-validate and,
when the scenario renders a PrometheusRule, WORK_DIR/rules.yaml and
WORK_DIR/job (the job label the rules select) for `promtool test rules`.
Exits non-zero with every failed check listed.
"""

import copy
import json
import os
import re
import sys
import tomllib

import yaml

HOOK = "helm.sh/hook"
WEIGHT = "helm.sh/hook-weight"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_KEY_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
failures = []


def check(ok, message):
    if not ok:
        failures.append(message)
    return ok


def merge(base, over):
    """Helm's coalescing of values: maps merge deep, null removes a key."""
    out = copy.deepcopy(base)
    for key, value in (over or {}).items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def seconds(duration):
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    parts = re.findall(r"([0-9]+)\s*(ms|s|m|h|d|w)", duration)
    return sum(int(n) * units[u] for n, u in parts)


def pod_templates(docs):
    for d in docs:
        if d["kind"] in ("Deployment", "Job"):
            yield d, d["spec"]["template"]


def matches(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def check_hooks(docs):
    """Every object a hook refers to is a built-in or a hook that exists
    before it: Helm runs hooks before it creates the release's objects."""
    rendered = {(d["kind"], d["metadata"]["name"]): d for d in docs}

    def hook_of(d):
        ann = d["metadata"].get("annotations") or {}
        if HOOK not in ann:
            return None
        return set(ann[HOOK].split(",")), int(ann.get(WEIGHT, "0"))

    for d in docs:
        hook = hook_of(d)
        if hook is None or d["kind"] != "Job":
            continue
        spec = d["spec"]["template"]["spec"]
        refs = []
        account = spec.get("serviceAccountName") or spec.get("serviceAccount")
        if account and account != "default":
            refs.append(("ServiceAccount", account))
        for v in spec.get("volumes", []):
            if "configMap" in v:
                refs.append(("ConfigMap", v["configMap"]["name"]))
            if "secret" in v:
                refs.append(("Secret", v["secret"]["secretName"]))
        for c in spec.get("containers", []):
            for e in c.get("envFrom", []):
                for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                    if key in e:
                        refs.append((kind, e[key]["name"]))
        for kind, name in refs:
            target = rendered.get((kind, name))
            if kind == "ServiceAccount":
                check(target is not None and hook_of(target) is not None,
                      f"hook Job {d['metadata']['name']} runs as ServiceAccount {name}, "
                      "which is not a hook: it does not exist yet on a first install")
            if target is None:
                continue  # a user's own object (existing Secret), not the chart's
            other = hook_of(target)
            ok = other is not None and hook[0] <= other[0] and other[1] < hook[1]
            check(ok, f"hook Job {d['metadata']['name']} refers to {kind} {name}, "
                      "which is not a hook of lower weight for the same events")


def check_pods(docs, values):
    """The hook Job's pods get the service pods' settings; selectors keep them apart."""
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    jobs = [d for d in docs if d["kind"] == "Job"]
    if not check(len(deployments) == 1, "expected one Deployment"):
        return
    dep = deployments[0]
    dep_pod = dep["spec"]["template"]
    dep_labels = dep_pod["metadata"]["labels"]
    dep_spec = dep_pod["spec"]
    check("minReadySeconds" in dep["spec"] and "strategy" in dep["spec"],
          "the Deployment sets no strategy or minReadySeconds")

    selectors = [("Deployment", dep["spec"]["selector"]["matchLabels"])]
    for d in docs:
        spec = d.get("spec") or {}
        if d["kind"] == "Service":
            selectors.append(("Service", spec["selector"]))
        elif d["kind"] == "PodDisruptionBudget":
            selectors.append(("PodDisruptionBudget", spec["selector"]["matchLabels"]))
        elif d["kind"] == "PodMonitor":
            selectors.append(("PodMonitor", spec["selector"]["matchLabels"]))
        elif d["kind"] == "NetworkPolicy":
            selectors.append(("NetworkPolicy", spec["podSelector"]["matchLabels"]))
        elif d["kind"] == "ServiceMonitor":
            services = [s for s in docs if s["kind"] == "Service"
                        and matches(spec["selector"]["matchLabels"], s["metadata"]["labels"])]
            check(len(services) == 1, "the ServiceMonitor selects no Service (or several)")
    for kind, selector in selectors:
        check(matches(selector, dep_labels), f"{kind} selector {selector} misses the service pods")
        for job in jobs:
            check(not matches(selector, job["spec"]["template"]["metadata"]["labels"]),
                  f"{kind} selector {selector} also selects the hook Job's pods")

    for job in jobs:
        pod = job["spec"]["template"]
        spec = pod["spec"]
        name = job["metadata"]["name"]
        for key in ("imagePullSecrets", "securityContext", "priorityClassName",
                    "automountServiceAccountToken"):
            check(spec.get(key) == dep_spec.get(key),
                  f"hook Job {name}: {key} {spec.get(key)!r} differs from the Deployment's {dep_spec.get(key)!r}")
        job_values = values.get("topicsJob", {})
        for key in ("nodeSelector", "tolerations"):
            want = job_values.get(key) or values.get(key) or None
            check(spec.get(key) == want, f"hook Job {name}: {key} {spec.get(key)!r}, expected {want!r}")
        check(spec.get("affinity") == (values.get("affinity") or None),
              f"hook Job {name}: affinity {spec.get('affinity')!r} is not the affinity value")
        annotations = pod["metadata"].get("annotations") or {}
        for k, v in {**values.get("podAnnotations", {}), **job_values.get("podAnnotations", {})}.items():
            check(annotations.get(k) == v, f"hook Job {name}: pod annotation {k} missing")
        container, dep_container = spec["containers"][0], dep_spec["containers"][0]
        for key in ("image", "imagePullPolicy", "securityContext", "env", "envFrom"):
            check(container.get(key) == dep_container.get(key),
                  f"hook Job {name}: container {key} differs from the Deployment's")
        check(container.get("resources") == job_values.get("resources"),
              f"hook Job {name}: resources are not topicsJob.resources")
        mounts = lambda c: [m["mountPath"] for m in c.get("volumeMounts", [])]
        check(mounts(container) == mounts(dep_container), f"hook Job {name}: volume mounts differ")

    # Values that must reach the service pods.
    container = dep_spec["containers"][0]
    if values.get("priorityClassName"):
        check(dep_spec.get("priorityClassName") == values["priorityClassName"], "priorityClassName not set")
    for c in values.get("topologySpreadConstraints", []):
        got = [t for t in dep_spec.get("topologySpreadConstraints", []) if t["topologyKey"] == c["topologyKey"]]
        check(got and matches(got[0]["labelSelector"]["matchLabels"], dep_labels),
              f"topology spread on {c['topologyKey']} missing or not selecting the service pods")
    for v in values.get("extraVolumes", []):
        check(any(x["name"] == v["name"] for x in dep_spec["volumes"]), f"extra volume {v['name']} missing")
    for m in values.get("extraVolumeMounts", []):
        check(m in container["volumeMounts"], f"extra mount {m['mountPath']} missing")
    check(container.get("envFrom") == (values.get("extraEnvFrom") or None), "envFrom differs from extraEnvFrom")
    check(dep_spec.get("securityContext") == (values.get("podSecurityContext") or None),
          "pod securityContext differs from podSecurityContext")
    check(container.get("securityContext") == (values.get("securityContext") or None),
          "container securityContext differs from securityContext")
    for probe, key in (("livenessProbe", "liveness"), ("readinessProbe", "readiness")):
        for k, v in values["probes"][key].items():
            check(container[probe].get(k) == v, f"{probe}.{k} is not probes.{key}.{k}")
    grace = dep_spec["terminationGracePeriodSeconds"]
    want = int(seconds(values["service"]["shutdownTimeout"])) + 10
    check(grace == want, f"terminationGracePeriodSeconds {grace}, expected {want}")
    replicas = dep["spec"].get("replicas")
    if not values["autoscaling"]["enabled"]:
        check(replicas == values["replicaCount"], f"replicas {replicas}, expected {values['replicaCount']}")
    image = values["image"]
    if image.get("digest"):
        check(container["image"].endswith("@" + image["digest"]), "image is not pinned to image.digest")


def check_names_and_labels(docs, values):
    seen = set()
    common = values.get("commonLabels") or {}
    for d in docs:
        meta = d["metadata"]
        name = meta["name"]
        check(len(name) <= 63 and DNS_LABEL.match(name), f"{d['kind']} name {name!r} is not a DNS label")
        check((d["kind"], name) not in seen, f"two {d['kind']} objects named {name}")
        seen.add((d["kind"], name))
        label_sets = [meta.get("labels") or {}]
        if d["kind"] in ("Deployment", "Job"):
            label_sets.append(d["spec"]["template"]["metadata"].get("labels") or {})
        for labels in label_sets:
            for k, v in labels.items():
                check(LABEL_KEY_NAME.match(k.split("/")[-1]) is not None, f"{d['kind']} {name}: label key {k!r}")
                v = str(v)
                check(len(v) <= 63 and LABEL_VALUE.match(v), f"{d['kind']} {name}: label {k}={v!r} invalid")
            for k, v in common.items():
                check(labels.get(k) == v, f"{d['kind']} {name}: commonLabels {k} missing")


def check_configs(docs, values, work):
    configs = [d for d in docs if d["kind"] == "ConfigMap" and "config.toml" in d.get("data", {})]
    check(configs, "no ConfigMap with config.toml")
    kafka = values["kafka"]
    for i, d in enumerate(configs):
        text = d["data"]["config.toml"]
        open(os.path.join(work, f"config-{i}.toml"), "w").write(text)
        try:
            config = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            check(False, f"ConfigMap {d['metadata']['name']}: config.toml is not TOML: {e}")
            continue
        for table, key in (("properties", "properties"), ("consumer_properties", "consumerProperties"),
                           ("producer_properties", "producerProperties")):
            for k, v in (kafka.get(key) or {}).items():
                want = str(v).lower() if isinstance(v, bool) else str(v)
                got = config["kafka"][table].get(k)
                check(got == want, f"kafka.{key}.{k}: rendered {got!r}, expected {want!r}")


def check_monitoring(docs, values, work):
    metrics = values["metrics"]
    kind = "PodMonitor" if metrics["podMonitor"]["enabled"] else "ServiceMonitor"
    interval = seconds(metrics["podMonitor" if kind == "PodMonitor" else "serviceMonitor"]["interval"])
    rules = [d for d in docs if d["kind"] == "PrometheusRule"]
    for d in rules:
        monitors = [m for m in docs if m["kind"] == kind]
        if metrics["prometheusRule"].get("job"):
            job = metrics["prometheusRule"]["job"]
        elif kind == "PodMonitor":
            job = f"{os.environ.get('NAMESPACE', 'default')}/{monitors[0]['metadata']['name']}"
        else:
            services = [s for s in docs if s["kind"] == "Service"]
            job = services[0]["metadata"]["name"]
        groups = d["spec"]["groups"]
        for rule in (r for g in groups for r in g["rules"]):
            jobs = set(re.findall(r'job="([^"]*)"', rule["expr"]))
            check(jobs == {job}, f"alert {rule['alert']} selects job {jobs}, the {kind} gives {job!r}")
            for window in re.findall(r"\[([0-9a-z]+)\]", rule["expr"]):
                check(seconds(window) >= 4 * interval,
                      f"alert {rule['alert']}: rate window {window} is under 4 scrape intervals")
        open(os.path.join(work, "rules.yaml"), "w").write(yaml.safe_dump({"groups": groups}))
        open(os.path.join(work, "job"), "w").write(job)
    for d in docs:
        if d["kind"] != "ConfigMap" or not any(k.endswith(".json") for k in d.get("data", {})):
            continue
        dash = json.loads(next(v for k, v in d["data"].items() if k.endswith(".json")))
        variables = {v["name"]: v for v in dash["templating"]["list"]}
        for name in ("namespace", "job", "instance", "window"):
            check(name in variables, f"dashboard has no ${name} variable")
        check(not variables.get("job", {}).get("multi"), "dashboard $job is multi-valued (double counting)")
        window = variables.get("window", {}).get("query", "0s")
        check(seconds(window) >= 4 * interval, f"dashboard window {window} is under 4 scrape intervals")
        titles = " ".join(p["title"].lower() for p in dash["panels"])
        for word in ("commit", "late appends", "dead letters", "lateness"):
            check(word in titles, f"dashboard has no panel about {word}")
        for p in dash["panels"]:
            for t in p["targets"]:
                check('job="$job"' in t["expr"], f"dashboard panel {p['title']!r}: {t['expr']} ignores $job")
                for w in re.findall(r"\[([^\]]+)\]", t["expr"]):
                    check(w == "$window", f"dashboard panel {p['title']!r}: fixed window [{w}]")


def main():
    rendered, work, *value_files = sys.argv[1:]
    chart = os.path.dirname(os.path.abspath(__file__))
    values = yaml.safe_load(open(os.path.join(chart, "values.yaml")))
    for f in value_files:
        values = merge(values, yaml.safe_load(open(f)) or {})
    docs = [d for d in yaml.safe_load_all(open(rendered)) if d]
    core = [d for d in docs if not d["apiVersion"].startswith("monitoring.coreos.com/")]
    yaml.safe_dump_all(core, open(os.path.join(work, "core.yaml"), "w"))
    required = {"ServiceMonitor": ["selector", "endpoints"], "PodMonitor": ["selector", "podMetricsEndpoints"],
                "PrometheusRule": ["groups"]}
    for d in docs:
        if d["kind"] in required:
            missing = [k for k in required[d["kind"]] if not d.get("spec", {}).get(k)]
            check(not missing, f"{d['kind']} lacks {missing}")
    check_hooks(docs)
    check_pods(docs, values)
    check_names_and_labels(docs, values)
    check_configs(docs, values, work)
    check_monitoring(docs, values, work)
    if failures:
        print("\n".join("   FAIL " + f for f in failures), file=sys.stderr)
        sys.exit(1)
    print(f"   {len(docs)} objects checked")


if __name__ == "__main__":
    main()
