#!/usr/bin/env python3
"""cri_net.py SOCKET CGROUP_PARENT LOGDIR: a CRI client (what kubelet would call) that the
network tests drive one request per line: JSON on stdin, one JSON answer per line on stdout
({"ok": true, ...} or {"ok": false, "error": "..."}).

Requests (op):
  network_ready                    wait until the CRI plugin's CNI network is ready
  pod name handler hostname dns    RunPodSandbox in a POD network namespace; answers
                                   id, ips (PodSandboxStatus), netns (its path)
  run pod name cmd [devices]       CreateContainer + StartContainer of busybox; answers id
  exec id cmd [timeout]            ExecSync; answers exit_code, stdout, stderr
  rmpod pod                        StopPodSandbox + RemovePodSandbox
  list                             answers pods, containers (ids)
"""
import json
import sys
import time

import grpc
from cri_api.v1 import api_pb2 as api
from cri_api.v1 import api_pb2_grpc as rpc

sock, cgroup_parent, logdir = sys.argv[1:4]
rt = rpc.RuntimeServiceStub(grpc.insecure_channel("unix://" + sock))
T = 60
IMAGE = "docker.io/hull/busybox:latest"
pods = {}  # id -> PodSandboxConfig


def network_ready(_):
    deadline = time.time() + 30
    while True:
        st = rt.Status(api.StatusRequest(), timeout=T).status
        net = [c for c in st.conditions if c.type == "NetworkReady"]
        if net and net[0].status:
            return {}
        if time.time() > deadline:
            raise RuntimeError(f"CNI network not ready: {st}")
        time.sleep(0.2)


def pod(r):
    n = len(pods)
    cfg = api.PodSandboxConfig(
        metadata=api.PodSandboxMetadata(name=r["name"], namespace="default", uid=f"uid-net-{n}", attempt=0),
        hostname=r["hostname"],
        log_directory=logdir,
        dns_config=api.DNSConfig(servers=r["dns"]["servers"], searches=r["dns"]["searches"]),
        linux=api.LinuxPodSandboxConfig(
            cgroup_parent=cgroup_parent,
            security_context=api.LinuxSandboxSecurityContext(
                namespace_options=api.NamespaceOption(network=api.POD, pid=api.POD, ipc=api.POD)
            ),
        ),
    )
    pid = rt.RunPodSandbox(
        api.RunPodSandboxRequest(config=cfg, runtime_handler=r["handler"]), timeout=T
    ).pod_sandbox_id
    pods[pid] = cfg
    st = rt.PodSandboxStatus(api.PodSandboxStatusRequest(pod_sandbox_id=pid, verbose=True), timeout=T)
    ips = [st.status.network.ip] + [a.ip for a in st.status.network.additional_ips]
    info = json.loads(st.info.get("info", "{}"))
    netns = ""
    for ns in info.get("runtimeSpec", {}).get("linux", {}).get("namespaces", []):
        if ns.get("type") == "network":
            netns = ns.get("path", "")
    return {"id": pid, "ips": [i for i in ips if i], "netns": netns}


def run(r):
    cfg = api.ContainerConfig(
        metadata=api.ContainerMetadata(name=r["name"], attempt=0),
        image=api.ImageSpec(image=IMAGE),
        command=r["cmd"],
        log_path=f"{r['name']}.log",
        linux=api.LinuxContainerConfig(),
        devices=[api.Device(**d) for d in r.get("devices", [])],
    )
    cid = rt.CreateContainer(
        api.CreateContainerRequest(pod_sandbox_id=r["pod"], config=cfg, sandbox_config=pods[r["pod"]]),
        timeout=T,
    ).container_id
    rt.StartContainer(api.StartContainerRequest(container_id=cid), timeout=T)
    return {"id": cid}


def exec_(r):
    t = r.get("timeout", 20)
    x = rt.ExecSync(api.ExecSyncRequest(container_id=r["id"], cmd=r["cmd"], timeout=t), timeout=t + T)
    return {"exit_code": x.exit_code, "stdout": x.stdout.decode(errors="replace"),
            "stderr": x.stderr.decode(errors="replace")}


def rmpod(r):
    rt.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=r["pod"]), timeout=T)
    rt.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=r["pod"]), timeout=T)
    pods.pop(r["pod"], None)
    return {}


def list_(_):
    return {
        "pods": [p.id for p in rt.ListPodSandbox(api.ListPodSandboxRequest(), timeout=T).items],
        "containers": [c.id for c in rt.ListContainers(api.ListContainersRequest(), timeout=T).containers],
    }


OPS = {"network_ready": network_ready, "pod": pod, "run": run, "exec": exec_, "rmpod": rmpod, "list": list_}

for line in sys.stdin:
    req = json.loads(line)
    try:
        ans = dict(OPS[req["op"]](req), ok=True)
    except grpc.RpcError as e:
        ans = {"ok": False, "error": f"{req['op']}: {e.code().name}: {e.details()}"}
    except Exception as e:  # noqa: BLE001 - every failure goes back to the test as one line
        ans = {"ok": False, "error": f"{req['op']}: {e!r}"}
    print(json.dumps(ans), flush=True)
