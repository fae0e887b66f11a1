//! The command line: `--version`, help, `corecast config` and the refusal of unknown words.
//! Each run gets a clean environment (PATH only), so the caller's SOKETI_* variables do not
//! leak in.

use std::path::{Path, PathBuf};
use std::process::Command;

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_corecast"));
    cmd.args(args).env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().expect("run corecast");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A config file in a directory of its own, removed on drop.
struct ConfigFile {
    dir: PathBuf,
    path: PathBuf,
}

impl ConfigFile {
    fn new(name: &str, text: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("corecast-cli-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("config.json");
        std::fs::write(&path, text).expect("write");
        Self { dir, path }
    }

    fn path(&self) -> &str {
        self.path.to_str().expect("UTF-8 temp path")
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The cells of the table line that starts with `first`, split at runs of two spaces.
fn row<'a>(table: &'a str, first: &str) -> Vec<&'a str> {
    let line = table
        .lines()
        .find(|l| l.split("  ").next() == Some(first))
        .unwrap_or_else(|| panic!("no line for {first} in:\n{table}"));
    line.split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

#[test]
fn version_names_the_crate_version_and_the_commit() {
    let git_checkout = Path::new(env!("CARGO_MANIFEST_DIR")).join(".git").exists();
    for flag in ["--version", "-V"] {
        let r = run(&[flag], &[]);
        assert_eq!(r.code, Some(0), "{}", r.stderr);
        let line = r.stdout.trim_end();
        let prefix = format!("corecast {}", env!("CARGO_PKG_VERSION"));
        let rest = line
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("{line}"));
        if git_checkout {
            let hash = rest
                .strip_prefix(" (")
                .and_then(|r| r.strip_suffix(')'))
                .unwrap_or_else(|| panic!("no commit in {line:?}"));
            assert_eq!(hash.len(), 12, "{line}");
            assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()), "{line}");
        } else {
            assert_eq!(rest, "", "{line}");
        }
    }
}

#[test]
fn help_lists_the_commands_options_and_where_variables_are() {
    for args in [&["--help"][..], &["help"], &["-h"]] {
        let r = run(args, &[]);
        assert_eq!(r.code, Some(0), "{args:?}: {}", r.stderr);
        for word in [
            "start",
            "config",
            "SOKETI_*",
            "CORECAST_*",
            "src/config/env.rs",
        ] {
            assert!(
                r.stdout.contains(word),
                "{args:?} lacks {word}:\n{}",
                r.stdout
            );
        }
    }
    for args in [&["start", "--help"][..], &["help", "start"]] {
        let r = run(args, &[]);
        assert_eq!(r.code, Some(0), "{args:?}: {}", r.stderr);
        assert!(r.stdout.contains("--config"), "{}", r.stdout);
    }
    let r = run(&["config", "--help"], &[]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(
        r.stdout.contains("--config") && r.stdout.contains("--json"),
        "{}",
        r.stdout
    );
}

#[test]
fn no_command_prints_usage_and_fails() {
    let r = run(&[], &[]);
    assert_eq!(r.code, Some(2));
    assert!(r.stderr.contains("Usage: corecast"), "{}", r.stderr);
}

const SOKETI_ENV: &[(&str, &str)] = &[
    ("SOKETI_PORT", "7001"),
    ("SOKETI_DEFAULT_APP_SECRET", "s3cr3t-value"),
    ("SOKETI_DB_REDIS_PASSWORD", "hunter2"),
    ("SOKETI_ADAPTER_DRIVER", "redis"),
    ("SOKETI_CACHE_DRIVER", "redis"),
    // Empty counts as unset, as in Soketi.
    ("SOKETI_PATH_PREFIX", ""),
];

const FILE: &str = r#"{
    "metrics": {"port": 9700},
    "database.redis.host": "10.0.0.5",
    "appManager.array.apps": [
        {"id": "a1", "key": "k1", "secret": "file-secret-1", "maxConnections": 50},
        {"id": "a2", "key": "k2", "secret": "file-secret-2"}
    ]
}"#;

const SECRETS: &[&str] = &["s3cr3t-value", "hunter2", "file-secret-1", "file-secret-2"];

