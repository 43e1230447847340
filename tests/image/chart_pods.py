"""The chart's pods run by podman, the way a kubelet would run them.

A container from the rendered chart becomes one ``podman run`` of Tide's image with what the
pod spec says and nothing it does not: its ``args`` under the image's entrypoint; its
environment resolved as Kubernetes resolves it (``envFrom`` ConfigMaps, then ``env`` in
order with ``$(VAR)`` expansion, ``secretKeyRef`` from the rendered Secret, ``fieldRef``
from the pod, plus the service links every pod gets for the Services of its namespace); its
user from the pod's or the container's ``securityContext``, else the image's; a read-only
root when ``readOnlyRootFilesystem`` asks, every capability dropped, no privilege
escalation; no passwd entry for the user (podman adds one unless told not to; a pod has
none) and ``HOME=/`` as container runtimes set it then; the resource limits; and ``/tmp``,
the one ``emptyDir``, as a fresh host directory, the pod's only writable path.

Each pod gets a network namespace of its own, as a pod does (slirp4netns): its
``containerPort``s are published on free loopback ports of the host, and the host's
loopback, where PostgreSQL and Redis listen, is reached at ``10.0.2.2`` (the stand-in for
the Services' names). Probes are run as the kubelet would: ``httpGet`` against the
published port with the probe's headers, ``exec`` inside the container.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from chart_render import RELEASE, Render, worker_deployments

#: The host's loopback as slirp4netns shows it inside the pod's network namespace.
HOST_LOOPBACK = "10.0.2.2"
#: Names of this run's containers, database and keys carry it.
RUN = os.environ.get("TIDE_TEST_RUN", str(os.getpid()))
#: The shadowing probe: a module named like Tide's package in every pod's /tmp. If a role
#: imported it, the marker would appear and the role would exit.
HOSTILE_MODULE = """\
import pathlib
pathlib.Path("/tmp/SHADOWED").write_text(__file__)
raise SystemExit("/tmp/tide.py was imported in place of Tide's package")
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: Where the kubelet mounts a pod's service-account token, and the API server's name then.
SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
API_SERVER_NAME = "kubernetes.default.svc"


