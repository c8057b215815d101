"""URLs with passwords: hidden wherever shown or saved, checked before work, resumable.

The end-to-end tests run, sweep and suite against the password-protected PostgreSQL of
tests/conftest.py (storage and MLflow tracking both on it) and look for the password in
MLflow, on disk and in everything printed."""

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pgbench.cli import main
from pgbench.config.urls import check_database, redact, redact_values, restore
from pgbench.config.verbs import resolve
from pgbench.errors import ConfigError
from pgbench.train.tracking import check_reachable
from pgbench.train.trainer import train

SECRET = "s3cretPW"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://alice:s3cretPW@db-host/pgbench", "postgresql://alice:***@db-host/pgbench"),
        (
            "postgresql+psycopg2://a:s3cretPW@h:5432/db?x=1",
            "postgresql+psycopg2://a:***@h:5432/db?x=1",
        ),
        ("http://bob:s3cretPW@mlflow:5000", "http://bob:***@mlflow:5000"),
        ("https://:s3cretPW@mlflow", "https://:***@mlflow"),  # a token with no user name
        ("postgresql://alice:p%40ss@h/db", "postgresql://alice:***@h/db"),  # an encoded @
        (
            "postgresql://alice@h/db?password=s3cretPW&port=1",
            "postgresql://alice@h/db?password=***&port=1",
        ),
        ("postgresql://alice@db-host/pgbench", "postgresql://alice@db-host/pgbench"),
        ("sqlite:////tmp/a@b/mlflow.db", "sqlite:////tmp/a@b/mlflow.db"),  # @ in a path
        ("runs/sweep/optuna.journal", "runs/sweep/optuna.journal"),
        # SQLAlchemy takes a password up to its `@`: `/`, `?`, `#` and `:` unencoded included
        ("postgresql://alice:s3cr/et@db/pg", "postgresql://alice:***@db/pg"),
        ("postgresql://alice:a#b?c:d/e@db:5432/pg?x=1", "postgresql://alice:***@db:5432/pg?x=1"),
        ("mysql://bob:p@ss@db/x", "mysql://bob:***@db/x"),  # an @ too: the last @ ends it
        ('postgresql://alice:it\'s<"q">@db/pg', "postgresql://alice:***@db/pg"),  # a value
        ("https://ghp_TOKEN@mlflow.example/", "https://***@mlflow.example/"),  # a bare token
        (
            "postgresql://alice@db/pg?SSLPassword=s3cretPW&application_name=x&token=t",
            "postgresql://alice@db/pg?SSLPassword=***&application_name=x&token=***",
        ),
        ("https://h/#access_token=s3cretPW", "https://h/#access_token=***"),
    ],
)
def test_redact_hides_the_password_only(url, shown):
    assert redact(url) == shown


@pytest.mark.parametrize("password", ["s3cr/et", "a#b", "x?y=1", "c:d", "at@sign", "/#?:@"])
def test_no_password_survives_redaction_in_any_form(password):
    from urllib.parse import quote

    from sqlalchemy import make_url

    for url in (
        f"postgresql://alice:{password}@db-host:5432/pgbench?sslmode=require",
        f"postgresql+psycopg://alice:{quote(password, safe='')}@db-host/pgbench",
        f"https://bob:{password}@mlflow:5000/api",
        f"postgresql://alice@db-host/pgbench?password={quote(password, safe='')}",
    ):
        message = f"error: cannot reach '{url}' (retrying {url}) password={password}"
        for shown in (redact(url), redact(message), str(redact_values({"k": [url]}))):
            assert password not in shown and quote(password, safe="") not in shown
        parsed = make_url(redact(url)) if url.startswith("postgresql") else None
        assert parsed is None or parsed.password in (None, "***")


def test_redact_finds_urls_inside_messages_and_nested_values():
    text = "cannot open http://u:s3cretPW@h:1 (also mysql://v:other@db/x)"
    assert redact(text) == "cannot open http://u:***@h:1 (also mysql://v:***@db/x)"
    values = {"a": ["postgresql://u:s3cretPW@h/db", 3], "b": {"c": "http://u:s3cretPW@h"}}
    assert redact_values(values) == {
        "a": ["postgresql://u:***@h/db", 3],
        "b": {"c": "http://u:***@h"},
    }


