"""Where the CLI's server URL, credential and project come from, field by field: a flag, else the
official client's environment variables (STRAIT_BASE_URL, STRAIT_API_KEY, STRAIT_PROJECT), else
the config file `strait login` wrote.

The file is `$STRAIT_CONFIG` when set (tests point it into a temporary directory, so they never
touch a real home), else `$XDG_CONFIG_HOME/strait/config.toml`, else `~/.config/strait/config.toml`.
It holds a credential, so it is written with mode 0600 in a 0700 directory.
"""

from __future__ import annotations

import json
import os
import tomllib
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from strait_actors.client.http import UsageError

FIELDS = ("url", "api_key", "project")
ENV = {"url": "STRAIT_BASE_URL", "api_key": "STRAIT_API_KEY", "project": "STRAIT_PROJECT"}


@dataclass(frozen=True)
class Profile:
    """What the CLI talks to and as whom; any field may be missing until a command needs it."""

    url: str | None = None
    api_key: str | None = None
    project: str | None = None


def config_path(environ: Mapping[str, str]) -> Path:
    explicit = environ.get("STRAIT_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    base = environ.get("XDG_CONFIG_HOME") or str(Path("~/.config").expanduser())
    return Path(base) / "strait" / "config.toml"


def read_config(path: Path) -> Profile:
    """The file's profile; no file is an empty one (a flag or variable may still give everything)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return Profile()
    except OSError as exc:
        raise UsageError(f"cannot read the config file {path}: {exc.strerror or exc}") from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"the config file {path} is not valid TOML: {exc}") from None
    values: dict[str, str | None] = {}
    for name in FIELDS:
        value = doc.get(name)
        if value is not None and not isinstance(value, str):
            raise UsageError(f"the config file {path}: {name} must be a string")
        values[name] = value or None
    return Profile(**values)


def resolve(flags: Mapping[str, str | None], environ: Mapping[str, str]) -> Profile:
    """Each field from the first source that has it: flag, environment, config file."""
    from_file = read_config(config_path(environ))
    values: dict[str, str | None] = {}
    for name in FIELDS:
        value = flags.get(name) or environ.get(ENV[name]) or getattr(from_file, name)
        values[name] = value.strip() if value else None
    profile = Profile(**values)
    check(profile)
    return profile


def check(profile: Profile) -> None:
    """Refuse what could not be sent: a URL that is not http(s), a header value that is not text."""
    if profile.url is not None:
        parts = urllib.parse.urlsplit(profile.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise UsageError(f"the server URL must look like http://host:port, got {profile.url!r}")
    for name, value in (("api key", profile.api_key), ("project", profile.project)):
        if value is not None and not (value.isascii() and value.isprintable()):
            raise UsageError(f"the {name} must be printable ASCII")


def write_config(path: Path, profile: Profile) -> None:
    """Write the profile as TOML, readable by its owner alone (it holds a credential)."""
    check(profile)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    lines = [f"{name} = {_toml_string(getattr(profile, name))}\n" for name in FIELDS if getattr(profile, name)]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        os.fchmod(out.fileno(), 0o600)  # an existing file keeps its mode through O_CREAT
        out.write("# written by `strait login`\n")
        out.writelines(lines)


def _toml_string(value: str) -> str:
    """A TOML basic string: JSON's escapes are TOML's, but TOML also wants DEL escaped."""
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007F")
