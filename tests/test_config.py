from __future__ import annotations

import re
from pathlib import Path

import pytest

from sentry_ext import config
from sentry_ext.config import Config, ConfigError, load

DSN = "https://abc@o1.ingest.sentry.io/42"


def test_defaults() -> None:
    cfg = load({"SENTRY_DSN": DSN})
    assert cfg.active and cfg.problem is None
    assert cfg.port == 5333 and cfg.flush_mode == "end" and cfg.telemetry_port == 5334
    assert cfg.dsn is not None and cfg.dsn.host == "o1.ingest.sentry.io"
    assert cfg.queue_max_items > 0 and cfg.queue_max_bytes >= cfg.max_body_bytes


def test_missing_dsn_is_inert_not_an_error() -> None:
    cfg = load({})
    assert not cfg.active and cfg.problem == "SENTRY_DSN is not set"


def test_invalid_values_make_it_inert_with_one_reason() -> None:
    cfg = load({"SENTRY_DSN": "nonsense"})
    assert not cfg.active and "scheme" in (cfg.problem or "")
    cfg = load({"SENTRY_DSN": DSN, "SENTRY_EXT_PORT": "99999"})
    assert not cfg.active and "SENTRY_EXT_PORT" in (cfg.problem or "")
    cfg = load({"SENTRY_DSN": DSN, "SENTRY_EXT_FLUSH": "sometimes"})
    assert not cfg.active and "SENTRY_EXT_FLUSH" in (cfg.problem or "")
    cfg = load({"SENTRY_DSN": DSN, "SENTRY_EXT_TELEMETRY_PORT": "9001"})
    assert not cfg.active and "9001" in (cfg.problem or "")
    # the port is still known, so an inert extension reports it consistently
    assert load({"SENTRY_EXT_PORT": "6000"}).port == 6000


def test_overrides_and_secrets_hidden() -> None:
    cfg = load({"SENTRY_DSN": "https://topsecretkey@o1.ingest.sentry.io/42", "SENTRY_EXT_UPSTREAM": "http://127.0.0.1:8080",
                "SENTRY_EXT_FLUSH": "Background", "SENTRY_EXT_SENDERS": "2",
                "HTTP_PROXY": "http://user:proxypass@proxy:3128", "SSL_CERT_FILE": "/etc/ca.pem",
                "SENTRY_EXT_LOG_LEVEL": "debug"})
    assert cfg.flush_mode == "background" and cfg.senders == 2 and cfg.log_level == "DEBUG"
    assert cfg.dsn is not None and cfg.dsn.origin == "http://127.0.0.1:8080"
    assert cfg.proxy_url == "http://user:proxypass@proxy:3128" and cfg.ca_file == "/etc/ca.pem"
    text = repr(cfg) + cfg.describe()
    assert "topsecretkey" not in text and "proxypass" not in text


def test_https_proxy_chosen_for_https_upstream() -> None:
    cfg = load({"SENTRY_DSN": DSN, "https_proxy": "http://p:1", "HTTP_PROXY": "http://other:2", "NO_PROXY": "x"})
    assert cfg.proxy_url == "http://p:1" and cfg.no_proxy == "x"


def test_config_validates_values_not_only_names() -> None:
    dsn = load({"SENTRY_DSN": DSN}).dsn
    assert Config(dsn=dsn, problem=None).port == 5333  # defaults from the table
    for bad in ({"port": 0}, {"port": "5333"}, {"senders": True}, {"flush_mode": "sometimes"},
                {"spool_dir": 7}, {"dsn": DSN}, {"problem": 1}, {"warnings": "one line"}):
        with pytest.raises(ConfigError):
            Config(**dict({"dsn": dsn, "problem": None}, **bad))
    with pytest.raises(TypeError):
        Config(dsn=dsn, problem=None, queue_size="gone")


def test_bad_log_level_falls_back_with_a_warning_without_making_it_inert() -> None:
    cfg = load({"SENTRY_DSN": DSN, "SENTRY_EXT_LOG_LEVEL": "verbose"})
    assert cfg.active and cfg.log_level == "INFO"
    assert len(cfg.warnings) == 1 and "SENTRY_EXT_LOG_LEVEL" in cfg.warnings[0] and "'verbose'" in cfg.warnings[0]
    assert load({"SENTRY_EXT_LOG_LEVEL": "verbose"}).warnings == cfg.warnings  # inert: still said
    assert load({"SENTRY_DSN": DSN, "SENTRY_EXT_LOG_LEVEL": "warning"}).warnings == ()


