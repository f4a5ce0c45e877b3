# A CRI client on Python's grpcio (grpc-core underneath, not grpc-go): run
# by tests/tests/python_grpc.rs with stubs it generated from
# cri/proto/api.proto.
#
#   cri_client.py SOCKET STUBS_DIR LOG_DIR AUTHORITY...
#
# Drives a pod through its life on a channel with default settings (so the
# `:authority` is whatever this grpcio sends for a unix socket), then calls
# Version and ListPodSandbox once per AUTHORITY given, sent as `:authority`
# (the socket path, or its percent-encoding, as other gRPC clients send).
# Prints one JSON object; on an RPC error, the failing step and its status,
# exit code 1.
import json
import sys

sock, stubs, log_dir = sys.argv[1:4]
authorities = sys.argv[4:]
sys.path.insert(0, stubs)

import grpc  # noqa: E402
import api_pb2  # noqa: E402
import api_pb2_grpc  # noqa: E402

TIMEOUT = 30
out = {"grpcio": grpc.__version__}
step = "connect"


def pod_config():
    # As tests/tests/common/mod.rs pod_config: what kubelet sends for a pod
    # without shareProcessNamespace. The daemon's network is loopback only.
    return api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(
            name="py-pod", uid="py-uid-1", namespace="default", attempt=0
        ),
        hostname="py-host",
        log_directory=log_dir,
        labels={"client": "grpcio"},
        linux=api_pb2.LinuxPodSandboxConfig(
            sysctls={"net.ipv4.ip_unprivileged_port_start": "0"},
            security_context=api_pb2.LinuxSandboxSecurityContext(
                namespace_options=api_pb2.NamespaceOption(pid=api_pb2.CONTAINER)
            ),
        ),
    )


def pods(rt, pod_id):
    items = rt.ListPodSandbox(
        api_pb2.ListPodSandboxRequest(filter=api_pb2.PodSandboxFilter(id=pod_id)),
        timeout=TIMEOUT,
    ).items
    return [
        {
            "id": p.id,
            "name": p.metadata.name,
            "uid": p.metadata.uid,
            "state": api_pb2.PodSandboxState.Name(p.state),
            "labels": dict(p.labels),
        }
        for p in items
    ]


try:
    # Default channel settings: no authority override, no other options.
    with grpc.insecure_channel("unix://" + sock) as ch:
        rt = api_pb2_grpc.RuntimeServiceStub(ch)
        step = "Version"
        v = rt.Version(api_pb2.VersionRequest(version="v1"), timeout=TIMEOUT)
        out["version"] = {
            "runtime_name": v.runtime_name,
            "runtime_version": v.runtime_version,
            "runtime_api_version": v.runtime_api_version,
        }
        step = "RunPodSandbox"
        pod_id = rt.RunPodSandbox(
            api_pb2.RunPodSandboxRequest(config=pod_config()), timeout=TIMEOUT
        ).pod_sandbox_id
        out["pod_id"] = pod_id
        step = "ListPodSandbox"
        out["pods_running"] = pods(rt, pod_id)
        step = "ListContainers"
        out["containers"] = [
            c.id
            for c in rt.ListContainers(
                api_pb2.ListContainersRequest(
                    filter=api_pb2.ContainerFilter(pod_sandbox_id=pod_id)
                ),
                timeout=TIMEOUT,
            ).containers
        ]
        step = "StopPodSandbox"
        rt.StopPodSandbox(
            api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=TIMEOUT
        )
        step = "ListPodSandbox after stop"
        out["pods_stopped"] = pods(rt, pod_id)
        step = "RemovePodSandbox"
        rt.RemovePodSandbox(
            api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=TIMEOUT
        )
        step = "ListPodSandbox after remove"
        out["pods_removed"] = pods(rt, pod_id)

    out["authorities"] = {}
    for authority in authorities:
        opts = [("grpc.default_authority", authority)]
        with grpc.insecure_channel("unix://" + sock, options=opts) as ch:
            rt = api_pb2_grpc.RuntimeServiceStub(ch)
            step = "Version with :authority " + authority
            name = rt.Version(api_pb2.VersionRequest(), timeout=TIMEOUT).runtime_name
            step = "ListPodSandbox with :authority " + authority
            n = len(rt.ListPodSandbox(api_pb2.ListPodSandboxRequest(), timeout=TIMEOUT).items)
            out["authorities"][authority] = {"runtime_name": name, "pods": n}
except grpc.RpcError as e:
    out["failed_step"] = step
    out["code"] = str(e.code())
    out["details"] = e.details()
    print(json.dumps(out))
    sys.exit(1)

print(json.dumps(out))
