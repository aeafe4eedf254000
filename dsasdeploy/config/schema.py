"""Typed, frozen models of the project file and a stage.

Validation of shapes and types is pydantic's job (strict: YAML already types its
scalars, so "22" is not a port). Rules that span keys (unknown roles, duplicate
hosts, one primary per role, absolute paths) live in `rules.py`.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

BUILTIN_ROLES: dict[str, bool] = {
    # role -> receives a release?  Roles are data: a project may add its own or flip these.
    "web": True,
    "db": False,
    "file": False,
    "lb": False,
    "memcached": False,
    "pxe": False,
}

PHASES = ("prepare", "migrate", "publish", "finish", "rollback")


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class RoleSpec(Model):
    """What a role means: whether its hosts get releases."""

    release: bool = True


class Hook(Model):
    """A command run before or after a phase: on the controller or on hosts of some roles."""

    local: Optional[str] = None
    remote: Optional[str] = None
    roles: Optional[list[str]] = None
    once: bool = False  # remote only: run on one host (the primary of the first role listed)

    @model_validator(mode="after")
    def _one_kind(self) -> "Hook":
        if (self.local is None) == (self.remote is None):
            raise ValueError("a hook needs exactly one of 'local' or 'remote'")
        if self.local is not None and (self.roles is not None or self.once):
            raise ValueError("'roles' and 'once' apply to remote hooks only")
        return self


class Hooks(Model):
    """Hooks around each phase, run in the order listed."""

    before_prepare: list[Hook] = []
    after_prepare: list[Hook] = []
    before_migrate: list[Hook] = []
    after_migrate: list[Hook] = []
    before_publish: list[Hook] = []
    after_publish: list[Hook] = []
    before_finish: list[Hook] = []
    after_finish: list[Hook] = []
    before_rollback: list[Hook] = []
    after_rollback: list[Hook] = []

    def for_phase(self, when: str, phase: str) -> list[Hook]:
        return getattr(self, f"{when}_{phase}")


class SshSettings(Model):
    """How dsas reaches hosts. Only what the stage says counts: no personal ~/.ssh/config."""

    user: Optional[str] = None
    port: int = Field(default=22, ge=1, le=65535)
    identity_file: Optional[str] = None
    known_hosts: Optional[str] = None
    accept_new_host_keys: bool = False
    ssh_config: Optional[str] = None
    gateway: Optional[str] = None
    connect_timeout: float = Field(default=10, gt=0)
    command_timeout: float = Field(default=900, gt=0)
    allow_agent: bool = False


class HostSpec(Model):
    """One host of a stage."""

    name: str = Field(min_length=1)
    address: str = Field(min_length=1)
    port: Optional[int] = Field(default=None, ge=1, le=65535)
    user: Optional[str] = None
    roles: list[str] = Field(min_length=1)
    primary: Union[bool, list[str]] = False
    deploy_to: Optional[str] = None
    # written by `dsas add-server`: how the machine was installed
    mac: Optional[str] = None
    bmc: Optional[str] = None
    profile: Optional[str] = None

    @field_validator("primary", mode="before")
    @classmethod
    def _primary_shape(cls, value: Any) -> Any:
        if isinstance(value, bool) or (
            isinstance(value, list) and all(isinstance(item, str) for item in value)
        ):
            return value
        raise ValueError(f"expected true, false or a list of roles, got {value!r}")


class Migration(Model):
    """A command run once, on the primary host of `role`, after prepare and before any switch."""

    command: str
    role: str = "db"
    cwd: Optional[str] = None  # default: that host's deploy_to (or / if it has none)


class LbSettings(Model):
    """How hosts leave and rejoin the pool during a rolling release."""

    driver: Literal["lvs", "haproxy", "none"] = "none"
    real_port: int = Field(default=80, ge=1, le=65535)  # the port of each host in the pool
    drain_timeout: float = Field(default=30, gt=0)
    on_drain_timeout: Literal["fail", "proceed"] = "fail"
    # one director/balancer command (read, edit, read-back): they take milliseconds, so a director
    # that does not answer within this is silent; distinct from ssh.command_timeout (release steps)
    command_timeout: float = Field(default=8, gt=0, le=300)
    # real servers in the stage's pools that the stage does not list: their release and health
    # are unknown to dsas (a forgotten server, another stage's): refuse the rollout, or warn
    unknown_reals: Literal["refuse", "warn"] = "refuse"
    poll_interval: float = Field(default=0.5, gt=0)
    restore_steps: list[int] = Field(default=[100], min_length=1)  # weight ramp, % of original
    ramp_interval: float = Field(default=2, ge=0)
    # keepalived owns the pool on the directors: drain through its health check by
    # creating maintenance_file on the host (needs inhibit_on_failure), or allow raw edits.
    keepalived: Literal["refuse", "maintenance_file", "raw"] = "refuse"
    maintenance_file: Optional[str] = None
    haproxy_socket: str = "/run/haproxy/admin.sock"
    haproxy_backend: Optional[str] = None


class RolloutPolicy(Model):
    """Batches of a rolling release: canary first, then `batch` hosts at a time."""

    canary: int = Field(default=1, ge=0)
    batch: Union[int, str] = 1  # n or "n%"
    max_unavailable: Union[int, str] = 1  # n or "n%" of the pool


class HealthCheck(Model):
    """Gate per switched host, against the host itself (not the VIP)."""

    path: str = "/"
    port: Optional[int] = Field(default=None, ge=1, le=65535)  # default: lb.real_port
    scheme: Literal["http"] = "http"  # TLS health checks: not yet (check the plain port)
    host_header: Optional[str] = None
    expect_status: list[int] = [200]
    expect_body: Optional[str] = None
    expect_release: bool = True  # the response must name the new release id
    timeout: float = Field(default=3, gt=0)
    interval: float = Field(default=0.5, gt=0)
    rise: int = Field(default=3, ge=1)
    deadline: float = Field(default=60, gt=0)
    via: Literal["direct", "ssh"] = "direct"  # ssh: through the host's SSH connection
    # answers that fail the gate at once instead of being retried until the deadline: true means
    # every 5xx but 502/503/504 (a proxy waiting for the app, an app not ready yet); or a status list
    fail_fast: Union[bool, list[int]] = False


class WarmGate(Model):
    """After health, before rejoining: warm the caches and prove it in memcached stats."""

    urls: list[str] = []
    count: int = Field(default=20, ge=1)
    concurrency: int = Field(default=4, ge=1, le=64)
    memcached: list[str] = []  # host:port; default: every host with role memcached, :11211
    min_hit_ratio: Optional[float] = Field(default=None, ge=0, le=1)
    min_new_items: int = Field(default=0, ge=0)


class ServiceCheck(Model):
    """How to tell a service on top of DRBD is healthy: a TCP port on the service IP, or a command."""

    tcp: Optional[int] = Field(default=None, ge=1, le=65535)
    command: Optional[str] = None
    timeout: float = Field(default=10, gt=0)


class DrbdService(Model):
    name: str
    start: str
    stop: str
    check: Optional[ServiceCheck] = None


class ServiceIp(Model):
    address: str
    prefix: int = Field(default=24, ge=0, le=128)
    interface: str = "eth0"


class DrbdResource(Model):
    """A DRBD resource with a filesystem, services and a service IP on its primary."""

    name: str
    nodes: list[str] = Field(min_length=2, max_length=2)  # host names of the stage
    device: str = "/dev/drbd0"
    mount: str
    fstype: str = "ext4"
    mount_options: Optional[str] = None
    services: list[DrbdService] = []
    service_ip: Optional[ServiceIp] = None
    manager: Literal["none", "pacemaker", "drbd-reactor"] = "none"


class BmcSettings(Model):
    """How dsas reaches the BMCs: ipmitool over IPMI-over-LAN (lanplus)."""

    user: str = "admin"
    port: int = Field(default=623, ge=1, le=65535)
    cipher_suite: int = Field(default=3, ge=0, le=17)
    # the password: from this environment variable, else from this file; never an argument
    password_env: str = "IPMI_PASSWORD"
    password_file: Optional[str] = None


class InstallProfile(Model):
    """A hardware + OS profile: how a machine of this kind boots and installs."""

    installer: Literal["preseed", "kickstart", "lab"]
    firmware: Literal["bios", "uefi"] = "bios"
    kernel: str  # path under the TFTP root
    initrd: str
    kernel_args: str = ""
    template: Optional[str] = None  # answer file template in recipes/templates/ (default per installer)
    prefix: int = Field(default=24, ge=8, le=30)
    gateway: Optional[str] = None
    nameservers: list[str] = []
    domain: str = ""
    interface: str = "auto"  # the installed system's NIC (auto: the one that booted)
    disks: list[str] = []  # /dev/disk/by-id/... preferred: never wipe the wrong disk
    raid: Literal["none", "raid1", "raid10"] = "none"
    packages: list[str] = []
    mirror: str = ""  # package mirror/repository URL for the installer


class Provision(Model):
    """`dsas add-server`: the boot server (the host with role pxe), its paths, the BMCs, profiles."""

    boot_server: Optional[str] = None  # host name; default: the one host with role pxe
    tftp_root: str
    dhcp_hostsdir: str
    http_root: str  # answer files go to <http_root>/answers/
    http_url: str  # the same directory as the installer reaches it, e.g. http://10.0.0.5:8000
    callback_dir: str  # where the boot server's HTTP stores POST <http_url>/callback/<token>
    bmc: BmcSettings = BmcSettings()
    profiles: dict[str, InstallProfile] = Field(min_length=1)
    default_profile: Optional[str] = None
    install_timeout: float = Field(default=1800, gt=0)
    ssh_timeout: float = Field(default=300, gt=0)  # after the callback, until SSH answers
    shared_files: list[str] = []  # under shared/, copied from a peer of the same role


class Settings(Model):
    """The project keys: dsas.yaml, with a stage's overrides merged in."""

    application: str = Field(min_length=1)
    repo: str = Field(min_length=1)
    branch: str = "main"
    deploy_to: str
    keep_releases: int = Field(default=5, ge=1)
    linked_files: list[str] = []
    linked_dirs: list[str] = []
    roles: dict[str, RoleSpec] = {}
    restart: dict[str, str] = {}
    hooks: Hooks = Hooks()
    ssh: SshSettings = SshSettings()
    parallelism: int = Field(default=10, ge=1, le=500)
    migrate: Optional[Migration] = None
    lb: Optional[LbSettings] = None  # set: deploys roll through the load balancer in batches
    rollout: RolloutPolicy = RolloutPolicy()
    health: Optional[HealthCheck] = None
    warm: Optional[WarmGate] = None
    drbd: list[DrbdResource] = []
    provision: Optional[Provision] = None


class StageSpec(Settings):
    """A stage file after merging: the project keys plus the hosts."""

    hosts: list[HostSpec] = Field(min_length=1)


PROJECT_KEYS = tuple(Settings.model_fields)
STAGE_KEYS = tuple(StageSpec.model_fields)