@dataclass(frozen=True)
class Namespace:
    """What a rendered chart puts in the namespace that pods read from, and the cluster
    around it: ``service_account`` is a directory laid out as the kubelet mounts a token
    (token, ca.crt, namespace); the API server it names is absent (no cluster here)."""

    name: str
    config_maps: Mapping[str, Mapping[str, str]]
    secrets: Mapping[str, Mapping[str, str]]
    services: Sequence[Mapping[str, Any]]
    service_account: Path | None = None
    #: Where KUBERNETES_SERVICE_HOST/PORT point (the default/kubernetes Service).
    api_server: tuple[str, int] = ("10.96.0.1", 443)

    @classmethod
    def from_objects(
        cls,
        name: str,
        objects: Sequence[Mapping[str, Any]],
        *,
        service_account: Path | None = None,
        api_server: tuple[str, int] = ("10.96.0.1", 443),
    ) -> Namespace:
        config_maps = {
            o["metadata"]["name"]: o.get("data") or {} for o in objects if o["kind"] == "ConfigMap"
        }
        secrets = {
            o["metadata"]["name"]: {
                **{k: base64.b64decode(v).decode() for k, v in (o.get("data") or {}).items()},
                **(o.get("stringData") or {}),
            }
            for o in objects
            if o["kind"] == "Secret"
        }
        services = [o for o in objects if o["kind"] == "Service"]
        return cls(
            name=name,
            config_maps=config_maps,
            secrets=secrets,
            services=services,
            service_account=service_account,
            api_server=api_server,
        )

    def service_links(self) -> dict[str, str]:
        """The variables the kubelet adds for every Service (``enableServiceLinks``).

        Each gets a made-up ClusterIP: nothing should connect through these, but a
        program that reads a variable of the same name (``TIDE_EXPORTER_PORT`` is one
        such name) meets them as it would in a pod.
        """
        # Every pod also gets the API server's Service (default/kubernetes), links or not.
        host, port = self.api_server
        env: dict[str, str] = {
            "KUBERNETES_SERVICE_HOST": host,
            "KUBERNETES_SERVICE_PORT": str(port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(port),
            "KUBERNETES_PORT": f"tcp://{host}:{port}",
        }
        for index, service in enumerate(self.services):
            ip = f"10.96.0.{10 + index}"
            prefix = service["metadata"]["name"].upper().replace("-", "_")
            ports = service["spec"].get("ports") or []
            if not ports:
                continue
            env[f"{prefix}_SERVICE_HOST"] = ip
            env[f"{prefix}_SERVICE_PORT"] = str(ports[0]["port"])
            first = ports[0]
            env[f"{prefix}_PORT"] = f"{first.get('protocol', 'TCP').lower()}://{ip}:{first['port']}"
            for port in ports:
                proto = port.get("protocol", "TCP")
                if "name" in port:
                    env[f"{prefix}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}"] = str(
                        port["port"]
                    )
                key = f"{prefix}_PORT_{port['port']}_{proto}"
                env[key] = f"{proto.lower()}://{ip}:{port['port']}"
                env[f"{key}_PROTO"] = proto.lower()
                env[f"{key}_PORT"] = str(port["port"])
                env[f"{key}_ADDR"] = ip
        return env


_REFERENCE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def _expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: known names replaced, unknown left as written,
    ``$$`` an escaped ``$``."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _REFERENCE.sub(replace, value)


def container_env(
    container: Mapping[str, Any], namespace: Namespace, *, pod_name: str
) -> dict[str, str]:
    """The environment a container starts with, resolved in Kubernetes' order."""
    env = namespace.service_links()
    for source in container.get("envFrom") or []:
        if "configMapRef" in source:
            env.update(namespace.config_maps[source["configMapRef"]["name"]])
        elif "secretRef" in source:
            env.update(namespace.secrets[source["secretRef"]["name"]])
    fields = {"metadata.name": pod_name, "metadata.namespace": namespace.name}
    for item in container.get("env") or []:
        if "value" in item:
            env[item["name"]] = _expand(str(item["value"]), env)
            continue
        ref = item.get("valueFrom") or {}
        if "secretKeyRef" in ref:
            key = ref["secretKeyRef"]
            env[item["name"]] = namespace.secrets[key["name"]][key["key"]]
        elif "configMapKeyRef" in ref:
            key = ref["configMapKeyRef"]
            env[item["name"]] = namespace.config_maps[key["name"]][key["key"]]
        elif "fieldRef" in ref:
            env[item["name"]] = fields[ref["fieldRef"]["fieldPath"]]
        else:
            raise ValueError(f"env {item['name']}: no way to resolve {ref}")
    return env


def _quantity(value: str | int | float, *, unit: str) -> str:
    """A Kubernetes quantity as podman takes it: memory in bytes, CPU in cores."""
    text = str(value)
    if unit == "cpu":
        return str(int(text[:-1]) / 1000) if text.endswith("m") else text
    for suffix, factor in (("Ki", 2**10), ("Mi", 2**20), ("Gi", 2**30)):
        if text.endswith(suffix):
            return str(int(float(text[: -len(suffix)]) * factor))
    return text


def run_argv(
    *,
    image: str,
    name: str,
    pod_spec: Mapping[str, Any],
    container: Mapping[str, Any],
    env: Mapping[str, str],
    tmp_dir: Path,
    ports: Mapping[int, int],
    image_user: str,
    service_account: Path | None = None,
) -> list[str]:
    """The ``podman run`` arguments (after ``podman run``) for one container of a pod.

    ``image_user`` is the image's ``USER``: with ``runAsNonRoot`` and no ``runAsUser`` the
    kubelet starts the container only if that is a number other than 0, and so does this.
    """
    pod_ctx = pod_spec.get("securityContext") or {}
    ctx = {**pod_ctx, **(container.get("securityContext") or {})}
    if ctx.get("runAsNonRoot") and "runAsUser" not in ctx:
        uid = image_user.split(":")[0]
        if not uid.isdigit() or int(uid) == 0:
            raise ValueError(
                f"{name}: runAsNonRoot and the image's user {image_user!r} is not a non-zero "
                "number: the kubelet cannot verify it and refuses to start the container"
            )
    argv = [
        "--detach",
        f"--name={name}",
        # The kubelet names the pod's host after the pod; Celery's worker@%h uses it.
        f"--hostname={name}",
        "--network=slirp4netns:allow_host_loopback=true",
        # No passwd entry for the user, as in a pod; runtimes then set HOME to /.
        "--passwd=false",
        "--env=HOME=/",
        "--security-opt=no-new-privileges" if ctx.get("allowPrivilegeEscalation") is False else "",
        # podman's default seccomp profile is the runtime's default, as RuntimeDefault asks.
        *(f"--cap-drop={cap}" for cap in (ctx.get("capabilities") or {}).get("drop", [])),
    ]
    if "runAsUser" in ctx:
        argv.append(f"--user={ctx['runAsUser']}:{ctx.get('runAsGroup', ctx['runAsUser'])}")
    if "fsGroup" in pod_ctx:
        # The kubelet adds the fsGroup to the container's processes.
        argv.append(f"--group-add={pod_ctx['fsGroup']}")
    if ctx.get("readOnlyRootFilesystem"):
        # Only what the pod mounts is writable: no tmpfs of podman's own on /tmp, /run.
        argv += ["--read-only", "--read-only-tmpfs=false"]
    mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts") or []}
    for volume in pod_spec.get("volumes") or []:
        if volume["name"] not in mounts:
            continue
        if "emptyDir" not in volume or mounts[volume["name"]] != "/tmp":
            raise ValueError(f"volume {volume['name']}: only the /tmp emptyDir is modelled")
        argv.append(f"--volume={tmp_dir}:/tmp")
    # The kubelet mounts the service account's token unless the pod opts out.
    if service_account is not None and pod_spec.get("automountServiceAccountToken", True):
        argv.append(f"--volume={service_account}:{SERVICE_ACCOUNT_DIR}:ro")
        # Its API server's name resolves to the host, where no API server listens.
        argv.append(f"--add-host={API_SERVER_NAME}:{HOST_LOOPBACK}")
    limits = (container.get("resources") or {}).get("limits") or {}
    if "memory" in limits:
        argv.append(f"--memory={_quantity(limits['memory'], unit='memory')}")
    if "cpu" in limits:
        argv.append(f"--cpus={_quantity(limits['cpu'], unit='cpu')}")
    for container_port, host_port in ports.items():
        argv.append(f"--publish=127.0.0.1:{host_port}:{container_port}")
    for key, value in env.items():
        argv.append(f"--env={key}={value}")
    # Kubernetes expands $(VAR) in command and args too.
    command = [_expand(str(a), env) for a in container.get("command") or []]
    args = [_expand(str(a), env) for a in container.get("args") or []]
    if command:
        argv += ["--entrypoint", command[0]]
        args = [*command[1:], *args]
    return [a for a in argv if a] + [image, *args]


@dataclass
class Pod:
    """One running container of the chart, with its probes and its /tmp."""

    podman: Sequence[str]
    name: str
    container: Mapping[str, Any]
    tmp_dir: Path
    ports: dict[int, int] = field(default_factory=dict)
    started: float = 0.0

    def port(self, name_or_number: str | int) -> int:
        """The host port where a container port (by name or number) is published."""
        for port in self.container.get("ports") or []:
            if name_or_number in (port.get("name"), port["containerPort"]):
                return self.ports[port["containerPort"]]
        raise KeyError(f"{self.name} has no port {name_or_number}")

    def url(self, port: str | int, path: str) -> str:
        return f"http://127.0.0.1:{self.port(port)}{path}"

    def state(self) -> dict[str, Any]:
        out = subprocess.run(
            [*self.podman, "inspect", "--format", "{{json .State}}", self.name],
            capture_output=True,
            text=True,
            check=True,
        )
        return dict(json.loads(out.stdout))

    def running(self) -> bool:
        return bool(self.state()["Running"])

    def exit_code(self) -> int | None:
        state = self.state()
        return None if state["Running"] else int(state["ExitCode"])

    def alive(self) -> bool:
        """True while running; a test waiting on a pod that exited fails with its log."""
        if not self.running():
            pytest.fail(f"{self.name} exited {self.exit_code()}:\n{self.logs()[-5000:]}")
        return True

    def logs(self) -> str:
        out = subprocess.run(
            [*self.podman, "logs", self.name], capture_output=True, text=True, check=False
        )
        return out.stdout + out.stderr

    def exec(self, argv: Sequence[str], *, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.podman, "exec", self.name, *argv],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )

    def probe(self, kind: str) -> bool:
        """Run the container's ``kind`` probe (startupProbe, livenessProbe, …) once."""
        spec = self.container[kind]
        if "httpGet" in spec:
            get = spec["httpGet"]
            headers = {h["name"]: h["value"] for h in get.get("httpHeaders") or []}
            try:
                response = httpx.get(
                    self.url(get["port"], get["path"]),
                    headers=headers,
                    timeout=spec.get("timeoutSeconds", 1),
                )
            except httpx.HTTPError:
                return False
            # The kubelet counts 200-399 as success.
            return 200 <= response.status_code < 400
        if "exec" in spec:
            return (
                self.exec(
                    spec["exec"]["command"], timeout=spec.get("timeoutSeconds", 1) + 30
                ).returncode
                == 0
            )
        raise ValueError(f"{self.name}: {kind} is neither httpGet nor exec")

    def remove(self) -> None:
        subprocess.run(
            [*self.podman, "rm", "--force", "--time=5", self.name],
            capture_output=True,
            check=False,
        )


