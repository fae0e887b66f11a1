//! A mistyped or malformed option stops start-up with a message naming it, never a silent
//! default.

use std::process::Command;

fn run(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_corecast"));
    cmd.args(args)
        .env("SOKETI_PORT", "0")
        .env("SOKETI_HOST", "127.0.0.1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run corecast");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn unknown_variable_is_named() {
    let (code, err) = run(&["start"], &[("SOKETI_PORTT", "7000")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("SOKETI_PORTT"), "{err}");
}

#[test]
fn malformed_value_is_named_with_the_value() {
    let (code, err) = run(&["start"], &[("SOKETI_DEFAULT_APP_MAX_CONNS", "lots")]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("SOKETI_DEFAULT_APP_MAX_CONNS") && err.contains("lots"),
        "{err}"
    );
}

#[test]
fn unknown_config_file_key_is_named() {
    let dir = std::env::temp_dir().join(format!("corecast-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("config.json");
    std::fs::write(&file, r#"{"port": 6001, "apManager.array.apps": []}"#).expect("write");
    let arg = format!("--config={}", file.display());
    let (code, err) = run(&["start", &arg], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("apManager.array.apps"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unknown_command_is_refused() {
    let (code, err) = run(&["serve"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("serve"), "{err}");
}
