use super::*;

const FIXED: &str = r#"
listen = "127.0.0.1:8080"

[[upstreams]]
name = "primary"
kind = "openai"
base_url = "http://127.0.0.1:9001/v1"
api_key_env = "PRIMARY_KEY"

[[upstreams]]
name = "secondary"
kind = "anthropic"
base_url = "http://127.0.0.1:9002/v1"

[[models]]
name = "smart"
tiers = [ { upstream = "primary", model = "gpt-4o" },
      { upstream = "secondary", model = "claude-sonnet" } ]
template = "We are experiencing issues; please try again shortly."
"#;

#[test]
fn the_fixed_schema_parses_with_defaults() {
    let config = Config::from_toml(FIXED).unwrap();
    assert_eq!(config.upstreams[1].kind, UpstreamKind::Anthropic);
    assert_eq!(config.models[0].tiers[1].model, "claude-sonnet");
    assert_eq!(config.escalation.mode, EscalationMode::Wait);
    assert_eq!(config.limits.max_body_bytes, 1024 * 1024);
}

#[test]
fn bad_references_are_errors() {
    let bad = FIXED.replace("upstream = \"secondary\"", "upstream = \"nope\"");
    let e = Config::from_toml(&bad).unwrap_err();
    assert!(e.to_string().contains("unknown upstream"), "{e}");
    let bad = FIXED.replace("http://127.0.0.1:9001/v1", "not a url");
    assert!(Config::from_toml(&bad).is_err());
    let bad = format!("{FIXED}\n[circuit]\ncooldown_secs = -1\n");
    let e = Config::from_toml(&bad).unwrap_err().0;
    assert!(e.starts_with("circuit.cooldown_secs: must be > 0"), "{e}");
    assert!(Config::from_toml("listen = 3").is_err());
    for workers in ["0", "100000", "-1", "\"two\""] {
        let bad = format!("workers = {workers}\n{FIXED}");
        assert!(Config::from_toml(&bad).is_err(), "workers = {workers}");
    }
    let two = Config::from_toml(&format!("workers = 2\n{FIXED}")).unwrap();
    assert_eq!(two.worker_threads(), 2);
    assert!(Config::from_toml(FIXED).unwrap().worker_threads() >= 1);
}

#[test]
fn durations_are_read_once_and_errors_name_the_setting() {
    let text =
        format!("{FIXED}\n[limits]\nclient_body_timeout_secs = 0.25\nshutdown_grace_secs = 2\n");
    let config = Config::from_toml(&text).unwrap();
    assert_eq!(
        config.limits.client_body_timeout_secs,
        Duration::from_millis(250)
    );
    assert_eq!(config.limits.shutdown_grace_secs, Duration::from_secs(2));
    for bad in ["0", "-1", "nan", "inf", "1e10", "\"ten\""] {
        let text = format!("{FIXED}\n[limits]\nclient_body_timeout_secs = {bad}\n");
        let e = Config::from_toml(&text).unwrap_err().0;
        assert!(
            e.starts_with("limits.client_body_timeout_secs: "),
            "{bad}: {e}"
        );
    }
    let text = FIXED.replace(
        "name = \"secondary\"",
        "name = \"secondary\"\ntimeout_secs = 0",
    );
    let e = Config::from_toml(&text).unwrap_err().0;
    assert!(
        e.starts_with("upstreams[1].timeout_secs: must be > 0"),
        "{e}"
    );
    // With the line it is on.
    let line = text.lines().position(|l| l == "timeout_secs = 0").unwrap() + 1;
    assert!(e.ends_with(&format!("(line {line})")), "{e}");
    // Built or edited in code: still checked, by name.
    let mut config = Config::from_toml(FIXED).unwrap();
    config.escalation.poll_interval_secs = Duration::ZERO;
    let e = config.validate().unwrap_err().0;
    assert_eq!(e, "escalation.poll_interval_secs: must be > 0");
    config.escalation.poll_interval_secs = Duration::from_secs(1);
    config.upstreams[0].circuit = Some(CircuitConfig {
        cooldown_secs: Duration::ZERO,
        ..CircuitConfig::default()
    });
    let e = config.validate().unwrap_err().0;
    assert_eq!(
        e,
        "upstream \"primary\": circuit.cooldown_secs: must be > 0"
    );
}

