//! The official OpenAI Python SDK as the client (`sdk_client.py`): a tool call
//! from the OpenAI primary, the primary down, the tool result answered by the
//! Anthropic secondary, then a streamed tool call the SDK assembles.
//!
//! The SDK comes from PyPI into a virtual environment under the target
//! directory (`CARGO_TARGET_TMPDIR/openai-sdk-venv`), made on first use;
//! `LLM_PROXY_SDK_PYTHON` names another interpreter that has it.
//! `scripts/test-all.sh` installs `python3` and `python3-venv` on Debian.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::common::CLIENT_KEY;

/// A Python with the `openai` package, installing it first if need be.
fn python_with_sdk() -> PathBuf {
    if let Some(python) = std::env::var_os("LLM_PROXY_SDK_PYTHON") {
        return python.into();
    }
    let venv = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("openai-sdk-venv");
    let python = venv.join("bin").join("python");
    let has_sdk = |python: &PathBuf| {
        Command::new(python)
            .args(["-c", "import openai"])
            .status()
            .is_ok_and(|s| s.success())
    };
    if !has_sdk(&python) {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 runs (scripts/test-all.sh installs it)");
        assert!(made.success(), "python3 -m venv {venv:?} failed");
        let installed = Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "openai"])
            .status()
            .expect("pip runs");
        assert!(installed.success(), "pip install openai failed");
    }
    assert!(has_sdk(&python), "the openai package imports");
    python
}

/// The next JSON line the script prints, within a bound.
async fn next_line(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> Value {
    let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
        .await
        .expect("the SDK client answers in time")
        .expect("its stdout reads")
        .expect("it printed a line before exiting");
    serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_sdk_falls_back_mid_conversation_with_tool_calls() {
    let python = tokio::task::spawn_blocking(python_with_sdk).await.unwrap();
    let env = crate::start().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tools/sdk_client.py");
    let mut child = tokio::process::Command::new(python)
        .arg(script)
        .arg(format!("{}/v1", env.proxy.url()))
        .arg(CLIENT_KEY)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the SDK client starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let arguments: Value = serde_json::from_str(crate::WEATHER_ARGUMENTS).unwrap();

    let call = next_line(&mut lines).await;
    assert_eq!(call["step"], "tool_call");
    assert_eq!(call["tier"], "primary");
    assert_eq!(call["finish_reason"], "tool_calls");
    assert_eq!(call["name"], "get_weather");
    assert_eq!(call["arguments"], arguments);
    let call_id = call["id"].as_str().unwrap().to_owned();

    assert_eq!(next_line(&mut lines).await["step"], "waiting");
    env.primary.set(|o| o.fail_rate = 1.0);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"go\n").await.unwrap();
    stdin.flush().await.unwrap();

    let last = next_line(&mut lines).await;
    assert_eq!(last["step"], "final", "{last}");
    assert_eq!(last["tier"], "secondary");
    assert_eq!(last["degraded"], "true");
    assert_eq!(last["finish_reason"], "stop");
    assert_eq!(last["content"], "Hello from claude. (tool results: 1)");
    let seen = env.secondary.last_request().unwrap();
    assert_eq!(seen.tool_use_ids, std::slice::from_ref(&call_id));
    assert_eq!(seen.tool_result_ids, [call_id]);
    assert_eq!(seen.images, 1);

    let streamed = next_line(&mut lines).await;
    assert_eq!(streamed["step"], "streamed", "{streamed}");
    assert_eq!(streamed["finish_reason"], "tool_calls");
    assert_eq!(streamed["name"], "get_weather");
    assert!(streamed["id"].as_str().unwrap().starts_with("toolu_"));
    assert_eq!(streamed["arguments"], arguments);

    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .expect("the SDK client exits")
        .unwrap();
    assert!(status.success());
}
