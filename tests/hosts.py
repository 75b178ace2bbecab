"""Hosts for multi-machine tests on one machine: Linux network namespaces joined by a bridge.

Each host is a namespace with its own loopback and one interface, ``eth0``, whose address exists
only inside the namespaces (the bridge in the root namespace has no address, so nothing outside
can reach them, nor they anything outside). A process started in a host sees just that network:
the same as a second machine, except that the disk and hostname are shared.

Needs root and ``ip`` (iproute2); :func:`unavailable` says why not, for a skip.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

import psutil


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    return None


@dataclass(frozen=True)
class Host:
    namespace: str
    address: str
    interface: str = "eth0"

    def command(self, *argv: str) -> list[str]:
        """``argv`` run inside this host."""
        return ["ip", "netns", "exec", self.namespace, *argv]


class Hosts:
    """``count`` hosts on subnet 10.``subnet``.0.0/24; a context manager that removes them again."""

    made = 0  # instances so far in this process: each gets its own names

    def __init__(self, count: int, subnet: int = 213) -> None:
        Hosts.made += 1
        self.tag = f"as{os.getpid() % 10000}x{Hosts.made % 100}"
        self.bridge = f"br-{self.tag}"
        self.hosts = [Host(f"{self.tag}-h{i}", f"10.{subnet}.0.{i + 1}") for i in range(count)]

    def __enter__(self) -> list[Host]:
        try:
            ip("link", "add", self.bridge, "type", "bridge")
            ip("link", "set", self.bridge, "up")
            for i, host in enumerate(self.hosts):
                outside, inside = f"v{self.tag}{i}", f"p{self.tag}{i}"
                ip("netns", "add", host.namespace)
                ip("link", "add", outside, "type", "veth", "peer", "name", inside)
                ip("link", "set", inside, "netns", host.namespace)
                ip("-n", host.namespace, "link", "set", inside, "name", host.interface)
                ip("-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", host.interface)
                ip("-n", host.namespace, "link", "set", host.interface, "up")
                ip("-n", host.namespace, "link", "set", "lo", "up")
                ip("link", "set", outside, "master", self.bridge)
                ip("link", "set", outside, "up")
        except BaseException:
            self.__exit__()
            raise
        return self.hosts

    def __exit__(self, *exc) -> None:
        """Kill what still runs in the hosts and wait for it to die (a namespace lives on while a
        process holds it), then delete the namespaces, veth pairs and bridge."""
        for i, host in enumerate(self.hosts):
            pids = subprocess.run(["ip", "netns", "pids", host.namespace], capture_output=True, text=True).stdout
            procs = []
            for pid in pids.split():
                try:
                    proc = psutil.Process(int(pid))
                    proc.kill()
                    procs.append(proc)
                except psutil.Error:
                    pass
            psutil.wait_procs(procs, timeout=10)
            subprocess.run(["ip", "netns", "del", host.namespace], capture_output=True)
            subprocess.run(["ip", "link", "del", f"v{self.tag}{i}"], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
