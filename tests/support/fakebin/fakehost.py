"""The fake system tools of a recording-backend host (dsasdeploy/execute/recording.py).

Run as `fakehost.py TOOL ARGS...` by the sh wrappers beside it (one per tool name). State lives
in files: $FAKE_HOST_DIR/ipvs.json (a director's IPVS table, its listings rendered beside it:
ipvs.save, ipvs.list; whoever else writes the table removes those), $FAKE_HOST_DIR/mounts ("DEV MNT"
lines), $FAKE_HOST_DIR/addrs ("DEV ADDR/PREFIX" lines), $FAKE_WORLD/drbd/<resource>.json (a
DRBD pair as both nodes see it). Stdlib only: it runs with `python -I -S`.
"""

import json
import os
import sys

HOST = os.environ.get("FAKE_HOST", "?")
HOST_DIR = os.environ.get("FAKE_HOST_DIR", ".")
WORLD = os.environ.get("FAKE_WORLD", ".")
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


def lines_of(path):
    try:
        with open(path) as source:
            return [line.split() for line in source if line.strip()]
    except FileNotFoundError:
        return []


def write_lines(path, rows):
    with open(path + ".tmp", "w") as out:
        out.writelines(" ".join(row) + "\n" for row in rows)
    os.replace(path + ".tmp", path)


# ---- ipvsadm ----------------------------------------------------------------------------


def options(words):
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


def ipvsadm(args):
    path = os.path.join(HOST_DIR, "ipvs.json")
    table = load(path, {"services": []})
    if args in (["-Sn"], ["-Ln", "--exact"]):
        save_table(table)
        sys.stdout.write(render_save(table) if args == ["-Sn"] else render_list(table))
        return
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


# ---- DRBD (8.4 words) and what sits on it ----------------------------------------------


def drbd_path(resource):
    return os.path.join(WORLD, "drbd", f"{resource}.json")


def drbd_state(resource):
    state = load(drbd_path(resource), None)
    if state is None:
        die(f"'{resource}' not defined in your config (for this host).", 10)
    return state


def peer_of(state):
    return next(name for name in state["nodes"] if name != HOST)


def drbdadm(args):
    if len(args) != 2:
        die(f"drbdadm (fake): unsupported arguments: {' '.join(args)}", 20)
    command, resource = args
    state = drbd_state(resource)
    me, peer = state["nodes"][HOST], state["nodes"][peer_of(state)]
    if command == "role":
        print(f"{me['role']}/{peer['role'] if state['cstate'] == 'Connected' else 'Unknown'}")
    elif command == "cstate":
        print(state["cstate"])
    elif command == "dstate":
        print(f"{me['disk']}/{peer['disk'] if state['cstate'] == 'Connected' else 'DUnknown'}")
    elif command == "primary":
        if me["disk"] != "UpToDate":
            die(f"{resource}: State change failed: (-2) Need access to UpToDate data", 17)
        if peer["role"] == "Primary" and state["cstate"] == "Connected":
            die(f"{resource}: State change failed: (-1) Multiple primaries not allowed by config", 11)
        me["role"] = "Primary"
        save(drbd_path(resource), state)
    elif command == "secondary":
        if any(row[0] == state["device"] for row in lines_of(os.path.join(HOST_DIR, "mounts"))):
            die(f"{resource}: State change failed: (-12) Device is held open by someone", 11)
        me["role"] = "Secondary"
        save(drbd_path(resource), state)
    else:
        die(f"drbdadm (fake): unsupported command {command}", 20)


def resource_of_device(device):
    directory = os.path.join(WORLD, "drbd")
    for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
        state = load(os.path.join(directory, name), {})
        if state.get("device") == device:
            return state
    return None


def mount(args):
    words = [w for i, w in enumerate(args) if not w.startswith("-") and (i == 0 or args[i - 1] not in ("-t", "-o"))]
    if len(words) != 2:
        die(f"mount (fake): unsupported arguments: {' '.join(args)}", 1)
    device, target = words
    state = resource_of_device(device)
    if state is None or state["nodes"][HOST]["role"] != "Primary":
        die(f"mount: {target}: wrong medium type (is {device} Primary here?)", 32)
    path = os.path.join(HOST_DIR, "mounts")
    rows = lines_of(path)
    if not any(row[1] == target for row in rows):
        write_lines(path, rows + [[device, target]])


def umount(args):
    path = os.path.join(HOST_DIR, "mounts")
    rows = lines_of(path)
    kept = [row for row in rows if row[1] != args[-1]]
    if len(kept) == len(rows):
        die(f"umount: {args[-1]}: not mounted.", 32)
    write_lines(path, kept)


def mountpoint(args):
    target = args[-1]
    sys.exit(0 if any(row[1] == target for row in lines_of(os.path.join(HOST_DIR, "mounts"))) else 32)


def ip(args):
    path = os.path.join(HOST_DIR, "addrs")
    rows = lines_of(path)
    if args[:3] == ["-o", "addr", "show"]:
        device = args[4] if len(args) > 4 else None
        for index, (dev, cidr) in enumerate(rows, start=2):
            if device in (None, dev):
                print(f"{index}: {dev}    inet {cidr} scope global {dev}\\       valid_lft forever preferred_lft forever")
        return
    if args[:2] == ["addr", "add"] and len(args) == 5:
        if [args[4], args[2]] in rows:
            die("RTNETLINK answers: File exists", 2)
        write_lines(path, rows + [[args[4], args[2]]])
        return
    if args[:2] == ["addr", "del"] and len(args) == 5:
        if [args[4], args[2]] not in rows:
            die("RTNETLINK answers: Cannot assign requested address", 2)
        write_lines(path, [row for row in rows if row != [args[4], args[2]]])
        return
    die(f"ip (fake): unsupported arguments: {' '.join(args)}", 255)


TOOLS = {"ipvsadm": ipvsadm, "drbdadm": drbdadm, "mount": mount, "umount": umount, "mountpoint": mountpoint,
         "ip": ip}

if __name__ == "__main__":
    TOOLS[sys.argv[1]](sys.argv[2:])
