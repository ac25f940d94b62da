"""Renders the Tern, nginx and HAProxy configurations from bench/templates/."""

import os
import string

from .common import HOST, PORTS, RESULTS, TEMPLATES, pinned

# What Tern does to every request by default, and nginx and HAProxy are set up to
# do too, so that all three do the same job: X-Forwarded-For, -Proto and -Port,
# the client's address and the region in fields of their own, Via both ways, and
# a fresh request id sent to the backend and returned to the client. The directives
# are bench/templates/{nginx-forwarding.conf,haproxy-forwarding.cfg}, pasted in as
# they are (they hold nginx's own $variables).
FORWARDING = True
# The TLS 1.3 suites in Tern's order of preference, given to nginx and HAProxy too.
TLS13_SUITES = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"


def template_text(file_name):
    with open(os.path.join(TEMPLATES, file_name)) as f:
        return f.read()


def render(file_name, **values):
    return string.Template(template_text(file_name)).substitute(values)


def tern_config(work, name, watchdog, scheduler=None, backend="direct"):
    p = PORTS[name]
    workers = "workers = 1\n" if pinned() else ""
    if scheduler:
        workers += f'scheduler = "{scheduler}"\n'
    return render("tern.toml.tmpl", name=name, admin_port=p["admin"], workers=workers,
                  certs=os.path.join(work, "tern-certs"), watchdog="true" if watchdog else "false",
                  host=HOST, backend_port=PORTS[backend]["http"], http_port=p["http"],
                  https_port=p["https"])


def nginx_config(work, name, forwarding, backend="direct"):
    p = PORTS[name]
    return render("nginx.conf.tmpl", dir=os.path.join(work, name),
                  nginx_workers="1" if pinned() else "auto", certs=os.path.join(work, "certs"),
                  tls13_suites=TLS13_SUITES, backend_port=PORTS[backend]["http"],
                  http_port=p["http"], https_port=p["https"], host=HOST,
                  forwarding=template_text("nginx-forwarding.conf") if forwarding else "")


def haproxy_config(work, name, forwarding, backend="direct"):
    p = PORTS[name]
    return render("haproxy.cfg.tmpl", haproxy_threads="  nbthread 1\n" if pinned() else "",
                  tls13_suites=TLS13_SUITES, http_port=p["http"],
                  https_port=p["https"], certs=os.path.join(work, "certs"),
                  backend_port=PORTS[backend]["http"],
                  forwarding=template_text("haproxy-forwarding.cfg") if forwarding else "")


def nginx_static_config(work):
    """Scenario 9's backend: nginx answering from a file, as a user's static site would."""
    p = PORTS["nginx-static"]
    return render("nginx-static.conf.tmpl", dir=os.path.join(work, "nginx-static"),
                  nginx_workers="1" if pinned() else "auto", certs=os.path.join(work, "certs"),
                  http_port=p["http"], https_port=p["https"], host=HOST)


def config_texts(work):
    """Every configuration of a run but --baseline's, by its file name in `work`."""
    return {
        "tern.toml": tern_config(work, "tern", watchdog=True),
        "tern-nowd.toml": tern_config(work, "tern-nowd", watchdog=False),
        "nginx.conf": nginx_config(work, "nginx", FORWARDING),
        "haproxy.cfg": haproxy_config(work, "haproxy", FORWARDING),
        "nginx-bare.conf": nginx_config(work, "nginx-bare", forwarding=False),
        "haproxy-bare.cfg": haproxy_config(work, "haproxy-bare", forwarding=False),
        "nginx-static.conf": nginx_static_config(work),
        "tern-static.toml": tern_config(work, "tern-static", watchdog=True, backend="nginx-static"),
        "nginx-to-static.conf": nginx_config(work, "nginx-to-static", FORWARDING, backend="nginx-static"),
        "haproxy-to-static.cfg": haproxy_config(work, "haproxy-to-static", FORWARDING, backend="nginx-static"),
    }


def write_config(work, name, text):
    with open(os.path.join(work, name), "w") as f:
        f.write(text)


def publish_configs(work):
    """Copies the configurations to bench/results/configs/, the temporary directory
    written as WORK so that they do not change from run to run."""
    cdir = os.path.join(RESULTS, "configs")
    os.makedirs(cdir, exist_ok=True)
    for name in config_texts(work):
        with open(os.path.join(work, name)) as f:
            text = f.read().replace(work, "WORK")
        with open(os.path.join(cdir, name), "w") as f:
            f.write(text)