def start(
    *,
    podman: Sequence[str],
    image: str,
    name: str,
    pod_spec: Mapping[str, Any],
    container: Mapping[str, Any],
    namespace: Namespace,
    tmp_dir: Path,
    uid: int = 10001,
) -> Pod:
    """Start one container as the pod spec describes; return its handle at once."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    # An emptyDir is an empty, world-writable directory (group fsGroup when set).
    gid = (pod_spec.get("securityContext") or {}).get("fsGroup", uid)
    os.chown(tmp_dir, uid, gid)
    tmp_dir.chmod(0o777)
    ports = {p["containerPort"]: free_port() for p in container.get("ports") or []}
    env = container_env(container, namespace, pod_name=name)
    user = subprocess.run(
        [*podman, "image", "inspect", "--format", "{{.Config.User}}", image],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    argv = run_argv(
        image=image,
        name=name,
        pod_spec=pod_spec,
        container=container,
        env=env,
        tmp_dir=tmp_dir,
        ports=ports,
        image_user=user,
        service_account=namespace.service_account,
    )
    started = time.monotonic()
    result = subprocess.run([*podman, "run", *argv], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"podman run {name} failed: {result.stderr.strip()}")
    return Pod(
        podman=podman,
        name=name,
        container=container,
        tmp_dir=tmp_dir,
        ports=ports,
        started=started,
    )


class SilentApiServer:
    """Where KUBERNETES_SERVICE_HOST/PORT point: it accepts connections, counts them and
    closes them unanswered (no cluster here). A count above zero means a pod got as far as
    calling the API server."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()


