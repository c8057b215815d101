"""URLs that reach services (`tracking.uri`, `sweep.storage`, `suite.storage`): the one place
that hides their credentials and checks that a database answers before any work starts.

A URL is kept whole where it is used to connect. Wherever it is shown or saved (MLflow params
and tags, JSON files, messages) its credentials are replaced by ***:
`postgresql://alice:***@db-host/pgbench`, `https://***@mlflow` (a token as user name),
`...?sslpassword=***`. URLs are split, not matched by a pattern: the user info ends at the
URL's last `@`, so a password holding `/`, `?`, `#` or `:` unencoded (SQLAlchemy accepts them)
is hidden whole. SQLAlchemy's `render_as_string(hide_password=True)` is not used: it stops a
password at its first `@`, hides no query parameter and reorders and re-encodes the rest.
Credentials are better kept out of URLs altogether: libpq reads `PGPASSWORD` and
`~/.pgpass`, MLflow reads `MLFLOW_TRACKING_USERNAME` / `MLFLOW_TRACKING_PASSWORD`.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from pathlib import Path
from typing import Any

from pgbench.errors import ConfigError

HIDDEN = "***"
URL_KEYS = ("tracking.uri", "sweep.storage", "suite.storage")  # the keys that hold such URLs
# where a URL starts in free text (`scheme://`); it runs to the next blank or quote, since a
# password may hold any other character unencoded (SQLAlchemy accepts `/`, `?`, `#`, `:`)
_URL_START = re.compile(r"\b[A-Za-z][A-Za-z0-9+.\-]*://")
_URL_END = frozenset(" \t\r\n\"'<>`")
# query parameters, and libpq's `key=value` words, whose value is a credential
SECRET_NAMES = (
    "password", "passwd", "pwd", "sslpassword", "token", "access_token", "auth_token", "secret",
    "client_secret", "api_key", "apikey", "sig", "signature",
)  # fmt: skip
_SECRET_WORD = re.compile(  # libpq's `password=secret` or `password = 'a b'` in a message
    rf"(?<![\w.])((?:{'|'.join(SECRET_NAMES)})\s*=\s*)('(?:[^'\\]|\\.)*'|[^\s'\"]+)",
    re.IGNORECASE,
)
_WEB = ("http", "https", "ws", "wss", "ftp")  # where a user name alone is a token
# where the database drivers SQLAlchemy names come from
DRIVER_PACKAGES = {
    "psycopg": "psycopg[binary]",
    "psycopg2": "psycopg2-binary",
    "pymysql": "pymysql",
    "mysqldb": "mysqlclient",
}
# words of a driver's message that mean the server answered and refused the login
_REFUSALS = ("password", "authentication", "does not exist", "pg_hba", "access denied")


def split_url(url: str) -> tuple[str, str | None, str]:
    """`scheme://userinfo@rest` -> (scheme, userinfo or None, rest).

    The user info ends at the LAST `@` of the URL: a password may hold `/`, `?`, `#`, `:` and
    `@` unencoded (SQLAlchemy accepts all but `@`), so no character before it can end it. A URL
    whose rest starts with `/` has no user info (`sqlite:////data/a@b.db`)."""
    scheme, _, rest = url.partition("://")
    at = rest.rfind("@")
    if at < 0 or rest.startswith("/"):
        return scheme, None, rest
    return scheme, rest[:at], rest[at + 1 :]


def _hidden_params(params: str) -> str:
    """`a=1&password=x` -> `a=1&password=***` (names compared decoded and case-insensitively)."""
    items = []
    for item in params.split("&"):
        name, eq, value = item.partition("=")
        secret = eq and value and urllib.parse.unquote_plus(name).lower() in SECRET_NAMES
        items.append(f"{name}={HIDDEN}" if secret else item)
    return "&".join(items)


def redact_url(url: str) -> str:
    """One URL with its credentials hidden: the password of its user info (`user:***@`), a web
    URL's token (`https://***@host`), and password-like query and fragment parameters."""
    scheme, userinfo, rest = split_url(url)
    if userinfo is not None:
        user, colon, password = userinfo.partition(":")
        if colon and password:
            userinfo = f"{user}:{HIDDEN}"
        elif not colon and user and scheme.lower() in _WEB:
            userinfo = HIDDEN
        rest = f"{userinfo}@{rest}"
    head, question, query = rest.partition("?")
    query, hash_, fragment = query.partition("#") if question else ("", "", "")
    if not question:
        head, hash_, fragment = head.partition("#")
    shown = head + question + _hidden_params(query) + hash_ + _hidden_params(fragment)
    return f"{scheme}://{shown}"