#[test]
fn state_is_embedded_unless_a_redis_url_is_set() {
    let config = Config::from_toml(FIXED).unwrap();
    assert!(config.state.redis_client().unwrap().is_none());
    let with = format!(
        "{FIXED}\n[state]\nredis_url = \"redis://:secret@127.0.0.1:6390/2\"\nprefix = \"team-a\"\n"
    );
    let config = Config::from_toml(&with).unwrap();
    assert!(config.state.redis_client().unwrap().is_some());
    assert_eq!(config.state.prefix, "team-a");
    assert!(!format!("{config:?}").contains("secret"));
}

#[test]
fn the_redis_url_can_come_from_the_environment() {
    std::env::set_var(
        "LLM_PROXY_CONFIG_TEST_REDIS_URL",
        "redis://:secret@127.0.0.1:6390/2",
    );
    let with = format!("{FIXED}\n[state]\nredis_url_env = \"LLM_PROXY_CONFIG_TEST_REDIS_URL\"\n");
    let config = Config::from_toml(&with).unwrap();
    assert!(config.state.redis_client().unwrap().is_some());
    assert!(!format!("{config:?}").contains("secret"));

    let missing = format!("{FIXED}\n[state]\nredis_url_env = \"LLM_PROXY_CONFIG_TEST_UNSET\"\n");
    let e = Config::from_toml(&missing).unwrap_err().to_string();
    assert!(
        e.contains("LLM_PROXY_CONFIG_TEST_UNSET") && e.contains("not set"),
        "{e}"
    );
    let both = format!(
        "{FIXED}\n[state]\nredis_url = \"redis://127.0.0.1/\"\n\
         redis_url_env = \"LLM_PROXY_CONFIG_TEST_REDIS_URL\"\n"
    );
    let e = Config::from_toml(&both).unwrap_err().to_string();
    assert!(e.contains("both set"), "{e}");
}

#[test]
fn malformed_redis_urls_are_startup_errors() {
    for url in ["", "localhost:6379", "http://127.0.0.1:6379", "redis://"] {
        let text = format!("{FIXED}\n[state]\nredis_url = {url:?}\n");
        let e = Config::from_toml(&text).unwrap_err().to_string();
        assert!(e.contains("state.redis_url"), "{url:?}: {e}");
    }
    let no_prefix = format!("{FIXED}\n[state]\nprefix = \"\"\n");
    assert!(Config::from_toml(&no_prefix).is_err());
}

#[tokio::test]
async fn the_job_queue_pool_verifies_the_server_as_the_other_pool_does() {
    let mode = |url: &str| {
        let text = format!("{FIXED}\n[state]\npostgres_url = {url:?}\n");
        let config = Config::from_toml(&text).unwrap();
        let pool = config.state.postgres_queue_pool().unwrap().unwrap();
        format!("{:?}", pool.connect_options().get_ssl_mode())
    };
    let base = "postgres://u:p@127.0.0.1:5432/db";
    // `require` verifies the certificate and the host name, as tokio-postgres
    // with rustls does for the proxy's other pool.
    assert_eq!(mode(&format!("{base}?sslmode=require")), "VerifyFull");
    // `prefer` (the default) stays libpq's: TLS if offered, unverified.
    assert_eq!(mode(&format!("{base}?sslmode=prefer")), "Prefer");
    assert_eq!(mode(&format!("{base}?sslmode=disable")), "Disable");
    // No PostgreSQL in [state]: no pool.
    let config = Config::from_toml(FIXED).unwrap();
    assert!(config.state.postgres_queue_pool().unwrap().is_none());
}