@dataclass
class Built:
    """The image a session built, how to run podman on it, and the build's figures."""

    image: str
    podman: list[str]
    figures: dict[str, str]

    @property
    def state(self) -> Path:
        return Path(self.figures["state"])


@dataclass
class Pods:
    """Starts the chart's workloads as pods; keeps them for later tests and teardown, and
    how long each took from ``podman run`` to ready."""

    built: Built
    chart: Render
    namespace: Namespace
    root: Path
    wait: Callable[..., Any]
    started: dict[str, Pod] = field(default_factory=dict)
    init: list[Pod] = field(default_factory=list)
    start_seconds: dict[str, float] = field(default_factory=dict)

    def workload(self, component: str) -> dict[str, Any]:
        """The pod spec of a component: a chart Deployment or Job, or (``worker``) the
        Deployment the operator builds from the chart's first WorkerPool."""
        if component == "worker":
            return dict(worker_deployments(self.chart)[0]["spec"]["template"]["spec"])
        for kind in ("Deployment", "Job"):
            for obj in self.chart.kind(kind):
                if obj["metadata"]["name"] == f"{RELEASE}-{component}":
                    return dict(obj["spec"]["template"]["spec"])
        raise KeyError(f"the chart renders no workload for {component}")

    def start(self, component: str, *, name: str | None = None, **overrides: Any) -> Pod:
        """Run the component's init containers to completion, then start its container.

        ``overrides`` replace fields of the pod spec (to run it as someone's own manifest
        might); ``name`` keeps such a variant apart from the chart's own pod."""
        spec = {**self.workload(component), **overrides}
        component = name or component
        name = f"tide-smoke-{RUN}-{component}"
        tmp = self.root / component
        tmp.mkdir(parents=True)
        (tmp / "tide.py").write_text(HOSTILE_MODULE)
        for init in spec.get("initContainers") or []:
            pod = self._start(f"{name}-{init['name']}", spec, init, tmp)
            self.init.append(pod)
            self.wait(
                lambda pod=pod: not pod.running(),
                timeout=120,
                interval=0.2,
                what=f"{pod.name} to finish",
                explain=pod.logs,
            )
            assert pod.exit_code() == 0, f"{pod.name} failed:\n{pod.logs()}"
        (container,) = spec["containers"]
        pod = self._start(name, spec, container, tmp)
        self.started[component] = pod
        return pod

    def _start(self, name: str, spec: dict[str, Any], container: dict[str, Any], tmp: Path) -> Pod:
        return start(
            podman=self.built.podman,
            image=self.built.image,
            name=name,
            pod_spec=spec,
            container=container,
            namespace=self.namespace,
            tmp_dir=tmp,
        )

    def until_probe(self, component: str, kind: str) -> Pod:
        """Poll a probe as the kubelet's startup or readiness loop does, until it passes;
        record the start time."""
        pod = self.started[component]
        self.wait(
            lambda: pod.alive() and pod.probe(kind),
            timeout=90,
            interval=0.2,
            what=f"{component}'s {kind}",
            explain=pod.logs,
        )
        self.ready(component)
        return pod

    def ready(self, component: str) -> None:
        pod = self.started[component]
        self.start_seconds[component] = round(time.monotonic() - pod.started, 2)

    def all(self) -> list[Pod]:
        return [*self.init, *self.started.values()]
