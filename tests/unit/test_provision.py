"""add-server, the pure parts: request checks, file names, templates, callback, IPMI parsing,
boot-server scripts (run for real with sh on local files), the stage-file edit."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from dsasdeploy.commands import ipmi, pxe
from dsasdeploy.commands.base import parse_markers, script
from dsasdeploy.commands.lb import lvs
from dsasdeploy.config.load import load_stage
from dsasdeploy.config.schema import BmcSettings
from dsasdeploy.config.stagefile import with_host
from dsasdeploy.errors import ConfigError, RemoteError
from dsasdeploy.execute.ipmi import Bmc
from dsasdeploy.plan import provision as plan

ROOT = Path(__file__).resolve().parents[2]
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHv0dsastestkeyXXXXXXXXXXXXXXXXXXXXXXXXXXXX dsas@ci"
TOKEN = "tok_0123456789abcdefABCDEF"

PROJECT = """\
application: shop
repo: ./app
deploy_to: /srv/shop
provision:
  tftp_root: /srv/tftp
  dhcp_hostsdir: /etc/dnsmasq.hosts.d
  http_root: /srv/boot-http
  http_url: http://10.0.2.5:8000
  callback_dir: /srv/boot-http-callbacks
  default_profile: debian12-raid10
  profiles:
    debian12-raid10:
      installer: preseed
      kernel: debian/linux
      initrd: debian/initrd.gz
      kernel_args: console=ttyS0,115200
      gateway: 10.0.2.1
      nameservers: [10.0.2.2, 10.0.2.3]
      domain: example.net
      disks: [/dev/disk/by-id/ata-A, /dev/disk/by-id/ata-B, /dev/disk/by-id/ata-C, /dev/disk/by-id/ata-D]
      raid: raid10
      packages: [rsync, chrony]
    rocky9-uefi:
      installer: kickstart
      firmware: uefi
      kernel: rocky/vmlinuz
      initrd: rocky/initrd.img
      gateway: 10.0.2.1
      nameservers: [10.0.2.2]
      disks: [sda, sdb, sdc, sdd]
      raid: raid10
      packages: [rsync]
    lab:
      installer: lab
      kernel: vmlinuz
      initrd: initrd.img
      gateway: 10.0.2.1
"""

STAGE = """\
# production: the shop's web tier
hosts:
  # web tier
  - name: web1
    address: 10.0.2.11
    roles: [web]   # the first one
    mac: "52:54:00:00:00:11"
  - name: web2
    address: 10.0.2.12
    roles: [web]
  # the boot server
  - name: boot1
    address: 10.0.2.5
    roles: [pxe]
