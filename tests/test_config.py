from __future__ import annotations

from sentry_ext.config import load

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


def test_unknown_log_level_is_a_warning_not_a_problem() -> None:
    cfg = load({"SENTRY_DSN": DSN, "SENTRY_EXT_LOG_LEVEL": "verbose"})
    assert cfg.active and cfg.log_level == "INFO"
    assert len(cfg.warnings) == 1 and "SENTRY_EXT_LOG_LEVEL" in cfg.warnings[0] and "'verbose'" in cfg.warnings[0]
    assert load({"SENTRY_EXT_LOG_LEVEL": "verbose"}).warnings == cfg.warnings  # inert: still said
    assert load({"SENTRY_DSN": DSN, "SENTRY_EXT_LOG_LEVEL": "warning"}).warnings == ()
