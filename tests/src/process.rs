//! The `tillbridge` binary as an operator runs it: built from this workspace once per test
//! process, given a config file written from a [`Config`], its log appended to a file.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use tillbridge_core::config::Config;

/// The workspace's `tillbridge` binary, built (or found up to date) by cargo the first time it is
/// asked for, with the profile of the running test.
pub fn bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        escargot::CargoBuild::new()
            .manifest_path(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml"))
            .package("tillbridge")
            .bin("tillbridge")
            .current_release()
            .run()
            .expect("build the tillbridge binary")
            .path()
            .to_owned()
    })
}

/// A file of the workspace, named from its root (`deploy/tillbridge.example.toml`).
pub fn workspace_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// `tillbridge` with no argument yet.
pub fn tillbridge() -> Command {
    Command::new(bin())
}

/// `tillbridge --config <file>`, the file written from `config` next to its state directory.
pub fn with_config(config: &Config) -> Command {
    let mut cmd = tillbridge();
    cmd.arg("--config").arg(config_file(config));
    cmd
}

/// Writes `config` as the TOML an operator would write (`<state dir>.toml`) and returns its
/// path. Unset sections are left out.
pub fn config_file(config: &Config) -> PathBuf {
    fn strip_nulls(v: &mut serde_json::Value) {
        if let serde_json::Value::Object(m) = v {
            m.retain(|_, v| !v.is_null());
            m.values_mut().for_each(strip_nulls);
        }
    }
    let mut value = serde_json::to_value(config).expect("config as JSON");
    strip_nulls(&mut value);
    let toml = toml::to_string(&toml::Value::try_from(value).expect("config as TOML"))
        .expect("config as TOML");
    let path = config.state.dir.with_extension("toml");
    std::fs::write(&path, toml).expect("write config file");
    path
}

/// Spawns `cmd` with its stderr (the log) appended to `log` and its stdout discarded.
pub fn spawn_logged(cmd: &mut Command, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open log file");
    cmd.stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn tillbridge")
}

/// The panic a log file holds (its message, before the backtrace that would fill its tail).
pub fn panic_of(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    match lines.iter().position(|l| l.contains("panicked at")) {
        Some(i) => format!(
            "panic:\n{}\n",
            lines[i..(i + 3).min(lines.len())].join("\n")
        ),
        None => String::new(),
    }
}

/// The last 40 lines of a log file, for a failure message.
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Runs `cmd` to its end and returns (success, stdout, stderr).
pub fn output(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().expect("run tillbridge");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Sends SIGTERM to `child`, as a supervisor stops a process.
pub fn send_sigterm(child: &Child) {
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(sent.success(), "kill -TERM failed");
}

/// Sends SIGTERM to `child` and waits for it to exit (it drains); panics unless it exits
/// successfully.
pub fn terminate(child: &mut Child) {
    send_sigterm(child);
    let status = child.wait().expect("wait for tillbridge");
    assert!(
        status.success(),
        "tillbridge exited with {status} after SIGTERM"
    );
}

/// A `tillbridge` child with a state directory and a log file of its own, started, stopped
/// (SIGTERM) and killed (SIGKILL) at will, as a supervisor would.
#[derive(Debug)]
pub struct Instance {
    pub config: Config,
    pub log: PathBuf,
    args: Vec<String>,
    log_filter: String,
    child: Option<Child>,
}

impl Instance {
    /// An instance of `config` with its state in `dir/{name}` and its log in `dir/{name}.log`,
    /// run with `args` and the `TILLBRIDGE_LOG` filter `log_filter`.
    pub fn new(config: &Config, dir: &Path, name: &str, args: &[&str], log_filter: &str) -> Self {
        let mut config = config.clone();
        config.state.dir = dir.join(name);
        Instance {
            config,
            log: dir.join(format!("{name}.log")),
            args: args.iter().map(|a| a.to_string()).collect(),
            log_filter: log_filter.to_owned(),
            child: None,
        }
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "started twice");
        self.child = Some(spawn_logged(
            with_config(&self.config)
                .args(&self.args)
                .env("TILLBRIDGE_LOG", &self.log_filter),
            &self.log,
        ));
    }

    /// Whether it was started and not stopped; panics, with its log, if it exited by itself.
    pub fn running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => {
                assert!(
                    c.try_wait().expect("try_wait").is_none(),
                    "an instance exited; {}log:\n{}",
                    panic_of(&self.log),
                    log_tail(&self.log)
                );
                true
            }
            None => false,
        }
    }

    /// SIGTERM: it drains and leaves its groups; panics unless it exits successfully.
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("not running");
        send_sigterm(&child);
        let status = child.wait().expect("wait");
        assert!(
            status.success(),
            "an instance ended with {status} after SIGTERM; log:\n{}",
            log_tail(&self.log)
        );
    }

    /// SIGKILL: no drain, no leave; a group notices when the member's session expires.
    pub fn kill(&mut self) {
        let mut c = self.child.take().expect("not running");
        c.kill().expect("kill");
        c.wait().expect("wait");
    }

    /// Everything it logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A failed test leaves no process behind.
impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `scripts/test-broker.sh {action} {dir}` and returns what it printed (for `start`, the
/// broker's address).
pub fn broker_script(action: &str, dir: &Path) -> String {
    let out = Command::new("bash")
        .arg(workspace_file("scripts/test-broker.sh"))
        .arg(action)
        .arg(dir)
        .output()
        .expect("run test-broker.sh");
    assert!(
        out.status.success(),
        "test-broker.sh {action}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A broker of a test's own (its files in `dir`), killed whatever happens to the test.
#[derive(Debug)]
pub struct OwnBroker {
    pub dir: PathBuf,
    pub address: String,
}

impl OwnBroker {
    /// Starts a broker in `dir` (the shared broker's presence says the jars are installed).
    pub fn start(dir: &Path) -> OwnBroker {
        let address = broker_script("start", dir);
        OwnBroker {
            dir: dir.to_owned(),
            address,
        }
    }

    /// The broker a bench runs against: the one in `TILLBRIDGE_TEST_KAFKA`, else one of its
    /// own in `dir` (returned too, so it lives as long as the bench).
    pub fn for_bench(dir: &Path) -> (String, Option<OwnBroker>) {
        match std::env::var("TILLBRIDGE_TEST_KAFKA") {
            Ok(b) if !b.is_empty() => (b, None),
            _ => {
                let own = OwnBroker::start(&dir.join("broker"));
                (own.address.clone(), Some(own))
            }
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&self) {
        broker_script("kill", &self.dir);
    }

    /// Starts it again on the same ports and data; panics if the address changed.
    pub fn restart(&self) {
        assert_eq!(
            broker_script("start", &self.dir),
            self.address,
            "same address"
        );
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(workspace_file("scripts/test-broker.sh"))
            .arg("kill")
            .arg(&self.dir)
            .output();
    }
}
