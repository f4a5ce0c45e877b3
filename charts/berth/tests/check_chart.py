#!/usr/bin/python3
"""Checks for the berth chart's rendered output (see run.sh).

  check_chart.py schema SCHEMA VALUES_JSON [--expect-invalid]
      validate coalesced values against values.schema.json (draft 7, as helm)
  check_chart.py check RENDERED VALUES_JSON --name R --namespace N [--berth BIN]
      every document a well-formed Kubernetes object, the DaemonSet and
      ConfigMap consistent with each other and with the values, config.toml
      and hosts.toml valid TOML carrying the values (and only keys that
      `berth config default` knows, when a berth binary is given)
  check_chart.py extract RENDERED OUTDIR
      lay out the ConfigMap as the installer pod sees it (the DaemonSet's
      volume items) for the installer tests
  check_chart.py checksum RENDERED
      print the DaemonSet's checksum/config annotation
"""
import json
import os
import re
import subprocess
import sys
import tomllib

import jsonschema
import yaml

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
QUALIFIED_NAME = re.compile(r"^([a-z0-9.-]+/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
CONFIGMAP_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
HOSTPATH_TYPES = {"", "DirectoryOrCreate", "Directory", "FileOrCreate", "File", "Socket", "CharDevice", "BlockDevice"}
KINDS = {
    ("v1", "ConfigMap"), ("v1", "ServiceAccount"), ("apps/v1", "DaemonSet"), ("batch/v1", "Job"),
    ("rbac.authorization.k8s.io/v1", "Role"), ("rbac.authorization.k8s.io/v1", "RoleBinding"),
}
VOLUME_SOURCES = {"hostPath", "configMap", "emptyDir", "secret", "projected", "downwardAPI"}

failures = []
passes = 0


def check(cond, what):
    global passes
    if cond:
        passes += 1
    else:
        failures.append(what)
        print(f"  FAILED: {what}", file=sys.stderr)


def load(rendered):
    with open(rendered) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def one(docs, kind):
    found = [d for d in docs if d.get("kind") == kind]
    check(len(found) == 1, f"exactly one {kind} (found {len(found)})")
    return found[0] if found else {}


def check_metadata(doc, namespace):
    kind = doc.get("kind")
    meta = doc.get("metadata") or {}
    name = meta.get("name", "")
    check((doc.get("apiVersion"), kind) in KINDS, f"known apiVersion/kind: {doc.get('apiVersion')} {kind}")
    check(bool(name) and len(name) <= 63 and DNS1123_SUBDOMAIN.match(name), f"{kind} name {name!r} is a valid name")
    check(meta.get("namespace") == namespace, f"{kind}/{name} is in namespace {namespace}")
    for k, v in (meta.get("labels") or {}).items():
        check(QUALIFIED_NAME.match(k) and isinstance(v, str) and len(v) <= 63 and LABEL_VALUE.match(v),
              f"{kind}/{name} label {k}={v!r} is valid")
    for k, v in (meta.get("annotations") or {}).items():
        check(isinstance(v, str), f"{kind}/{name} annotation {k} is a string")


def check_pod_spec(pod, where, volumes_required=True):
    containers = pod.get("containers") or []
    check(len(containers) > 0, f"{where}: has containers")
    names = set()
    vols = {v.get("name"): v for v in pod.get("volumes") or []}
    for v in vols.values():
        sources = [k for k in v if k != "name"]
        check(len(sources) == 1 and sources[0] in VOLUME_SOURCES, f"{where}: volume {v.get('name')} has one known source")
        if "hostPath" in v:
            hp = v["hostPath"]
            check(str(hp.get("path", "")).startswith("/"), f"{where}: hostPath {v['name']} path is absolute")
            check(hp.get("type", "") in HOSTPATH_TYPES, f"{where}: hostPath {v['name']} type {hp.get('type')!r} is valid")
    for c in containers + (pod.get("initContainers") or []):
        n = c.get("name", "")
        check(DNS1123_LABEL.match(n) is not None and n not in names, f"{where}: container name {n!r} valid and unique")
        names.add(n)
        image = c.get("image", "")
        check(bool(image) and ":" in image.rsplit("/", 1)[-1], f"{where}/{n}: image {image!r} has a tag")
        check(c.get("imagePullPolicy") in ("Always", "IfNotPresent", "Never"), f"{where}/{n}: imagePullPolicy valid")
        for e in c.get("env") or []:
            check(isinstance(e.get("name"), str) and (isinstance(e.get("value"), str) or "valueFrom" in e),
                  f"{where}/{n}: env {e.get('name')} value is a string")
        paths = set()
        for m in c.get("volumeMounts") or []:
            check(m.get("name") in vols, f"{where}/{n}: mount {m.get('name')} refers to a volume")
            mp = m.get("mountPath", "")
            check(mp.startswith("/") and mp not in paths, f"{where}/{n}: mountPath {mp} absolute and unique")
            paths.add(mp)
            check(m.get("mountPropagation", "None") in ("None", "HostToContainer", "Bidirectional"),
                  f"{where}/{n}: mountPropagation valid")
        for key in ("command", "args"):
            if key in c:
                check(all(isinstance(a, str) for a in c[key]), f"{where}/{n}: {key} are strings")
    return vols


def flatten(d, prefix=""):
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


def cmd_check(rendered, values_path, name, namespace, berth):
    docs = load(rendered)
    with open(values_path) as f:
        values = json.load(f)
    seen = set()
    for d in docs:
        check_metadata(d, namespace)
        key = (d.get("kind"), (d.get("metadata") or {}).get("name"))
        check(key not in seen, f"{key} rendered once")
        seen.add(key)

    cm = one(docs, "ConfigMap")
    ds = one(docs, "DaemonSet")
    data = cm.get("data") or {}
    check(all(isinstance(v, str) for v in data.values()), "ConfigMap data values are strings")
    check(all(CONFIGMAP_KEY.match(k) for k in data), f"ConfigMap keys valid: {sorted(data)}")

    # --- config.toml
    try:
        cfg = tomllib.loads(data.get("config.toml", ""))
    except tomllib.TOMLDecodeError as e:
        check(False, f"config.toml parses as TOML: {e}")
        cfg = {}
    v = values
    expected = {
        "listen": "/run/berth/berth.sock", "root": "/var/lib/berth", "state": "/run/berth",
        "log_level": v["logLevel"], "log_format": v["logFormat"],
        "image.registry_config_dir": "/etc/berth/certs.d",
        "image.pinned_images": v["images"]["pinned"],
        "image.max_concurrent_layers": v["images"]["maxConcurrentLayers"],
        "runtime.cgroup_driver": v["cgroupDriver"],
        "network.cni_conf_dir": v["cni"]["confDir"], "network.cni_bin_dirs": v["cni"]["binDirs"],
        "network.plugin_timeout_seconds": v["cni"]["pluginTimeoutSeconds"],
        "metrics.enabled": v["metrics"]["enabled"],
    }
    addr = v["metrics"]["address"]
    expected["metrics.listen"] = f"[{addr}]:{v['metrics']['port']}" if ":" in addr else f"{addr}:{v['metrics']['port']}"
    flat = flatten(cfg)
    for k, want in expected.items():
        check(flat.get(k) == want, f"config.toml {k} = {want!r} (got {flat.get(k)!r})")
    check(set(flat) == set(expected), f"config.toml has exactly the expected keys (extra: {set(flat) - set(expected)})")
    check(isinstance(flat.get("image.max_concurrent_layers"), int), "max_concurrent_layers is a TOML integer")

    if berth:
        # The binary's own idea of the file: its defaults' keys and types, and
        # (when it has `berth check`) its parser and validation.
        out = subprocess.run([berth, "config", "default"], capture_output=True, text=True, check=True).stdout
        known = flatten(tomllib.loads(out))
        ignore = set()
        if not any(k.startswith("metrics.") for k in known):
            ignore = {k for k in flat if k.startswith("metrics.")}
            print(f"  note: {berth} predates [metrics]; those keys are not cross-checked")
        unknown = sorted(set(flat) - set(known) - ignore)
        check(not unknown, f"config.toml keys are all known to `berth config default` (unknown: {unknown})")
        for k in set(flat) & set(known):
            check(type(flat[k]) is type(known[k]), f"config.toml {k} has the type berth's default has")
        help_text = subprocess.run([berth, "--help"], capture_output=True, text=True).stdout
        if re.search(r"^\s+check\b", help_text, re.M):
            import tempfile
            with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
                f.write(data.get("config.toml", ""))
                f.flush()
                r = subprocess.run([berth, "check", "--config", f.name], capture_output=True, text=True)
            check(r.returncode in (0, 1) and "berth:" not in r.stderr and r.stdout.strip() != "",
                  f"`berth check --config` accepts config.toml (rc {r.returncode}: {r.stderr.strip()})")
        else:
            print(f"  note: {berth} has no `check` subcommand; config.toml not loaded by berth itself")

    # --- hosts.toml per registry
    mirrors = v.get("registryMirrors") or {}
    for host, reg in mirrors.items():
        key = "hosts.%s.toml" % host.replace(":", "_")
        check(key in data, f"ConfigMap has {key}")
        try:
            ht = tomllib.loads(data.get(key, ""))
        except tomllib.TOMLDecodeError as e:
            check(False, f"{key} parses as TOML: {e}")
            continue
        reg = reg or {}
        check(ht.get("server") == reg.get("server"), f"{key} server = {reg.get('server')!r}")
        hosts = ht.get("host", {})
        want_urls = [m["url"] for m in reg.get("mirrors") or []]
        check(list(hosts) == want_urls, f"{key} mirrors in order {want_urls} (got {list(hosts)})")
        for m in reg.get("mirrors") or []:
            h = hosts.get(m["url"], {})
            check(h.get("capabilities") == m.get("capabilities", ["pull", "resolve"]), f"{key} {m['url']} capabilities")
            check(h.get("skip_verify") == m.get("skipVerify"), f"{key} {m['url']} skip_verify")
            check(h.get("ca") == m.get("ca"), f"{key} {m['url']} ca")
    check(set(data) == {"config.toml"} | {"hosts.%s.toml" % h.replace(":", "_") for h in mirrors},
          "ConfigMap holds config.toml and one hosts.toml per registry, nothing else")

    # --- DaemonSet
    spec = ds.get("spec") or {}
    tmpl = spec.get("template") or {}
    labels = (tmpl.get("metadata") or {}).get("labels") or {}
    sel = (spec.get("selector") or {}).get("matchLabels") or {}
    check(bool(sel) and all(labels.get(k) == val for k, val in sel.items()), "DaemonSet selector matches the pod labels")
    for k, val in (v.get("podLabels") or {}).items():
        check(labels.get(k) == val, f"pod label {k}")
    ann = (tmpl.get("metadata") or {}).get("annotations") or {}
    check(re.fullmatch(r"[0-9a-f]{64}", ann.get("checksum/config", "")) is not None, "checksum/config annotation")
    pod = tmpl.get("spec") or {}
    vols = check_pod_spec(pod, "DaemonSet")
    check(pod.get("hostPID") is True, "hostPID: true")
    check(pod.get("hostNetwork") is True, "hostNetwork: true")
    check(pod.get("nodeSelector", {}) == v["nodeSelector"], "nodeSelector from values")
    check(pod.get("tolerations", []) == v["tolerations"], "tolerations from values")
    check(pod.get("affinity", {}) == v.get("affinity", {}), "affinity from values")
    if v.get("priorityClassName"):
        check(pod.get("priorityClassName") == v["priorityClassName"], "priorityClassName from values")
    check(spec.get("updateStrategy") == v["updateStrategy"], "updateStrategy from values")
    sas = {(d["metadata"]["name"]) for d in docs if d["kind"] == "ServiceAccount"}
    sa = pod.get("serviceAccountName")
    if v["serviceAccount"]["create"]:
        check(sa in sas, f"DaemonSet's ServiceAccount {sa} is rendered")
    check(pod.get("automountServiceAccountToken") is False, "no API token in the installer pod")
    c = (pod.get("containers") or [{}])[0]
    check(c.get("securityContext", {}).get("privileged") is True, "installer container is privileged")
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Chart.yaml")) as f:
        app_version = str(yaml.safe_load(f)["appVersion"])
    tag = v["image"]["tag"] or app_version
    check(c.get("image") == f"{v['image']['repository']}:{tag}", "installer image from values")
    check(c.get("imagePullPolicy") == v["image"]["pullPolicy"], "pullPolicy from values")
    check(c.get("resources", {}) == v["resources"], "resources from values")
    env = {e["name"]: e.get("value") for e in c.get("env") or []}
    check(env.get("HOST_ROOT") == "/host", "HOST_ROOT=/host")
    check(env.get("BERTH_SWITCH_RUNTIME") == str(v["kubelet"]["switchRuntime"]).lower(), "BERTH_SWITCH_RUNTIME from values")
    check(env.get("KUBELET_CONFIG") == v["kubelet"]["configPath"], "KUBELET_CONFIG from values")
    check(env.get("BERTH_INSTALLER_MODE") == v["installerMode"], "BERTH_INSTALLER_MODE from values")
    check(env.get("BERTH_INSTALLER_TIMEOUT") == str(v["installTimeoutSeconds"]), "BERTH_INSTALLER_TIMEOUT from values")
    mounts = {m["mountPath"]: m for m in c.get("volumeMounts") or []}
    host = mounts.get("/host", {})
    check(vols.get(host.get("name"), {}).get("hostPath", {}).get("path") == "/", "host / mounted at /host (HOST_ROOT)")
    cfgm = mounts.get(env.get("BERTH_CONFIG_SRC"), {})
    cfgvol = vols.get(cfgm.get("name"), {}).get("configMap", {})
    check(cfgvol.get("name") == cm["metadata"]["name"], "config volume is the chart's ConfigMap, at BERTH_CONFIG_SRC")
    items = cfgvol.get("items") or []
    check({i["key"] for i in items} == set(data), "config volume projects every ConfigMap key")
    for i in items:
        check(not i["path"].startswith("/") and ".." not in i["path"].split("/"), f"item path {i['path']} relative")
    ready = env.get("BERTH_INSTALLER_READY_FILE", "")
    probe = c.get("readinessProbe", {}).get("exec", {}).get("command", [])
    check(probe[-1:] == [ready] and any(ready.startswith(p + "/") for p in mounts), "readiness probe checks the ready file on a mount")
    check(c.get("command") == ["/usr/local/bin/berth-install", "run"], "installer entrypoint")

    # --- uninstall hook
    job = [d for d in docs if d["kind"] == "Job"]
    roles = [d for d in docs if d["kind"] in ("Role", "RoleBinding")]
    if v["uninstallHook"]["enabled"]:
        check(len(job) == 1, "one uninstall Job")
        hook_docs = job + roles + [d for d in docs if d["kind"] == "ServiceAccount" and d["metadata"]["name"].endswith("-uninstall")]
        check(len(hook_docs) == 4, "hook SA, Role, RoleBinding and Job")
        for d in hook_docs:
            a = d["metadata"].get("annotations") or {}
            check(a.get("helm.sh/hook") == "pre-delete", f"{d['kind']} is a pre-delete hook")
            int(a.get("helm.sh/hook-weight", "x"))
        if job:
            j = job[0]
            jpod = j["spec"]["template"]["spec"]
            check_pod_spec(jpod, "Job")
            check(jpod.get("restartPolicy") in ("Never", "OnFailure"), "Job restartPolicy")
            check(jpod.get("serviceAccountName") in sas, "Job's ServiceAccount is rendered")
            dsname = ds["metadata"]["name"]
            args = [a for ct in jpod.get("initContainers", []) + jpod["containers"] for a in ct.get("args", [])]
            check(args.count(f"daemonset/{dsname}") == 2, "hook sets env on and waits for this DaemonSet")
            check("BERTH_INSTALLER_MODE=uninstall" in args and "--containers=installer" in args, "hook switches the installer to uninstall")
            role = [d for d in roles if d["kind"] == "Role"][0]
            rb = [d for d in roles if d["kind"] == "RoleBinding"][0]
            check(rb["roleRef"]["name"] == role["metadata"]["name"] and rb["subjects"][0]["name"] == jpod["serviceAccountName"],
                  "RoleBinding binds the hook's Role to the hook's ServiceAccount")
            check(any(dsname in r.get("resourceNames", []) and "patch" in r["verbs"] for r in role["rules"]),
                  "Role may patch only this DaemonSet")
    else:
        check(not job and not roles, "no hook resources when the hook is disabled")
    print(f"  objects: {passes} passed, {len(failures)} failed")
    return 0 if not failures else 1


def cmd_schema(schema_path, values_path, expect_invalid):
    with open(schema_path) as f:
        schema = json.load(f)
    jsonschema.Draft7Validator.check_schema(schema)
    with open(values_path) as f:
        values = json.load(f)
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(values), key=lambda e: list(e.path))
    if expect_invalid:
        if not errors:
            print(f"  FAILED: {values_path} was accepted but must be rejected", file=sys.stderr)
            return 1
        for e in errors:
            print(f"  rejected as expected: {'.'.join(map(str, e.path)) or '(top)'}: {e.message}")
        return 0
    for e in errors:
        print(f"  FAILED: schema: {'.'.join(map(str, e.path))}: {e.message}", file=sys.stderr)
    return 1 if errors else 0


def cmd_extract(rendered, outdir):
    docs = load(rendered)
    cm = [d for d in docs if d["kind"] == "ConfigMap"][0]
    ds = [d for d in docs if d["kind"] == "DaemonSet"][0]
    vol = [v for v in ds["spec"]["template"]["spec"]["volumes"] if "configMap" in v][0]
    for item in vol["configMap"]["items"]:
        p = os.path.join(outdir, item["path"])
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w") as f:
            f.write(cm["data"][item["key"]])
    return 0


def main(argv):
    if len(argv) < 2:
        print(__doc__)
        return 2
    cmd, args = argv[1], argv[2:]
    if cmd == "schema":
        return cmd_schema(args[0], args[1], "--expect-invalid" in args)
    if cmd == "check":
        opts = dict(zip(args[2::2], args[3::2]))
        return cmd_check(args[0], args[1], opts["--name"], opts["--namespace"], opts.get("--berth"))
    if cmd == "extract":
        return cmd_extract(args[0], args[1])
    if cmd == "checksum":
        ds = [d for d in load(args[0]) if d["kind"] == "DaemonSet"][0]
        print(ds["spec"]["template"]["metadata"]["annotations"]["checksum/config"])
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