"""


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    (tmp_path / "dsas.yaml").write_text(PROJECT)
    (tmp_path / "stages").mkdir()
    (tmp_path / "stages" / "production.yaml").write_text(STAGE)
    shutil.copytree(ROOT / "recipes" / "templates", tmp_path / "recipes" / "templates")
    return tmp_path


def request(project: Path, **overrides) -> plan.AddRequest:
    stage = load_stage("production", project)
    args = {"name": "web3", "mac": "52-54-00-AB-CD-03", "ip": "10.0.2.13", "roles": ["web"], "profile": None,
            "bmc": "10.0.9.13"}
    args.update(overrides)
    req, problems = plan.build_request(stage, **args)
    assert problems == []
    return req


def render(project: Path, **overrides) -> plan.BootFiles:
    stage = load_stage("production", project)
    return plan.render_boot_files(project, request(project, **overrides), stage.settings.provision, TOKEN, KEY)


# ---- request -----------------------------------------------------------------------------
@pytest.mark.parametrize("text,expected", [
    ("52:54:00:AB:cd:01", "52:54:00:ab:cd:01"), ("52-54-00-ab-cd-01", "52:54:00:ab:cd:01"),
    ("5254.00ab.cd01", "52:54:00:ab:cd:01"), ("525400abcd01", "52:54:00:ab:cd:01")])
def test_mac_forms_normalize(text, expected):
    assert plan.normalize_mac(text) == expected


@pytest.mark.parametrize("text", ["52:54:00:ab:cd", "52:54:00:ab:cd:0g", "01:00:5e:00:00:01", "00:00:00:00:00:00",
                                  "52:54:00:ab:cd:01:02", "52:5400:ab:cd:01", ""])
def test_bad_macs_refused(text):
    with pytest.raises(ValueError):
        plan.normalize_mac(text)


def test_pxe_file_names():
    assert plan.pxelinux_name("52:54:00:AB:CD:01") == "01-52-54-00-ab-cd-01"
    assert plan.grub_name("52:54:00:ab:cd:01") == "grub.cfg-01-52-54-00-ab-cd-01"


def test_duplicates_and_bad_values_refused_all_at_once(project):
    stage = load_stage("production", project)
    req, problems = plan.build_request(stage, "web1", "52:54:00:00:00:11", "10.0.2.12", ["web", "wbe"],
                                       "nope", "10.0.9.1:99999")
    assert req is None
    text = "\n".join(problems)
    assert "already has a host named web1" in text
    assert "52:54:00:00:00:11: already belongs to web1" in text
    assert "10.0.2.12: already used by web2" in text
    assert "--role wbe: unknown role" in text
    assert "--profile nope: no such profile" in text
    assert "bad port" in text


@pytest.mark.parametrize("overrides,needle", [
    ({"name": "Web_3"}, "a host name is"), ({"ip": "10.0.3.13"}, "outside the network 10.0.2.0/24"),
    ({"ip": "10.0.2"}, "not an IPv4 address"), ({"mac": "01:00:5e:00:00:01"}, "multicast"),
    ({"bmc": None}, "--bmc is required")])
def test_single_problems_named(project, overrides, needle):
    stage = load_stage("production", project)
    args = {"name": "web3", "mac": "52:54:00:ab:cd:03", "ip": "10.0.2.13", "roles": ["web"], "profile": None,
            "bmc": "10.0.9.13"}
    args.update(overrides)
    _, problems = plan.build_request(stage, **args)
    assert any(needle in p for p in problems), problems


def test_profile_rules_in_config(project):
    text = (project / "dsas.yaml").read_text().replace("default_profile: debian12-raid10", "default_profile: debain")
    text = text.replace("disks: [sda, sdb, sdc, sdd]", "disks: [sda, sdb, sdc]")
    (project / "dsas.yaml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_stage("production", project)
    lines = info.value.problems
    assert any(p.startswith("dsas.yaml:10: provision.default_profile: no profile 'debain'") for p in lines), lines
    assert [p for p in lines if "raid10 needs" in p] == [
        "dsas.yaml:30: provision.profiles.rocky9-uefi.disks: raid10 needs at least 4 disks, got 3"], lines


# ---- templates ---------------------------------------------------------------------------
def test_preseed_static_ip_raid10_key_callback_and_lint(project, tmp_path):
    files = render(project)
    text = files.answer.content
    assert files.answer.path == "/srv/boot-http/answers/52-54-00-ab-cd-03.cfg"
    assert files.answer_url == "http://10.0.2.5:8000/answers/52-54-00-ab-cd-03.cfg"
    assert "d-i netcfg/get_ipaddress string 10.0.2.13" in text
    assert "d-i netcfg/get_netmask string 255.255.255.0" in text
    assert "d-i netcfg/get_nameservers string 10.0.2.2 10.0.2.3" in text
    assert "d-i partman-auto/method string raid" in text
    assert ("10 4 0 ext4 / /dev/disk/by-id/ata-A-part2#/dev/disk/by-id/ata-B-part2#/dev/disk/by-id/ata-C-part2#"
            "/dev/disk/by-id/ata-D-part2 .") in text
    assert "1 4 0 ext4 /boot /dev/disk/by-id/ata-A-part1#" in text
    assert "rsync chrony" in text
    assert f"echo '{KEY}' > /target/root/.ssh/authorized_keys" in text
    assert f"http://10.0.2.5:8000/callback/{TOKEN}" in text
    path = tmp_path / "preseed.cfg"
    path.write_text(text)
    if shutil.which("debconf-set-selections"):
        check = subprocess.run(["debconf-set-selections", "-c", str(path)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        assert check.stderr == ""


def test_preseed_late_command_is_valid_shell(project):
    text = render(project).answer.content
    logical = text.replace("\\\n", " ")
    late = next(line for line in logical.splitlines() if line.startswith("d-i preseed/late_command string"))
    command = late.split("string", 1)[1]
    check = subprocess.run(["sh", "-n", "-c", command], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_kickstart_parses_with_pykickstart(project):
    pykickstart = pytest.importorskip("pykickstart")
    from pykickstart.parser import KickstartParser
    from pykickstart.version import RHEL9, makeVersion

    files = render(project, profile="rocky9-uefi")
    text = files.answer.content
    handler = makeVersion(RHEL9)
    KickstartParser(handler).readKickstartFromString(text)
    assert handler.network.network[0].ip == "10.0.2.13"
    assert handler.network.network[0].bootProto == "static"
    assert handler.network.network[0].device == "52:54:00:ab:cd:03"
    raids = {r.mountpoint: r for r in handler.raid.raidList}
    assert raids["/"].level == "RAID10" or raids["/"].level == "10"
    assert raids["/"].members == ["raid.21", "raid.22", "raid.23", "raid.24"]
    assert raids["/boot"].members == ["raid.11", "raid.12", "raid.13", "raid.14"]
    assert handler.sshkey.sshUserList[0].key == KEY
    assert any(TOKEN in s.script for s in handler.scripts)
    assert pykickstart is not None


def test_uefi_profile_gets_a_grub_file_bios_a_pxelinux_file(project):
    grub = render(project, profile="rocky9-uefi").boot_config
    assert grub.path == "/srv/tftp/grub/grub.cfg-01-52-54-00-ab-cd-03"
    assert "linuxefi rocky/vmlinuz inst.ks=http://10.0.2.5:8000/answers/52-54-00-ab-cd-03.ks" in grub.content
    assert "BOOTIF=01-52-54-00-ab-cd-03" in grub.content
    bios = render(project).boot_config
    assert bios.path == "/srv/tftp/pxelinux.cfg/01-52-54-00-ab-cd-03"
    assert "KERNEL debian/linux" in bios.content and "IPAPPEND 2" in bios.content
    assert "url=http://10.0.2.5:8000/answers/52-54-00-ab-cd-03.cfg" in bios.content
    assert "netcfg/get_ipaddress=10.0.2.13" in bios.content
    assert "console=ttyS0,115200" in bios.content


def test_lab_answer_file_is_sourceable_shell_even_with_quotes(project, tmp_path):
    stage = load_stage("production", project)
    tricky = KEY + " it's $(rm -rf /) `x`"
    files = plan.render_boot_files(project, request(project, profile="lab"), stage.settings.provision, TOKEN, tricky)
    path = tmp_path / "answers.sh"
    path.write_text(files.answer.content)
    out = subprocess.run(["sh", "-c", f". {path}; printf '%s|%s|%s|%s' \"$HOSTNAME\" \"$IP\" \"$SSH_AUTHORIZED_KEY\" "
                                      f"\"$CALLBACK_URL\""], capture_output=True, text=True, check=True).stdout
    assert out == f"web3|10.0.2.13|{tricky}|http://10.0.2.5:8000/callback/{TOKEN}"
    assert "dsas.answers=http://10.0.2.5:8000/answers/52-54-00-ab-cd-03.sh" in files.boot_config.content
    assert files.dhcp_host.content == "52:54:00:ab:cd:03,10.0.2.13,web3,infinite\n"
    assert files.dhcp_host.path == "/etc/dnsmasq.hosts.d/dsas-web3"


def test_missing_template_value_is_an_error_not_empty(project):
    (project / "recipes" / "templates" / "lab-installer.sh.j2").write_text("X={{ host.no_such_key }}\n")
    stage = load_stage("production", project)
    import jinja2
    with pytest.raises(jinja2.UndefinedError):
        plan.render_boot_files(project, request(project, profile="lab"), stage.settings.provision, TOKEN, KEY)


def test_bad_token_refused(project):
    stage = load_stage("production", project)
    with pytest.raises(ValueError):
        plan.render_boot_files(project, request(project), stage.settings.provision, "short", KEY)


# ---- callback ------------------------------------------------------------------------------
def callback_text(**over) -> str:
    fields = {"token": TOKEN, "mac": "52:54:00:ab:cd:03", "hostname": "web3", "ip": "10.0.2.13",
              "hostkey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBx3J root@web3"}
    fields.update(over)
    return "".join(f"{k}={v}\n" for k, v in fields.items() if v is not None)


def test_callback_accepted_only_with_token_and_mac(project):
    req = request(project)
    good = plan.parse_callback(callback_text())
    assert good.hostkey == "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBx3J"
    assert plan.check_callback(good, req, TOKEN) == []
    assert "token does not match" in plan.check_callback(plan.parse_callback(callback_text(token="x" * 20)), req, TOKEN)[0]
    assert "MAC 52:54:00:ab:cd:04" in plan.check_callback(
        plan.parse_callback(callback_text(mac="52:54:00:ab:cd:04")), req, TOKEN)[0]
    with pytest.raises(ValueError, match="hostkey"):
        plan.parse_callback(callback_text(hostkey=None))
    with pytest.raises(ValueError, match="not an SSH public key"):
        plan.parse_callback(callback_text(hostkey="ssh-ed25519 $(reboot)"))


# ---- IPMI ----------------------------------------------------------------------------------
SIM_BOOTDEV_FAILURE = ("Set Chassis Boot Parameter 4 failed: Invalid data field in request\n"
                       "Set Chassis Boot Parameter 5 failed: Invalid data field in request\n")


def test_ipmi_parsers():
    assert ipmi.parse_power("Chassis Power is on\n") == "on"
    with pytest.raises(ValueError):
        ipmi.parse_power("Error: Unable to establish IPMI v2 / RMCP+ session")
    assert ipmi.bootdev_accepted("Set Boot Device to pxe\n", "pxe")
    assert not ipmi.bootdev_accepted(SIM_BOOTDEV_FAILURE, "pxe")
    assert ipmi.parse_boot_flags(" - Boot Device Selector : Force PXE\n") == "pxe"
    assert ipmi.parse_boot_flags(" - Boot Device Selector : Force Boot from default Hard-Drive\n") == "disk"
    assert ipmi.parse_boot_flags(" - Boot Device Selector : No override\n") == "none"
    assert ipmi.bootdev_argv("pxe", True) == ["chassis", "bootdev", "pxe", "options=efiboot"]
    base = ipmi.base_argv("10.0.9.1", 623, "admin", 3)
    assert "-E" in base and "-P" not in base


@pytest.fixture()
def fake_ipmitool(tmp_path, monkeypatch):
    """An `ipmitool` on PATH that answers like ipmitool 1.8.19 against ipmi_sim without a
    chassis_control program (PXE-LAB §4.1): bootdev 'fails' but exits 0. It also records
    its argv and whether it saw the password in its environment."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "ipmitool"
    tool.write_text(f"""#!/bin/sh
echo "$*" >> {tmp_path}/argv.log
[ "$IPMI_PASSWORD" = s3cret ] && echo env-ok >> {tmp_path}/argv.log
case "$*" in
  *"chassis bootdev"*) printf '{SIM_BOOTDEV_FAILURE}'; exit 0 ;;
  *"bootparam get 5"*) echo 'Get Chassis Boot Parameter 5 failed: Invalid data field in request' >&2; exit 1 ;;
  *"power status"*) echo 'Chassis Power is off' ;;
esac
""")
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return tmp_path / "argv.log"


