"""Starting, watching and stopping the backend and the proxies, and reading their CPU and memory."""

import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.request

from .common import CLK_TCK, HELPER, HOST, PORTS, SERVER_CPU, TERN, on_cpu, record, sh
from .configs import config_texts, tern_config, write_config


def wait_port(port, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def children_of(pid):
    kids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                kids.append(int(d))
        except (OSError, IndexError, ValueError):
            pass
    return kids


def cpu_seconds(pids, which=(11, 12)):
    """utime + stime (fields 14 and 15 of /proc/PID/stat) by default; which=(11,) is user only."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += sum(int(fields[i]) for i in which)
        except OSError:
            pass
    return total / CLK_TCK


def rss_kib(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def sched_cpu_s(pids):
    """Nanosecond CPU time of every thread (/proc/PID/task/*/schedstat), in seconds:
    far finer than the 10 ms ticks of /proc/PID/stat."""
    total = 0
    for pid in pids:
        try:
            for t in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                    total += int(f.read().split()[0])
        except OSError:
            pass
    return total / 1e9


class Server:
    def __init__(self, name, cmd, log_path, ports):
        self.name, self.cmd, self.ports = name, cmd, list(ports)
        record(f"start {name}", cmd)
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        for p in ports:
            wait_port(p)

    def restart(self):
        """A fresh process with the same command (and log file, appended)."""
        self.stop()
        path = self.log.name
        self.log = open(path, "a")
        self.proc = subprocess.Popen(self.cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        for p in self.ports:
            wait_port(p)

    def pids(self):
        return [self.proc.pid] + children_of(self.proc.pid)

    def stop(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.log.close()


def make_certs(work):
    """The certificate every target serves, in certs/ and, as Tern reads it, tern-certs/."""
    c = os.path.join(work, "certs")
    tc = os.path.join(work, "tern-certs")
    sh([HELPER, "certs", "--dir", c, "--name", HOST])
    os.makedirs(tc, exist_ok=True)
    shutil.copy(os.path.join(c, "site.crt"), tc)
    shutil.copy(os.path.join(c, "site.key"), tc)


def require_ports_free():
    for ports in PORTS.values():
        for port in ports.values():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    raise RuntimeError(f"127.0.0.1:{port} is already in use; is another bench/run running?")
            except OSError:
                pass


def launch(work, servers, name, binary=TERN):
    """Starts server `name` of PORTS into `servers`, from its configuration in `work`
    (`binary` is the Tern to run), pinned to SERVER_CPU in the pinned layout."""
    if name == "direct":
        c = os.path.join(work, "certs")
        label, cmd = "backend", [
            HELPER, "backend", "--listen", f"127.0.0.1:{PORTS['direct']['http']}",
            "--tls-listen", f"127.0.0.1:{PORTS['direct']['https']}",
            "--cert", f"{c}/site.crt", "--key", f"{c}/site.key"]
    elif name.startswith("tern"):
        label, cmd = name, [binary, "run", "--config", os.path.join(work, f"{name}.toml")]
    elif name.startswith("nginx"):
        label, cmd = name, ["nginx", "-p", os.path.join(work, name), "-c", os.path.join(work, f"{name}.conf")]
    else:
        label, cmd = name, ["haproxy", "-db", "-f", os.path.join(work, f"{name}.cfg")]
    servers[name] = Server(label, on_cpu(SERVER_CPU) + cmd, os.path.join(work, f"{label}.log"),
                           PORTS[name].values())


# Scenario 9's file: the same 34 bytes as `tern-bench backend` answers.
STATIC_FILE = "index.txt"
STATIC_BODY = b"hello from the tern bench backend\n"
STATIC_TARGETS = ("nginx-static", "tern-static", "nginx-to-static", "haproxy-to-static")


def start_static(work, servers):
    """Scenario 9's servers: nginx answering from a file, and Tern, nginx and HAProxy
    in front of it (their configs already written into `work`)."""
    www = os.path.join(work, "nginx-static", "www")
    os.makedirs(www, exist_ok=True)
    with open(os.path.join(www, STATIC_FILE), "wb") as f:
        f.write(STATIC_BODY)
    # Started as root, nginx's workers read files as `nobody`: they must be able to
    # pass through the (private) work directory to the file.
    for d in (work, os.path.join(work, "nginx-static")):
        os.chmod(d, 0o711)
    os.chmod(www, 0o755)
    os.chmod(os.path.join(www, STATIC_FILE), 0o644)
    os.makedirs(os.path.join(work, "nginx-to-static"), exist_ok=True)
    for name in STATIC_TARGETS:
        launch(work, servers, name)


def start_all(work, servers, baseline=None):
    """Starts every server into `servers` (so the caller can stop them even if one fails);
    with `baseline`, that build of Tern too, as tern-base."""
    make_certs(work)
    os.makedirs(os.path.join(work, "nginx"), exist_ok=True)
    os.makedirs(os.path.join(work, "nginx-bare"), exist_ok=True)
    for name, text in config_texts(work).items():
        write_config(work, name, text)
    require_ports_free()
    for name in ("direct", "tern", "tern-nowd"):
        launch(work, servers, name)
    if baseline:
        write_config(work, "tern-base.toml", tern_config(work, "tern-base", True))
        launch(work, servers, "tern-base", baseline)
    for name in ("nginx", "nginx-bare", "haproxy", "haproxy-bare"):
        launch(work, servers, name)
    start_static(work, servers)
    wait_answering(servers, os.path.join(work, "certs", "ca.pem"))


def start_unpinned(work, servers):
    """The unpinned layout (bench/layouts): the backend, Tern with each scheduler,
    nginx and HAProxy, nothing pinned and each with its default workers."""
    make_certs(work)
    os.makedirs(os.path.join(work, "nginx"), exist_ok=True)
    write_config(work, "tern.toml", tern_config(work, "tern", True, "work-stealing"))
    write_config(work, "tern-pc.toml", tern_config(work, "tern-pc", True, "per-core"))
    texts = config_texts(work)
    write_config(work, "nginx.conf", texts["nginx.conf"])
    for name in ("haproxy.cfg", "nginx-static.conf", "tern-static.toml", "nginx-to-static.conf",
                 "haproxy-to-static.cfg"):
        write_config(work, name, texts[name])
    require_ports_free()
    for name in ("direct", "tern", "tern-pc", "nginx", "haproxy"):
        launch(work, servers, name)
    start_static(work, servers)
    wait_answering(servers, os.path.join(work, "certs", "ca.pem"))


def wait_answering(servers, ca):
    """Every target must answer 200 over HTTP and HTTPS before we measure it."""
    ctx = ssl.create_default_context(cafile=ca)
    for name in servers:
        ports = PORTS[name]
        for scheme in ("http", "https"):
            url = f"{scheme}://{HOST}:{ports[scheme]}/"
            deadline = time.time() + 10
            while True:
                try:
                    with urllib.request.urlopen(url, context=ctx if scheme == "https" else None,
                                                timeout=3) as r:
                        assert r.status == 200, (url, r.status)
                    break
                except Exception as e:  # noqa: BLE001
                    if time.time() > deadline:
                        raise RuntimeError(f"{url} does not answer: {e}")
                    time.sleep(0.2)