def no_env_credentials(monkeypatch, tmp_path):
    for name in ("PGPASSWORD", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-pgpass"))


def test_restore_takes_the_url_again_or_the_environments_credentials(monkeypatch, tmp_path):
    no_env_credentials(monkeypatch, tmp_path)
    saved = "postgresql://alice:***@db-host/pgbench"
    given = "postgresql://alice:s3cretPW@db-host/pgbench"
    assert restore("tracking.uri", saved, given, "config.json") == given
    with pytest.raises(ConfigError, match="not the URL saved in config.json") as err:
        restore("tracking.uri", saved, "postgresql://alice:s3cretPW@other/pgbench", "config.json")
    assert SECRET not in str(err.value)
    with pytest.raises(ConfigError, match="PGPASSWORD or ~/.pgpass"):
        restore("tracking.uri", saved, None, "config.json")
    plain = "sqlite:///mlflow.db"
    assert restore("tracking.uri", plain, None, "config.json") == plain
    monkeypatch.setenv("PGPASSWORD", SECRET)  # libpq's own variable: the URL needs no password
    assert (
        restore("tracking.uri", saved, None, "config.json") == "postgresql://alice@db-host/pgbench"
    )
    (tmp_path / "pgpass").write_text(f"db-host:5432:pgbench:alice:{SECRET}\n")
    monkeypatch.delenv("PGPASSWORD")
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "pgpass"))
    assert (
        restore("tracking.uri", saved, None, "config.json") == "postgresql://alice@db-host/pgbench"
    )
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_PASSWORD"):
        restore("tracking.uri", "http://bob:***@mlflow:5000", None, "run.json")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", SECRET)
    assert (
        restore("tracking.uri", "http://bob:***@mlflow:5000", None, "run.json")
        == "http://bob@mlflow:5000"
    )
    assert restore("tracking.uri", "https://***@mlflow", None, "run.json") == "https://mlflow"
    given = "https://s3cret/PW@mlflow"  # a token given again, `/` and all
    assert restore("tracking.uri", "https://***@mlflow", given, "run.json") == given


def test_an_unreachable_or_driverless_database_is_one_true_line():
    with pytest.raises(ConfigError) as err:
        check_database("sweep.storage", f"postgresql://alice:{SECRET}@127.0.0.1:1/pgbench")
    message = str(err.value)
    assert "database server at 127.0.0.1:1 is not reachable" in message
    assert "Connection refused" in message and "\n" not in message and SECRET not in message
    with pytest.raises(
        ConfigError, match=r"driver mysqldb is not installed; pip install 'mysqlclient'"
    ):
        check_database("suite.storage", f"mysql+mysqldb://a:{SECRET}@127.0.0.1:1/db")
    with pytest.raises(ConfigError, match="not a database URL"):
        check_database("sweep.storage", "nosuchdb://a@h/db")


def test_an_unreachable_tracking_server_hides_its_password():
    with pytest.raises(ConfigError) as err:
        check_reachable(f"http://bob:{SECRET}@127.0.0.1:1", timeout_s=2)
    assert "tracking.uri=http://bob:***@127.0.0.1:1 is unreachable" in str(err.value)
    assert SECRET not in str(err.value)


def test_the_readme_url_forms_connect_to_a_real_server(postgres_server, monkeypatch, tmp_path):
    check_database("sweep.storage", postgres_server.url())  # postgresql://user:pass@host/db
    no_env_credentials(monkeypatch, tmp_path)
    with pytest.raises(ConfigError, match="refused the connection") as err:
        check_database("sweep.storage", postgres_server.url(password=False))
    assert postgres_server.password not in str(err.value)
    wrong = postgres_server.url().replace(postgres_server.password, SECRET)
    with pytest.raises(ConfigError, match="password authentication failed") as err:
        check_database("sweep.storage", wrong)
    assert SECRET not in str(err.value)
    monkeypatch.setenv("PGPASSWORD", postgres_server.password)  # the README's recommended way
    check_database("sweep.storage", postgres_server.url(password=False))


def test_the_cli_prints_an_unreachable_storage_without_its_password(run_overrides, capfd):
    args = [f"{k}={v}" for k, v in run_overrides.items()]
    storage = f"sweep.storage=postgresql://alice:{SECRET}@127.0.0.1:1/pgbench"
    assert main(["sweep", *args, "sweep.n_trials=1", storage]) == 2
    out, err = capfd.readouterr()
    assert err.strip().count("\n") == 0 and SECRET not in out + err
    assert "postgresql://alice:***@127.0.0.1:1/pgbench" in err and "not reachable" in err


def _args(values: dict[str, str]) -> list[str]:
    return [f"{key}={value}" for key, value in values.items()]


def _mlflow_text(client: MlflowClient, run_id: str, into: Path) -> str:
    """Params, tags and every artifact of one run, read back through MLflow."""
    run = client.get_run(run_id)
    parts = [json.dumps(run.data.params), json.dumps(run.data.tags)]
    folder = Path(client.download_artifacts(run_id, "", str(into)))
    parts += [p.read_bytes().decode(errors="replace") for p in folder.rglob("*") if p.is_file()]
    return "\n".join(parts)