#[test]
fn config_prints_effective_values_and_their_sources() {
    let file = ConfigFile::new("table", FILE);
    let r = run(&["config", "--config", file.path()], SOKETI_ENV);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let t = &r.stdout;
    assert!(t.contains(&format!("config file: {}", file.path())), "{t}");
    let header = row(t, "VARIABLE");
    assert_eq!(header, ["VARIABLE", "KEY", "VALUE", "SOURCE", "NOTE"]);
    let expect = [
        ("SOKETI_PORT", "port", "7001", "env"),
        ("SOKETI_ADAPTER_DRIVER", "adapter.driver", "redis", "env"),
        (
            "SOKETI_DB_REDIS_PASSWORD",
            "database.redis.password",
            "****",
            "env",
        ),
        (
            "SOKETI_DEFAULT_APP_SECRET",
            "appManager.array.apps.0.secret",
            "****",
            "env",
        ),
        ("SOKETI_METRICS_SERVER_PORT", "metrics.port", "9700", "file"),
        (
            "SOKETI_DB_REDIS_HOST",
            "database.redis.host",
            "10.0.0.5",
            "file",
        ),
        (
            "SOKETI_DEFAULT_APP_ID",
            "appManager.array.apps.0.id",
            "a1",
            "file",
        ),
        (
            "SOKETI_DEFAULT_APP_MAX_CONNS",
            "appManager.array.apps.0.maxConnections",
            "50",
            "file",
        ),
        ("SOKETI_HOST", "host", "0.0.0.0", "default"),
        (
            "SOKETI_DB_REDIS_PORT",
            "database.redis.port",
            "6379",
            "default",
        ),
        ("SOKETI_PATH_PREFIX", "pathPrefix", "(unset)", "default"),
        ("SOKETI_SSL_PASS", "ssl.passphrase", "(unset)", "default"),
        ("SOKETI_CACHE_DRIVER", "cache.driver", "redis", "env"),
    ];
    for (name, key, value, source) in expect {
        let cells = row(t, name);
        assert_eq!(&cells[..4], [name, key, value, source], "{name}");
    }
    let cache = row(t, "SOKETI_CACHE_DRIVER");
    assert!(cache[4].starts_with("ignored"), "{cache:?}");
    assert_eq!(row(t, "SOKETI_PORT").len(), 4, "not marked ignored");
    assert_eq!(row(t, "0"), ["0", "a1", "k1", "****", "file+env"]);
    assert_eq!(row(t, "1"), ["1", "a2", "k2", "****", "file"]);
    for secret in SECRETS {
        assert!(!t.contains(secret), "{secret} printed:\n{t}");
    }
}

#[test]
fn config_json_has_the_same_content() {
    let file = ConfigFile::new("json", FILE);
    let arg = format!("--config={}", file.path());
    let r = run(&["config", &arg, "--json"], SOKETI_ENV);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    for secret in SECRETS {
        assert!(
            !r.stdout.contains(secret),
            "{secret} printed:\n{}",
            r.stdout
        );
    }
    let v: serde_json::Value = serde_json::from_str(&r.stdout).expect("JSON");
    assert_eq!(v["config_file"], file.path());
    let options = v["options"].as_array().expect("options");
    let find = |name: &str| {
        options
            .iter()
            .find(|o| o["name"] == name)
            .unwrap_or_else(|| panic!("{name}"))
    };
    assert_eq!(find("SOKETI_PORT")["value"], "7001");
    assert_eq!(find("SOKETI_PORT")["source"], "env");
    assert_eq!(find("SOKETI_METRICS_SERVER_PORT")["source"], "file");
    assert_eq!(find("SOKETI_DEFAULT_APP_SECRET")["value"], "****");
    assert_eq!(find("SOKETI_DEFAULT_APP_SECRET")["secret"], true);
    assert_eq!(find("SOKETI_CACHE_DRIVER")["ignored"], true);
    assert_eq!(find("SOKETI_PORT")["ignored"], false);
    assert!(find("SOKETI_SSL_PASS")["value"].is_null());
    let apps = v["apps"].as_array().expect("apps");
    assert_eq!(apps.len(), 2);
    assert_eq!(apps[1]["id"], "a2");
    assert_eq!(apps[1]["secret"], "****");
}

#[test]
fn config_without_anything_set_is_soketis_default() {
    let r = run(&["config"], &[]);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    let t = &r.stdout;
    assert!(t.contains("config file: none"), "{t}");
    assert_eq!(row(t, "SOKETI_PORT")[2..], ["6001", "default"]);
    assert_eq!(row(t, "0"), ["0", "app-id", "app-key", "****", "default"]);
    assert!(!t.contains("app-secret"), "{t}");
}

#[test]
fn invalid_configuration_fails_config_as_it_fails_start() {
    let file = ConfigFile::new("bad", r#"{"port": 6001, "apManager.array.apps": []}"#);
    let arg = format!("--config={}", file.path());
    // (extra arguments, environment, the option the error names)
    type Case<'a> = (Vec<&'a str>, &'a [(&'a str, &'a str)], &'a str);
    let cases: [Case; 3] = [
        (vec![], &[("SOKETI_PORT", "http")], "SOKETI_PORT"),
        (vec![], &[("SOKETI_PORTT", "7000")], "SOKETI_PORTT"),
        (vec![&arg], &[], "apManager.array.apps"),
    ];
    for (args, env, named) in cases {
        let config = run(&[&["config"], &args[..]].concat(), env);
        let start = run(&[&["start"], &args[..]].concat(), env);
        assert_eq!(config.code, Some(2), "{}", config.stderr);
        assert_eq!(start.code, Some(2), "{}", start.stderr);
        assert!(config.stderr.contains(named), "{}", config.stderr);
        assert_eq!(config.stderr, start.stderr);
        assert_eq!(config.stdout, "");
    }
}

#[test]
fn unknown_options_and_commands_are_named_and_exit_2() {
    for args in [
        &["start", "--bogus"][..],
        &["config", "--bogus"],
        &["--bogus"],
    ] {
        let r = run(args, &[]);
        assert_eq!(r.code, Some(2), "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains("'--bogus'"), "{args:?}: {}", r.stderr);
    }
    let r = run(&["frobnicate"], &[]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("'frobnicate'"), "{}", r.stderr);
    let r = run(&["start", "extra"], &[]);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("'extra'"), "{}", r.stderr);
}