def redact(text: str) -> str:
    """`text` (a URL, a message, a traceback) with every credential in it replaced by ***: each
    URL's as `redact_url` hides them (a URL runs from `scheme://` to the next blank or quote),
    and libpq's `password=...` words outside URLs. A text that is one URL (a config value)
    is taken whole: its password may hold quotes too."""
    if _URL_START.match(text) and not any(char.isspace() for char in text):
        return redact_url(text)
    shown, pos = [], 0
    while found := _URL_START.search(text, pos):
        end = next((i for i in range(found.end(), len(text)) if text[i] in _URL_END), len(text))
        shown += [_SECRET_WORD.sub(rf"\1{HIDDEN}", text[pos : found.start()])]
        shown += [redact_url(text[found.start() : end])]
        pos = end
    return "".join([*shown, _SECRET_WORD.sub(rf"\1{HIDDEN}", text[pos:])])


def without_userinfo(url: str) -> str:
    """`url` without its `user:password@` (to ask a server's /health without credentials)."""
    scheme, _, rest = split_url(url)
    return f"{scheme}://{rest}"


def redact_values(value: Any) -> Any:
    """A copy of `value` (dicts, lists and strings, nested) with every URL's password hidden."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: redact_values(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_values(item) for item in value]
    return value


def check_shared(verb: str, storage: str, tracking_uri: str) -> None:
    """SLURM workers run on other nodes: the queue and the tracking store must be servers
    (`verb`: suite or sweep, whose `<verb>.launcher` and `<verb>.storage` keys are named)."""
    servers = ("postgresql", "postgres", "mysql", "mariadb")
    local = {"suite": "the local journal file", "sweep": "the local optuna.db or .journal file"}
    if _scheme(storage) not in servers:
        raise ConfigError(
            f"{verb}.launcher=slurm needs {verb}.storage=postgresql://... (or mysql://) that "
            f"every node reaches; got {redact(storage) or local[verb]}"
        )
    if _scheme(tracking_uri) not in (*servers, "http", "https"):
        raise ConfigError(
            f"{verb}.launcher=slurm needs a tracking.uri every node reaches: http(s)://<mlflow "
            f"server> or postgresql://...; got {redact(tracking_uri)}"
        )


def _scheme(url: str) -> str:
    """`postgresql+psycopg://...` -> `postgresql`; a path -> ``."""
    return url.partition("://")[0].partition("+")[0] if "://" in url else ""


def is_database(url: str) -> bool:
    """Whether `url` names a SQLAlchemy database (postgresql://, mysql+pymysql://, sqlite://)."""
    return _scheme(url) in ("postgresql", "postgres", "mysql", "mariadb", "sqlite")


def env_credentials(url: str) -> str:
    """The environment credentials that `url` (without a password) would connect with, named;
    empty if there are none."""
    scheme = url.partition("://")[0].partition("+")[0]
    if scheme in ("postgresql", "postgres"):
        pgpass = Path(os.environ.get("PGPASSFILE", "~/.pgpass")).expanduser()
        if os.environ.get("PGPASSWORD"):
            return "PGPASSWORD"
        return str(pgpass) if pgpass.is_file() else ""
    if scheme in ("http", "https"):
        names = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
        return next((name for name in names if os.environ.get(name)), "")
    return ""


def restore(key: str, saved: str, given: str | None, where: str) -> str:
    """The URL to connect with for `key`, whose saved value (in `where`) may be redacted.

    A URL given again (`given`) must be the saved one up to its password. Without it, a saved
    URL whose password was hidden connects without one, if the environment has credentials
    for it (PGPASSWORD, ~/.pgpass, MLFLOW_TRACKING_PASSWORD); otherwise a ConfigError says so.
    """
    if given is not None:
        if redact(given) != saved:
            raise ConfigError(
                f"{key}={redact(given)} is not the URL saved in {where} ({saved}); "
                "only its password may be given again"
            )
        return given
    if HIDDEN not in saved:
        return saved
    bare = _without_hidden_userinfo(saved)  # user:***@host -> user@host, ***@host -> host
    if HIDDEN in bare or not env_credentials(bare):
        raise ConfigError(
            f"{key} in {where} had a password, which pgbench never saves: give it again "
            f"({key}=<the URL with its password>), or set PGPASSWORD or ~/.pgpass for a "
            "database, MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD for an MLflow server"
        )
    return bare


def _without_hidden_userinfo(url: str) -> str:
    scheme, userinfo, rest = split_url(url)
    if userinfo in (None, HIDDEN):
        return f"{scheme}://{rest}"
    return f"{scheme}://{userinfo.removesuffix(':' + HIDDEN)}@{rest}"


def _where(url: Any) -> str:
    """`host:port` of a SQLAlchemy URL (a Unix socket's folder for `?host=/path`)."""
    host = url.host or url.query.get("host") or "localhost"
    default = {"postgresql": 5432, "mysql": 3306, "mariadb": 3306}.get(url.get_backend_name())
    port = url.port or url.query.get("port") or default
    return f"{host}:{port}" if port else str(host)


def check_database(key: str, url: str, timeout_s: int = 5) -> None:
    """Raise a one-line ConfigError now if the database at `url` cannot be used: its driver is
    missing (naming the package to install), or its server does not answer or refuses the
    login within `timeout_s` (naming host and port, never the password)."""
    from sqlalchemy import create_engine, exc, make_url
    from sqlalchemy.pool import NullPool

    shown = f"{key}={redact(url)}"
    try:
        parsed = make_url(url)
        dialect = parsed.get_dialect()
    except (exc.ArgumentError, exc.NoSuchModuleError, ValueError):
        raise ConfigError(
            f"{shown}: not a database URL; use postgresql://user@host/db, mysql+pymysql://... "
            "or sqlite:///<file>.db (percent-encode @, : and / in a password)"
        ) from None
    try:
        dialect.import_dbapi()
    except ImportError:
        package = DRIVER_PACKAGES.get(dialect.driver, dialect.driver)
        raise ConfigError(
            f"{shown}: its driver {dialect.driver} is not installed; pip install '{package}'"
            + (" (or pip install 'pgbench[postgres]')" if dialect.driver == "psycopg" else "")
        ) from None
    if parsed.get_backend_name() == "sqlite":
        return
    engine = create_engine(parsed, poolclass=NullPool, connect_args={"connect_timeout": timeout_s})
    try:
        with engine.connect():
            return
    except exc.DBAPIError as err:
        reason = redact(str(err.orig).strip().splitlines()[0]) if str(err.orig).strip() else ""
    finally:
        engine.dispose()
    server = f"the database server at {_where(parsed)}"
    if any(word in reason.lower() for word in _REFUSALS):
        raise ConfigError(
            f"{shown}: {server} refused the connection ({reason}); check the user, the "
            "database and the password (PGPASSWORD or ~/.pgpass)"
        )
    raise ConfigError(f"{shown}: {server} is not reachable ({reason})")
