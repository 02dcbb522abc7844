#!/usr/bin/env python3
"""cri.py SOCKET HANDLER CGROUP_PARENT LOGDIR [NETWORK]: drive containerd's CRI plugin (what kubelet
would call) through hull: RunPodSandbox with the runtime handler, CreateContainer,
StartContainer, ExecSync, ContainerStatus, StopPodSandbox, RemovePodSandbox.
Prints one line per step; exits non-zero on the first failure."""
import sys
import time

import grpc
from cri_api.v1 import api_pb2 as api
from cri_api.v1 import api_pb2_grpc as rpc

sock, handler, cgroup_parent, logdir = sys.argv[1:5]
# "node" (the host's network: no CNI needed) or "pod" (its own, from the CNI config the test
# wrote: a vm pod cannot have the host's).
network = sys.argv[5] if len(sys.argv) > 5 else "node"
channel = grpc.insecure_channel("unix://" + sock)
rt = rpc.RuntimeServiceStub(channel)
T = 60


def step(name, value=""):
    print(f"{name} {value}".strip(), flush=True)


step("version", rt.Version(api.VersionRequest(), timeout=T).runtime_name)
if network == "pod":
    deadline = time.time() + 30
    while not any(
        c.type == "NetworkReady" and c.status
        for c in rt.Status(api.StatusRequest(), timeout=T).status.conditions
    ):
        if time.time() > deadline:
            sys.exit("the CRI plugin's CNI network did not become ready")
        time.sleep(0.2)
pod_config = api.PodSandboxConfig(
    metadata=api.PodSandboxMetadata(name="hull-pod", namespace="default", uid="uid-1", attempt=0),
    log_directory=logdir,
    linux=api.LinuxPodSandboxConfig(
        cgroup_parent=cgroup_parent,
        security_context=api.LinuxSandboxSecurityContext(
            # Host network: no CNI needed (and no hostname: the UTS namespace is the host's).
            namespace_options=api.NamespaceOption(
                network=api.POD if network == "pod" else api.NODE, pid=api.POD, ipc=api.POD
            )
        ),
    ),
)
pod = rt.RunPodSandbox(
    api.RunPodSandboxRequest(config=pod_config, runtime_handler=handler), timeout=T
).pod_sandbox_id
step("pod", pod)

ids = []
for name in ("app", "sidecar"):
    cfg = api.ContainerConfig(
        metadata=api.ContainerMetadata(name=name, attempt=0),
        image=api.ImageSpec(image="docker.io/hull/busybox:latest"),
        command=["sh", "-c", f"echo {name} up; sleep 1000"],
        log_path=f"{name}.log",
        linux=api.LinuxContainerConfig(),
    )
    cid = rt.CreateContainer(
        api.CreateContainerRequest(pod_sandbox_id=pod, config=cfg, sandbox_config=pod_config),
        timeout=T,
    ).container_id
    rt.StartContainer(api.StartContainerRequest(container_id=cid), timeout=T)
    ids.append(cid)
    step("started", f"{name} {cid}")

r = rt.ExecSync(
    api.ExecSyncRequest(container_id=ids[0], cmd=["sh", "-c", "echo exec-ok; exit 3"], timeout=20),
    timeout=T,
)
step("execsync", f"exit={r.exit_code} stdout={r.stdout.decode().strip()}")
if r.exit_code != 3 or r.stdout.decode().strip() != "exec-ok":
    sys.exit("ExecSync returned the wrong result")

st = rt.ContainerStatus(api.ContainerStatusRequest(container_id=ids[1]), timeout=T).status
step("status", api.ContainerState.Name(st.state))
if st.state != api.CONTAINER_RUNNING:
    sys.exit("sidecar is not running")

r = rt.ExecSync(api.ExecSyncRequest(container_id=ids[0], cmd=["uname", "-r"], timeout=20), timeout=T)
step("kernel", r.stdout.decode().strip())

# Shared pid namespace of the pod: the app sees the sidecar's sleep.
r = rt.ExecSync(api.ExecSyncRequest(container_id=ids[0], cmd=["ps"], timeout=20), timeout=T)
step("pod-pids", str(r.stdout.decode().count("sleep 1000")))

print("READY", flush=True)
sys.stdin.readline()  # the test checks the shims, then lets us finish

rt.StopContainer(api.StopContainerRequest(container_id=ids[0], timeout=2), timeout=T)
st = rt.ContainerStatus(api.ContainerStatusRequest(container_id=ids[0]), timeout=T).status
step("stopped", f"{api.ContainerState.Name(st.state)} exit={st.exit_code}")
if st.state != api.CONTAINER_EXITED:
    sys.exit("StopContainer did not stop it")
rt.StopPodSandbox(api.StopPodSandboxRequest(pod_sandbox_id=pod), timeout=T)
step("pod-stopped")
rt.RemovePodSandbox(api.RemovePodSandboxRequest(pod_sandbox_id=pod), timeout=T)
step("pod-removed")
left = rt.ListContainers(api.ListContainersRequest(), timeout=T).containers
if left:
    sys.exit(f"containers left: {[c.id for c in left]}")
print("DONE", flush=True)