def test_no_password_reaches_mlflow_files_or_messages(
    run_overrides, postgres_server, tmp_path, monkeypatch, capfd
):
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root (./mlruns) lands here
    secret, tracking = postgres_server.password, postgres_server.url("mlflow")
    fast = run_overrides | {"tracking.uri": tracking, "trainer.steps": "2", "eval.every": "1"}
    fast |= {"eval.size": "8", "checkpoint.every": "0"}
    run = fast | {"output_dir": str(tmp_path / "run")}
    sweep = fast | {"output_dir": str(tmp_path / "sweep"), "sweep.n_trials": "1"}
    sweep |= {"sweep.storage": postgres_server.url(), "sweep.name": "secret-sweep"}
    suite = fast | {"output_dir": str(tmp_path / "suite"), "suite.storage": postgres_server.url()}
    suite |= {"tasks": "fr_en", "estimators": "rloo", "seeds": "1", "suite.id": "secret"}
    assert main(["run", *_args(run)]) == 0
    assert main(["sweep", *_args(sweep)]) == 0
    assert main(["suite", *_args(suite)]) == 0
    out, err = capfd.readouterr()
    assert secret not in out + err

    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {"config.json", "summary.json", "best.json", "runs.csv", "suite.md"} <= {
        p.name for p in written
    }
    assert [p for p in written if secret.encode() in p.read_bytes()] == []
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (
        config["tracking.uri"]
        == f"postgresql://postgres:***@127.0.0.1:{postgres_server.port}/mlflow"
    )

    client = MlflowClient(tracking)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments)
    assert len(runs) >= 5  # the run, the sweep and its trial, the suite and its cell
    for found in runs:
        text = _mlflow_text(client, found.info.run_id, tmp_path / "downloads" / found.info.run_id)
        assert secret not in text
    parents = [r for r in runs if r.data.tags.get("mlflow.runName") == "sweep-secret-sweep"]
    assert parents[0].data.params["sweep.storage"] == redact(postgres_server.url())


def test_a_saved_config_without_its_password_resumes_with_the_url_given_again(
    run_overrides, postgres_server, tmp_path, monkeypatch, capfd
):
    monkeypatch.chdir(tmp_path)
    no_env_credentials(monkeypatch, tmp_path)
    tracking = postgres_server.url("mlflow")
    values = run_overrides | {"tracking.uri": tracking, "trainer.steps": "3", "eval.every": "0"}
    values |= {"checkpoint.every": "2", "output_dir": str(tmp_path / "crashed")}

    def crash_at_step_3(step: int, metrics: dict[str, float]) -> None:
        if step == 3:
            raise KeyboardInterrupt  # the last checkpoint is step 2

    with pytest.raises(KeyboardInterrupt):
        train(resolve(values), on_step_end=crash_at_step_3)
    resume = f"resume={tmp_path / 'crashed'}"
    assert main(["run", resume]) == 2
    assert "had a password, which pgbench never saves" in capfd.readouterr().err
    assert main(["run", resume, f"tracking.uri={tracking}"]) == 0
    assert postgres_server.password not in "".join(capfd.readouterr())
    summary = json.loads((tmp_path / "crashed" / "summary.json").read_text())
    run = MlflowClient(tracking).get_run(summary["run_id"])
    assert summary["steps"] == 3 and run.info.status == "FINISHED"


TRICKY = "pa/ss#wo?rd:x"  # unencoded: SQLAlchemy and libpq accept it as it is


def test_a_password_with_url_characters_reaches_no_file_mlflow_or_message(
    run_overrides, postgres_server, tmp_path, monkeypatch, capfd
):
    from sqlalchemy import create_engine, text

    engine = create_engine(postgres_server.url(), isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text("DROP ROLE IF EXISTS tricky"))
        connection.execute(text(f"CREATE ROLE tricky LOGIN SUPERUSER PASSWORD '{TRICKY}'"))
    engine.dispose()
    monkeypatch.chdir(tmp_path)
    tracking = f"postgresql://tricky:{TRICKY}@127.0.0.1:{postgres_server.port}/mlflow"
    values = run_overrides | {"tracking.uri": tracking, "trainer.steps": "1", "eval.every": "0"}
    values |= {"checkpoint.every": "0", "eval.size": "4"}
    assert main(["run", *_args(values)]) == 0
    run_dir = Path(values["output_dir"])
    shown = f"postgresql://tricky:***@127.0.0.1:{postgres_server.port}/mlflow"
    assert json.loads((run_dir / "config.json").read_text())["tracking.uri"] == shown
    assert json.loads((run_dir / "run.json").read_text())["tracking_uri"] == shown
    secrets_ = (TRICKY, "pa/ss", "wo?rd")
    files = [p.read_bytes().decode(errors="replace") for p in tmp_path.rglob("*") if p.is_file()]
    run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    logged = _mlflow_text(MlflowClient(tracking), run_id, tmp_path / "downloads")
    unreachable = tracking.replace(f":{postgres_server.port}/", ":1/")
    assert main(["run", *_args(values | {"tracking.uri": unreachable})]) == 2  # a message
    out, err = capfd.readouterr()
    assert "tracking.uri=postgresql://tricky:***@127.0.0.1:1/mlflow" in err
    for text_ in (*files, logged, out + err):
        assert not any(secret in text_ for secret in secrets_)
