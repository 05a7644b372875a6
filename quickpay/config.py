"""State directory layout, secrets, and the topology recorded at first start."""
from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path

__all__ = ["StateDir", "DEFAULT_STATE_DIR"]

DEFAULT_STATE_DIR = Path("./.quickpay")


class StateDir:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path).resolve()

    def ensure(self) -> "StateDir":
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    def _secret(self, name: str, env: str, size: int) -> str:
        if os.environ.get(env):
            return os.environ[env]
        file = self.path / name
        if not file.exists():
            file.write_text(secrets.token_hex(size))
            file.chmod(0o600)
        return file.read_text().strip()

    @property
    def token_key(self) -> bytes:
        return self._secret("token.key", "QUICKPAY_TOKEN_KEY", 32).encode()

    @property
    def admin_token(self) -> str:
        return self._secret("admin.token", "QUICKPAY_ADMIN_TOKEN", 24)

    @property
    def run_dir(self) -> Path:
        # Short path: unix socket paths are limited to ~107 bytes.
        digest = hashlib.blake2b(str(self.path).encode(), digest_size=6).hexdigest()
        run = Path("/tmp") / f"qp-run-{digest}"
        run.mkdir(exist_ok=True)
        return run

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
                    "or use a new --state-dir (resharding is not supported)")
        else:
            file.write_text(json.dumps({"shards": shards}))
