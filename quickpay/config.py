"""State directory layout, secrets, and the topology recorded at first start.

Secret files are created with mode 0600 in the same system call that creates them
(`os.open(O_CREAT | O_EXCL, 0o600)`), so no other user can ever open them, whatever the
umask. Directories that hold unix sockets are private to their owner (0700) and never
have a name another user could create first: they live under the state directory when
the socket path fits the unix limit, else in a fresh `mkdtemp()` directory whose path
is recorded in the state directory. An existing one is used only if it is a real
directory owned by the expected user and writable by nobody else.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path

__all__ = [
    "DEFAULT_STATE_DIR",
    "ENV_CLUSTER_SECRET",
    "SOCKET_PATH_MAX",
    "StateDir",
    "ensure_private_dir",
    "private_socket_dir",
    "read_private_file",
    "write_private_file",
]

DEFAULT_STATE_DIR = Path("./.quickpay")
# sun_path holds 108 bytes including the terminating NUL.
SOCKET_PATH_MAX = 107
ENV_CLUSTER_SECRET = "QUICKPAY_CLUSTER_SECRET"
# The longest shard socket name (up to 64 shards).
_LONGEST_SHARD_SOCKET = "shard-63.sock"


def write_private_file(path: Path | str, content: str, *, replace: bool = False) -> None:
    """Create `path` with mode 0600 and write `content`.

    Without `replace`, refuses (FileExistsError) if anything exists at `path`, symlinks
    included. With `replace`, writes a new private file next to it and renames it over
    the old one, so the old file's mode never applies to the new content.
    """
    path = Path(path)
    if replace:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mode 0600
        try:
            _write_all(fd, content)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        _write_all(fd, content)
    except BaseException:
        os.unlink(path)
        raise


def _write_all(fd: int, content: str) -> None:
    try:
        # The umask can only have removed bits from 0600; make it exactly 0600.
        os.fchmod(fd, 0o600)
        data = content.encode()
        while data:
            data = data[os.write(fd, data) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def read_private_file(path: Path | str) -> str:
    """The content of a secret file, refused if other users may read or write it."""
    path = Path(path)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd) as handle:
        info = os.fstat(handle.fileno())
        if info.st_mode & 0o077:
            raise SystemExit(
                f"{path} is readable or writable by other users (mode "
                f"{stat.S_IMODE(info.st_mode):04o}); run `chmod 600 {path}` and check who read it"
            )
        return handle.read()


def ensure_private_dir(path: Path, owner: tuple[int, int] | None = None) -> Path:
    """Create `path` as a 0700 directory owned by `owner` (uid, gid; default: this process),
    or check an existing one: a real directory (not a symlink), owned by that user, and
    writable by nobody else. A safe existing one is tightened to 0700."""
    uid, gid = owner if owner is not None else (os.geteuid(), os.getegid())
    try:
        os.mkdir(path, 0o700)
        if uid != os.geteuid():
            os.chown(path, uid, gid)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise SystemExit(f"refusing to use {path}: it is not a directory (a symlink or a file put there?)")
    if info.st_uid != uid:
        raise SystemExit(f"refusing to use {path}: it belongs to uid {info.st_uid}, not {uid}; remove it")
    if info.st_mode & 0o022:
        raise SystemExit(
            f"refusing to use {path}: other users can write to it (mode {stat.S_IMODE(info.st_mode):04o}); remove it"
        )
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(path, 0o700)
    return path


def private_socket_dir(
    state_path: Path, name: str, longest_entry: str, owner: tuple[int, int] | None = None, *, create: bool = True
) -> Path:
    """A private (0700) directory for unix sockets belonging to this state directory.

    STATE/name when STATE/name/longest_entry fits the unix socket path limit; otherwise a
    `mkdtemp()` directory (random name, so nobody can create it first), recorded in
    STATE/name.path and checked again on every later use.
    """
    preferred = state_path / name
    if len(os.fsencode(preferred / longest_entry)) <= SOCKET_PATH_MAX:
        return ensure_private_dir(preferred, owner) if create else preferred
    record = state_path / f"{name}.path"
    if record.exists():
        recorded = Path(read_private_file(record).strip())
        if not create:
            return recorded
        if os.path.lexists(recorded):
            return ensure_private_dir(recorded, owner)
    elif not create:
        return preferred
    made = Path(tempfile.mkdtemp(prefix=f"qp-{name}-"))
    if owner is not None and owner[0] != os.geteuid():
        os.chown(made, *owner)
    if len(os.fsencode(made / longest_entry)) > SOCKET_PATH_MAX:
        os.rmdir(made)
        raise SystemExit(f"no directory short enough for unix sockets (TMPDIR={tempfile.gettempdir()})")
    write_private_file(record, str(made), replace=True)
    return ensure_private_dir(made, owner)


class StateDir:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path).resolve()

    def ensure(self) -> StateDir:
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self

    def _secret(self, name: str, env: str) -> str:
        if os.environ.get(env):
            return os.environ[env]
        file = self.path / name
        if not file.exists():
            from quickpay.secret_policy import generate

            try:
                write_private_file(file, generate())
            except FileExistsError:
                pass  # another process made it first: use theirs
        return read_private_file(file).strip()

    @property
    def token_key(self) -> bytes:
        return self._secret("token.key", "QUICKPAY_TOKEN_KEY").encode()

    @property
    def admin_token(self) -> str:
        return self._secret("admin.token", "QUICKPAY_ADMIN_TOKEN")

    @property
    def cluster_secret(self) -> str:
        """Authenticates both ends of every shard-protocol connection (ledger.handshake)."""
        return self._secret("cluster.secret", ENV_CLUSTER_SECRET)

    @property
    def run_dir(self) -> Path:
        """Where the shard workers' unix sockets live: private to this user (0700)."""
        return private_socket_dir(self.path, "run", _LONGEST_SHARD_SOCKET)

    def shard_socket(self, shard: int) -> str:
        return f"unix:{self.run_dir / f'shard-{shard}.sock'}"

    def check_topology(self, shards: int) -> None:
        """Refuse to start with a different shard count than the data was made with."""
        file = self.path / "topology.json"
        if file.exists():
            recorded = json.loads(file.read_text())["shards"]
            if recorded != shards:
                raise SystemExit(
                    f"{self.path} was created with --shards {recorded}; start with --shards {recorded} "
                    "or use a new --state-dir (resharding is not supported)"
                )
        else:
            file.write_text(json.dumps({"shards": shards}))
