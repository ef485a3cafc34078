"""Where the CLI keeps its tokens: ``$XDG_CONFIG_HOME/tasklight/config.json``.

One token per server address, so a token is only ever sent to the server that
issued it. The file is written with mode 0600 (the token is a password), by
replacing it whole, so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_SERVER = "http://127.0.0.1:8000"


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "tasklight" / "config.json"


@dataclass
class Credentials:
    username: str
    token: str


@dataclass
class Config:
    """The last server logged in to, and a token per server."""

    default_server: str | None = None
    servers: dict[str, Credentials] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None = None) -> Config:
        path = path or config_path()
        try:
            data: Any = json.loads(path.read_text())
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read {path} ({exc}); delete it and log in again") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path} is not a JSON object; delete it and log in again")
        servers = {}
        for server, entry in (data.get("servers") or {}).items():
            if isinstance(entry, dict) and isinstance(entry.get("token"), str):
                servers[server] = Credentials(username=str(entry.get("username", "")), token=entry["token"])
        default = data.get("default_server")
        return cls(default_server=default if isinstance(default, str) else None, servers=servers)

    def save(self, path: Path | None = None) -> None:
        path = path or config_path()
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        data = {
            "default_server": self.default_server,
            "servers": {
                server: {"username": entry.username, "token": entry.token} for server, entry in self.servers.items()
            },
        }
        # mkstemp creates the file with mode 0600 before any secret is written.
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".config-", suffix=".json")
        try:
            with os.fdopen(descriptor, "w") as handle:
                json.dump(data, handle, indent=2)
                handle.write("\n")
            os.chmod(temporary, 0o600)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


class ConfigError(Exception):
    pass