def test_readme_configuration_table_documents_every_setting_with_its_default_and_range() -> None:
    """Every variable of the settings table (and any other config.py reads, and the launcher's
    SENTRY_EXT_PYTHON) is in the README's table, integers with the table's default and range."""
    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    source = (root / "sentry_ext" / "config.py").read_text()
    names = set(re.findall(r'"((?:SENTRY|HTTPS?|NO|SSL|AWS)_[A-Z0-9_]+|https?_proxy|no_proxy)"', source))
    names.add("SENTRY_EXT_PYTHON")
    for _, env_names, _ in config.DERIVED:
        names.update(env_names)
    for _, env_names, default, check, _ in config.SETTINGS:
        if env_names is None:
            continue
        for name in (env_names,) if isinstance(env_names, str) else env_names:
            names.add(name)
            # the row whose first cell names it (other rows may mention it in their text)
            row = next((r for r in rows if "`%s`" % name in r.split("|")[1]), "")
            if row and isinstance(default, int):
                assert "`%d`" % default in row and "%d\u2013%d" % check in row, row
            elif row and check is not None:
                assert all("`%s`" % c in row for c in check), row
    missing = sorted(n for n in names if not any("`%s`" % n in r for r in rows))
    assert not missing, "README configuration table lacks: %s" % ", ".join(missing)


def test_report_failures_setting() -> None:
    assert load({"SENTRY_DSN": DSN}).failure_kinds == ("timeout", "oom", "exit", "init")
    assert load({"SENTRY_DSN": DSN, "SENTRY_EXT_REPORT_FAILURES": "OFF"}).failure_kinds == ()
    cfg = load({"SENTRY_DSN": DSN, "SENTRY_EXT_REPORT_FAILURES": " init, timeout "})
    assert cfg.active and cfg.failure_kinds == ("timeout", "init")
    cfg = load({"SENTRY_DSN": DSN, "SENTRY_EXT_REPORT_FAILURES": "timeout,crash"})
    assert not cfg.active and "SENTRY_EXT_REPORT_FAILURES" in (cfg.problem or "")


def test_lambda_function_variables_are_read_and_a_bad_memory_size_is_not_fatal() -> None:
    cfg = load({"SENTRY_DSN": DSN, "AWS_LAMBDA_FUNCTION_NAME": "orders", "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
                "AWS_REGION": "eu-west-1", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512", "SENTRY_RELEASE": "r1"})
    assert (cfg.function_name, cfg.function_version, cfg.region, cfg.memory_mb, cfg.release, cfg.environment) == (
        "orders", "$LATEST", "eu-west-1", 512, "r1", None)
    cfg = load({"SENTRY_DSN": DSN, "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "lots"})
    assert cfg.active and cfg.memory_mb == 0


def test_function_logs_settings() -> None:
    cfg = load({"SENTRY_DSN": DSN})
    assert (cfg.logs, cfg.logs_level, cfg.telemetry_types) == ("off", "info", ("platform",))
    cfg = load({"SENTRY_DSN": DSN, "SENTRY_EXT_LOGS": "ON", "SENTRY_EXT_LOGS_LEVEL": "Warning"})
    assert (cfg.logs, cfg.logs_level, cfg.telemetry_types) == ("on", "warning", ("platform", "function"))
    assert "logs=on(warning+)" in cfg.describe()
    bad_switch = load({"SENTRY_DSN": DSN, "SENTRY_EXT_LOGS": "yes"})
    assert not bad_switch.active and "SENTRY_EXT_LOGS" in str(bad_switch.problem)
    bad_level = load({"SENTRY_DSN": DSN, "SENTRY_EXT_LOGS": "on", "SENTRY_EXT_LOGS_LEVEL": "loud"})
    assert bad_level.active and bad_level.logs_level == "info"
    assert any("SENTRY_EXT_LOGS_LEVEL" in w for w in bad_level.warnings)
