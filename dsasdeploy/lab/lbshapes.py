"""How the lab balances its web hosts (`dsas lab up --lb SHAPE`): the daemons' configuration (pure text).

- ipvsadm: one director guest (lb1), an LVS-NAT table loaded with `ipvsadm -R`; dsas edits weights.
- keepalived: two director guests (lb1, lb2) running Debian's keepalived: a VRRP sync group moves the
  VIP and the web hosts' gateway together; `virtual_server` with HTTP checks of /lb-check, which the
  app answers 503 while <deploy_to>/shared/maintenance exists (dsas's drain), `inhibit_on_failure`
  (a failing server gets weight 0, not removed) and `alpha` (a (re)started checker counts a server
  down until it passes once: a restarted director never sends traffic to a drained server).
  docs/load-balancers.md explains the same configuration for production.
- dr: one director guest, LVS direct routing; the web hosts carry the VIP on lo with
  arp_ignore/arp_announce and reply to the client on their own br-pub leg.
- haproxy: Debian's haproxy in the lb1 namespace, backend `web`, runtime API on a stats socket.
"""

from __future__ import annotations

from .topology import (APP_PORT, DIRECTOR_PRIV, HAPROXY_BACKEND, HAPROXY_SOCKET, LB_SHAPES, MAINTENANCE_FILE, VIP,
                       VIP_PORT, vip_port, web_address)

CHECK_PATH = "/lb-check"  # the app answers 503 here while shared/maintenance exists
VRRP_PRIORITY = {"lb1": 150, "lb2": 100}
PACKAGES = {"keepalived": ("/usr/sbin/keepalived",), "haproxy": ("/usr/sbin/haproxy", "/usr/bin/socat")}


def check_shape(lb: str) -> str:
    """The shape name, or ValueError naming the known ones."""
    if lb not in LB_SHAPES:
        raise ValueError(f"--lb must be one of {', '.join(LB_SHAPES)}, not {lb!r}")
    return lb


def ipvs_rules(web: int, lb: str = "ipvsadm") -> str:
    """`ipvsadm -R` input of the raw-IPVS shapes: NAT on VIP:80, or direct routing on VIP:8080."""
    flag = "-g" if lb == "dr" else "-m"
    lines = [f"-A -t {VIP}:{vip_port(lb)} -s wrr"]
    lines += [f"-a -t {VIP}:{vip_port(lb)} -r {web_address(i)}:{APP_PORT} {flag} -w 1" for i in range(1, web + 1)]
    return "\n".join(lines) + "\n"


def keepalived_conf(name: str, web: int) -> str:
    """keepalived.conf of director `name` (lb1 or lb2) of the VRRP pair."""
    reals = "".join(f"""
    real_server {web_address(i)} {APP_PORT} {{
        weight 1
        inhibit_on_failure
        HTTP_GET {{
            url {{
                path {CHECK_PATH}
                status_code 200
            }}
            connect_timeout 1
            retry 0
            delay_before_retry 1
        }}
    }}""" for i in range(1, web + 1))
    return f"""# keepalived of lab director {name} (written by dsasdeploy.lab.lbshapes; see docs/load-balancers.md)
global_defs {{
    router_id {name}
    vrrp_garp_master_delay 1
    vrrp_garp_master_repeat 3
}}

# the VIP and the web hosts' gateway always move together
vrrp_sync_group DSASLAB {{
    group {{
        PUB
        PRIV
    }}
}}

vrrp_instance PUB {{
    state BACKUP
    nopreempt
    interface eth1
    virtual_router_id 77
    priority {VRRP_PRIORITY[name]}
    advert_int 1
    virtual_ipaddress {{
        {VIP}/24 dev eth1
    }}
}}

vrrp_instance PRIV {{
    state BACKUP
    nopreempt
    interface eth2
    virtual_router_id 78
    priority {VRRP_PRIORITY[name]}
    advert_int 1
    virtual_ipaddress {{
        {DIRECTOR_PRIV}/24 dev eth2
    }}
}}

virtual_server {VIP} {VIP_PORT} {{
    delay_loop 1
    lb_algo wrr
    lb_kind NAT
    protocol TCP
    alpha
{reals}
}}
"""


KEEPALIVED_RC = """# sourced by the guest init on a keepalived director (written by dsasdeploy.lab.lbshapes)
sysctl -q -w net.ipv4.ip_forward=1
sysctl -q -w net.ipv4.vs.expire_nodest_conn=1 2>/dev/null || true
sysctl -q -w net.ipv4.vs.expire_quiescent_template=1 2>/dev/null || true
mkdir -p /run/keepalived
setsid /usr/sbin/keepalived --dont-fork --log-console --log-detail \\
    --use-file="$LAB/guests/$dsas_name/keepalived.conf" --pid=/run/keepalived.pid \\
    --vrrp_pid=/run/keepalived-vrrp.pid --checkers_pid=/run/keepalived-checkers.pid \\
    </dev/null >>"$LAB/logs/$dsas_name.keepalived.log" 2>&1 &
"""


def dr_real_server_setup() -> tuple[list[str], list[str]]:
    """An LVS-DR real server: (`ip` batch lines, sysctl settings) for its namespace. The VIP sits on
    lo; arp_ignore=1 + arp_announce=2 keep the host from answering or announcing it on the wire;
    reverse-path filtering is off since requests arrive on eth0 and replies leave on eth1."""
    ip_lines = [f"addr add {VIP}/32 dev lo"]
    sysctls = ["net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.arp_announce=2",
               "net.ipv4.conf.eth1.arp_ignore=1", "net.ipv4.conf.eth1.arp_announce=2",
               "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0",
               "net.ipv4.conf.eth0.rp_filter=0", "net.ipv4.conf.eth1.rp_filter=0"]
    return ip_lines, sysctls


def haproxy_cfg(web: int) -> str:
    """haproxy.cfg of the lab's HAProxy (lb1's namespace): VIP:80 -> backend web (servers named
    like the stage's hosts, which the driver relies on), checks of /lb-check."""
    servers = "".join(f"    server web{i} {web_address(i)}:{APP_PORT} check\n" for i in range(1, web + 1))
    return f"""# HAProxy of the dsas lab (written by dsasdeploy.lab.lbshapes)
global
    stats socket {HAPROXY_SOCKET} mode 600 level admin
    stats timeout 10s
    maxconn 4000

defaults
    mode http
    timeout connect 2s
    timeout client 15s
    timeout server 15s
    retries 2
    option redispatch

frontend www
    bind {VIP}:{VIP_PORT}
    default_backend {HAPROXY_BACKEND}

backend {HAPROXY_BACKEND}
    balance roundrobin
    option httpchk GET {CHECK_PATH}
    http-check expect status 200
    default-server inter 500ms fall 2 rise 2
{servers}"""


__all__ = ["CHECK_PATH", "HAPROXY_BACKEND", "HAPROXY_SOCKET", "KEEPALIVED_RC", "MAINTENANCE_FILE", "PACKAGES",
           "check_shape", "dr_real_server_setup", "haproxy_cfg", "ipvs_rules",
           "keepalived_conf"]
