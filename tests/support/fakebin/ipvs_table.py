"""The fake ipvsadm's table edits (the `ipvsadm` sh wrapper beside it runs this).

A director's IPVS table is $FAKE_HOST_DIR/ipvs.json; its two listings (`-Sn`, `-Ln --exact`)
are kept rendered beside it (ipvs.save, ipvs.list) for the wrapper to cat; whoever else writes
the table removes them. `-e` sets what it is told and resets the rest, as the kernel does.
Stdlib only: it runs with `python -I -S`.
"""

import json
import os
import sys

HOST_DIR = os.environ.get("FAKE_HOST_DIR", ".")
PROTO_FLAGS = {"-t": "TCP", "-u": "UDP", "-f": "FWM"}
METHOD_FLAGS = {"-m": "Masq", "-g": "Route", "-i": "Tunnel"}


def die(message, code=1):
    sys.stderr.write(message + "\n")
    sys.exit(code)


def load(path, default):
    try:
        with open(path) as source:
            return json.load(source)
    except FileNotFoundError:
        return default


def save(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as out:
        json.dump(data, out, indent=1)
    os.replace(tmp, path)


def options(words):
    """`-t VIP -r RIP -m -w 3` -> {"-t": VIP, "-r": RIP, "-m": "", "-w": "3"}."""
    found, index = {}, 0
    while index < len(words):
        word = words[index]
        if index + 1 < len(words) and not words[index + 1].startswith("-"):
            found[word] = words[index + 1]
            index += 2
        else:
            found[word] = ""
            index += 1
    return found


def render_save(table):
    """`ipvsadm -Sn`: the rules in restore format."""
    out = []
    for service in table["services"]:
        flag = {v: k for k, v in PROTO_FLAGS.items()}[service["proto"]]
        line = f"-A {flag} {service['address']} -s {service['scheduler']}"
        if service.get("flags"):
            line += " -b " + ",".join(service["flags"])
        if service.get("persistent"):
            line += f" -p {service['persistent']}"
        out.append(line)
        for real in service["reals"]:
            method = {v: k for k, v in METHOD_FLAGS.items()}[real["method"]]
            line = f"-a {flag} {service['address']} -r {real['address']} {method} -w {real['weight']}"
            if real.get("upper"):
                line += f" -x {real['upper']}"
            if real.get("lower"):
                line += f" -y {real['lower']}"
            out.append(line)
    return "".join(line + "\n" for line in out)


def render_list(table):
    """`ipvsadm -Ln --exact`: services, real servers and their counters."""
    out = ["IP Virtual Server version 1.2.1 (size=4096)", "Prot LocalAddress:Port Scheduler Flags",
           "  -> RemoteAddress:Port           Forward Weight ActiveConn InActConn"]
    for service in table["services"]:
        extra = f" ({','.join(service['flags'])})" if service.get("flags") else ""
        extra += f" persistent {service['persistent']}" if service.get("persistent") else ""
        out.append(f"{service['proto']:<4} {service['address']} {service['scheduler']}{extra}")
        for real in service["reals"]:
            out.append(f"  -> {real['address']:<28} {real['method']:<7} {real['weight']:<6} "
                       f"{real.get('active', 0):<10} {real.get('inactive', 0)}")
    return "".join(line + "\n" for line in out)


def save_table(table):
    """The table and its two rendered listings (the sh wrapper cats those while they exist)."""
    for name, text in (("ipvs.save", render_save(table)), ("ipvs.list", render_list(table))):
        path = os.path.join(HOST_DIR, name)
        with open(path + ".tmp", "w") as out:
            out.write(text)
        os.replace(path + ".tmp", path)


def checked(table, checks):
    """keepalived's view (`checks`: real address -> the file its health check fails on): a real
    server whose maintenance file exists has weight 0 (inhibit_on_failure), else its own weight."""
    for service in table["services"]:
        for real in service["reals"]:
            if real["address"] in checks and os.path.exists(checks[real["address"]]):
                real["weight"] = 0
    return table


def ipvsadm(args):
    path = os.path.join(HOST_DIR, "ipvs.json")
    table = load(path, {"services": []})
    checks = load(os.path.join(HOST_DIR, "keepalived.json"), None)  # a fake keepalived owns this table
    if args in (["-Sn"], ["-Ln", "--exact"]):
        if checks is not None:  # weights follow the checks at every read: nothing cached
            table = checked(table, checks)
        else:
            save_table(table)
        sys.stdout.write(render_save(table) if args == ["-Sn"] else render_list(table))
        return
    if checks is not None:
        die("ipvsadm (fake): keepalived owns this table: a raw edit would be undone at its next reload", 3)
    command, opts = args[0], options(args[1:])
    proto = next((flag for flag in PROTO_FLAGS if flag in opts), None)
    if command not in ("-e", "-a", "-d") or proto is None or "-r" not in opts:
        die(f"ipvsadm (fake): unsupported arguments: {' '.join(args)}", 2)
    service = next((s for s in table["services"]
                    if s["proto"] == PROTO_FLAGS[proto] and s["address"] == opts[proto]), None)
    if service is None:
        die("Service not defined")
    real = next((r for r in service["reals"] if r["address"] == opts["-r"]), None)
    method = next((METHOD_FLAGS[f] for f in METHOD_FLAGS if f in opts), "Route")
    if command == "-d":
        if real is None:
            die("No such destination")
        service["reals"].remove(real)
    elif command == "-a":
        if real is not None:
            die("Destination already exists")
        service["reals"].append({"address": opts["-r"], "method": method, "weight": int(opts.get("-w", 1)),
                                 "upper": int(opts.get("-x", 0)), "lower": int(opts.get("-y", 0)),
                                 "active": 0, "inactive": 0})
    else:
        if real is None:
            die("No such destination")
        # like the kernel: -e sets what it is told and resets the rest
        real.update(method=method, weight=int(opts.get("-w", 1)), upper=int(opts.get("-x", 0)),
                    lower=int(opts.get("-y", 0)))
    save(path, table)
    save_table(table)


if __name__ == "__main__":
    ipvsadm(sys.argv[1:])