def test_bootdev_not_accepted_is_refused_even_with_exit_0(fake_ipmitool):
    bmc = Bmc("127.0.0.1", 9623, BmcSettings(), "s3cret")
    assert bmc.power_status() == "off"
    with pytest.raises(RemoteError, match="did not accept boot device 'pxe'"):
        bmc.set_boot_device("pxe", efiboot=False)
    log = fake_ipmitool.read_text()
    assert "s3cret" not in log.replace("env-ok", "")  # never on the command line
    assert log.count("env-ok") == 2


# ---- boot server scripts, run for real by sh on local files ------------------------------
def run_sh(lines: list[str]) -> list:
    done = subprocess.run(["sh", "-c", script(lines)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return parse_markers(done.stdout)


def test_install_files_atomically_and_read_back(tmp_path):
    files = [(str(tmp_path / "tftp" / "pxelinux.cfg" / "01-52-54-00-ab-cd-03"), "DEFAULT install\n'quote' $x\n", "0644"),
             (str(tmp_path / "http" / "answers" / "a.sh"), "KEY='a b'\n", "0640")]
    markers = run_sh(pxe.install_files_script(files))
    assert pxe.verify_sums(markers, files) == []
    assert Path(files[0][0]).read_text() == files[0][1]
    assert oct(Path(files[1][0]).stat().st_mode & 0o777) == "0o640"
    assert not list((tmp_path / "tftp" / "pxelinux.cfg").glob(".*dsas-tmp"))
    assert pxe.verify_sums(markers, [(files[0][0], "something else", "0644")]) == [files[0][0]]
    gone = run_sh(pxe.remove_files_script([files[0][0], str(tmp_path / "never-there")]))
    assert pxe.gone(gone, [files[0][0], str(tmp_path / "never-there")]) == []
    assert not Path(files[0][0]).exists()


def test_probe_finds_dhcp_conflicts_and_existing_files(tmp_path):
    hostsdir = tmp_path / "hosts.d"
    hostsdir.mkdir()
    (hostsdir / "other").write_text("# a comment\n52:54:00:ab:cd:03,10.0.2.99,oldname\n")
    (hostsdir / "ipclash").write_text("52:54:00:00:00:99,10.0.2.13,someone\n")
    boot = tmp_path / "pxelinux.cfg" / "01-52-54-00-ab-cd-03"
    boot.parent.mkdir()
    boot.write_text("x")
    state = pxe.parse_probe(run_sh(pxe.probe_script([("tftp_root", str(tmp_path)), ("http_root", str(tmp_path / "no"))],
                                                    [str(tmp_path / "vmlinuz")], str(hostsdir), [str(boot)])))
    assert state.missing == (f"http_root {tmp_path / 'no'}", f"file {tmp_path / 'vmlinuz'}")
    assert state.existing == (str(boot),)
    conflicts = pxe.dhcp_conflicts(state.dhcp_entries, "52:54:00:ab:cd:03", "10.0.2.13", str(hostsdir / "dsas-web3"))
    assert len(conflicts) == 2
    assert any("MAC 52:54:00:ab:cd:03" in c and "oldname" in c for c in conflicts)
    assert any("IP 10.0.2.13" in c and "someone" in c for c in conflicts)


def test_callback_read_back_through_base64(tmp_path):
    path = tmp_path / "cb"
    assert pxe.parse_callback_marker(run_sh(pxe.read_callback_script(str(path)))) is None
    path.write_text(callback_text() + "DSAS fake marker\n")
    assert pxe.parse_callback_marker(run_sh(pxe.read_callback_script(str(path)))) == path.read_text()


# ---- stage file and LVS ------------------------------------------------------------------
def test_stage_file_gains_host_after_its_role_with_comments(project):
    path = project / "stages" / "production.yaml"
    entry = {"name": "web3", "address": "10.0.2.13", "roles": ["web"], "mac": "52:54:00:ab:cd:03",
             "bmc": "10.0.9.13:623", "profile": "debian12-raid10"}
    text = with_host(path.read_text(), entry, "stages/production.yaml")
    for comment in ("# production: the shop's web tier", "# web tier", "# the first one", "# the boot server"):
        assert comment in text
    assert text.index("name: web3") < text.index("name: boot1")
    assert text.index("name: web2") < text.index("name: web3")
    hosts = yaml.safe_load(text)["hosts"]
    assert hosts[2] == entry  # the MAC stays a string (quoted: YAML 1.1 reads it as base 60)
    path.write_text(text)
    stage = load_stage("production", project)
    assert [h.name for h in stage.hosts] == ["web1", "web2", "web3", "boot1"]
    assert stage.hosts[2].mac == "52:54:00:ab:cd:03"
    with pytest.raises(ConfigError, match="already has a host named web3"):
        with_host(text, entry, "stages/production.yaml")


def test_lvs_membership_argv():
    assert lvs.add_real_argv("TCP 10.77.1.10:80", "10.77.2.200:8080", "Masq", 0) == [
        "ipvsadm", "-a", "-t", "10.77.1.10:80", "-r", "10.77.2.200:8080", "-m", "-w", "0"]
    assert lvs.delete_real_argv("TCP 10.77.1.10:80", "10.77.2.200:8080") == [
        "ipvsadm", "-d", "-t", "10.77.1.10:80", "-r", "10.77.2.200:8080"]
    assert plan.pick_weight([1, 1, 5]) == 1 and plan.pick_weight([0, 0]) == 1 and plan.pick_weight([3, 5]) == 5


# ---- bootstrap script, run for real by sh in a temporary deploy_to -------------------------
def test_bootstrap_script_makes_the_layout_and_shared_files(tmp_path):
    import socket

    from dsasdeploy.commands.bootstrap import bootstrap_script

    me = socket.gethostname().split(".")[0]
    deploy_to = tmp_path / "srv" / "app"
    lines = bootstrap_script(me, "root", str(deploy_to), [str(deploy_to / "releases"), str(deploy_to / "shared" / "log")],
                             {str(deploy_to / "shared" / "memcached.addr"): ("10.0.0.5:11211\n", "640")})
    markers = run_sh(lines)
    assert any(m.key == "hostname" for m in markers)
    assert (deploy_to / "releases").is_dir() and (deploy_to / "shared" / "log").is_dir()
    assert (deploy_to / "shared" / "memcached.addr").read_text() == "10.0.0.5:11211\n"
    assert oct((deploy_to / "shared" / "memcached.addr").stat().st_mode & 0o777) == "0o640"  # the peer's mode
    wrong = subprocess.run(["sh", "-c", script(bootstrap_script("not-" + me, "root", str(deploy_to), [], {}))],
                           capture_output=True, text=True)
    assert wrong.returncode == 3 and f"expected not-{me}" in wrong.stderr
    deploy_user = "\n".join(bootstrap_script(me, "deploy", "/srv/app", [], {}))
    assert "useradd -m -s /bin/sh deploy" in deploy_user and "chown -R deploy /srv/app" in deploy_user


def test_pin_host_key_replaces_plain_and_hashed_entries_keeps_the_rest(tmp_path):
    import paramiko

    from dsasdeploy.execute.hostkeys import PinnedHostKeys, pin_host_key

    keys = []
    for i in range(3):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / f"k{i}")], check=True)
        keys.append((tmp_path / f"k{i}.pub").read_text().split()[:2])
    old, new, other = keys
    line = lambda host, k: f"{host} {k[0]} {k[1]}\n"  # noqa: E731
    hashed = paramiko.HostKeys.hash_host("10.0.2.13")
    known = tmp_path / "known_hosts"
    known.write_text(line("10.0.2.11", other) + "\n" + line("10.0.2.13", old) + line(hashed, old))
    policy = PinnedHostKeys.from_file(known, "ssh.known_hosts")
    replaced = pin_host_key(policy, "10.0.2.13", f"{new[0]} {new[1]}")
    assert replaced and replaced.startswith("SHA256:")
    text = known.read_text()
    assert old[1] not in text and text.count(new[1]) == 1 and other[1] in text
    assert policy.known("10.0.2.13")["ssh-ed25519"].get_base64() == new[1]
    assert PinnedHostKeys.from_file(known, "ssh.known_hosts").known("10.0.2.13")["ssh-ed25519"].get_base64() == new[1]
