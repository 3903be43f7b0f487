"""The only port the sites see: nginx in front of the SuperLink, passing the Fleet API alone.

Flower 1.42's SuperLink serves three APIs on one HTTP port: the Fleet API (SuperNodes pull work
and push replies), the Control API (start runs, register SuperNode keys) and the Runtime API
(its own ServerApp processes). The Control API asks for no credentials: whoever reaches it can
register a SuperNode of their own and start a run whose ClientApp executes at every site. So
the SuperLink listens on the coordinator's loopback only, and a well-kept reverse proxy, not
code of ours, serves the sites' port with the federation's TLS certificate and forwards only
the Fleet API's routes (`/v1/fleet/...`) and the health check; every other path gets 403.
The route prefixes are Flower's own (flwr/superlink/routers/fleet/router.py, .../control/
router.py, flwr/supercore/routers/runtime/router.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from fedlstm.federation.deploy.credentials import Certificates

FORWARDED = ("/v1/fleet/", "= /health")  # nginx location specs of the Fleet API and health


class FrontDoorUnavailable(RuntimeError):
    pass


def nginx_executable() -> str:
    """nginx from PATH or Debian's /usr/sbin (not on a normal user's PATH)."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if not found:
        raise FrontDoorUnavailable(
            "nginx is needed as the federation's front door, so that sites reach only the "
            "Fleet API (install it: `apt-get install nginx-light`), or pass --no-front-door to "
            "expose the SuperLink on loopback only")
    return found


def nginx_config(work: Path, host: str, port: int, superlink_port: int,
                 certificates: Certificates) -> str:
    """An nginx configuration that runs in the foreground with every file under `work`."""
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (work / "tmp" / sub).mkdir(parents=True, exist_ok=True)
    listen = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    forward = """
            proxy_pass https://superlink;
            proxy_ssl_trusted_certificate {ca};
            proxy_ssl_verify on;
            proxy_ssl_name localhost;
            proxy_set_header Connection "";""".format(ca=certificates.ca_cert)
    locations = "\n".join(f"        location {spec} {{{forward}\n        }}" for spec in FORWARDED)
    return f"""# Written by fedlstm: the sites' only way to the SuperLink (the Fleet API).
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {work}/access.log;
    server_tokens off;
    client_body_temp_path {work}/tmp/body;
    proxy_temp_path {work}/tmp/proxy;
    fastcgi_temp_path {work}/tmp/fastcgi;
    uwsgi_temp_path {work}/tmp/uwsgi;
    scgi_temp_path {work}/tmp/scgi;
    client_max_body_size 512m;
    proxy_http_version 1.1;
    proxy_request_buffering off;
    proxy_buffering off;
    proxy_read_timeout 600s;
    proxy_send_timeout 600s;
    upstream superlink {{ server 127.0.0.1:{superlink_port}; keepalive 16; }}
    server {{
        listen {listen} ssl;
        ssl_certificate {certificates.server_cert};
        ssl_certificate_key {certificates.server_key};
        ssl_protocols TLSv1.2 TLSv1.3;
{locations}
        location / {{
            default_type application/json;
            return 403 '{{"detail": "this port serves only the Fleet API of the federation"}}';
        }}
    }}
}}
"""


def nginx_command(work: Path, host: str, port: int, superlink_port: int,
                  certificates: Certificates) -> list[str]:
    """The command that runs the front door in the foreground (a bad configuration makes nginx
    exit at once; the caller's start-up wait reports its log)."""
    work.mkdir(parents=True, exist_ok=True)
    conf = work / "nginx.conf"
    conf.write_text(nginx_config(work, host, port, superlink_port, certificates))
    return [nginx_executable(), "-p", str(work), "-c", str(conf), "-e", str(work / "error.log")]
