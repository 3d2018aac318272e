//! Caddy as berth's modules configure it, for tests/caddy.rs: the
//! Caddyfile nixpkgs' caddy module assembles from berth's virtual hosts
//! (nix/lib/caddy.nix's `caddyfile`, evaluated with `nix-instantiate`),
//! formatted with `caddy fmt` as the module does; Debian's caddy run on it
//! (`adapt`, `validate`) on this machine, with no network and its files in
//! a directory of the test's own; and caddy.service in a systemd lab host,
//! as NixOS runs it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

use super::app::World;

/// Debian's caddy (scripts/install-deps installs it).
pub const CADDY: &str = "/usr/bin/caddy";

/// Where nixpkgs' module writes the Caddyfile on a host (`/etc/caddy/caddy_config`).
pub const CONFIG: &str = "/etc/caddy/caddy_config";

/// The root certificate of Caddy's internal CA in the lab host: the caddy
/// user's home is /var/lib/caddy, and Caddy keeps its data in
/// `$HOME/.local/share/caddy`.
pub const ROOT_CA: &str = "/var/lib/caddy/.local/share/caddy/pki/authorities/local/root.crt";

/// The Caddyfile nixpkgs' module assembles for `services` (Nix text of an
/// attribute set of `berth.services` definitions, name -> the options set,
/// e.g. `{ notes = { enable = true; port = 8090; domain = "notes.test"; }; }`),
/// `extra_global` added to `services.caddy.globalConfig` and access logs in
/// `log_dir`, before `caddy fmt`.
pub fn assemble(services: &str, extra_global: &str, log_dir: &str) -> String {
    let expr = format!(
        "{{ extra, logDir }}: let lib = import ./nix/lib {{ }}; \
         caddy = import ./nix/lib/caddy.nix; in \
         caddy.caddyfile {{ services = builtins.mapAttrs lib.serviceDefaults ({services}); \
         extraGlobalConfig = extra; inherit logDir; }}"
    );
    super::nix_eval(&expr, &[("extra", extra_global), ("logDir", log_dir)])
        .as_str()
        .expect("the Caddyfile is a string")
        .to_owned()
}

/// What a NixOS host gets: [`assemble`], then `caddy fmt` (the module runs
/// `caddy fmt --overwrite` on it; this reads the same formatter's stdout).
pub fn caddyfile(services: &str, extra_global: &str, log_dir: &str) -> String {
    fmt(&assemble(services, extra_global, log_dir))
}

/// `caddy fmt` of `text`.
pub fn fmt(text: &str) -> String {
    let out = run_with_stdin(Command::new(CADDY).args(["fmt", "-"]), text);
    assert!(
        out.status.success(),
        "caddy fmt: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("caddy fmt writes UTF-8")
}

fn run_with_stdin(cmd: &mut Command, text: &str) -> Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{CADDY} does not start ({e}): run scripts/install-deps"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// `caddy version`'s (major, minor, patch), e.g. (2, 6, 2).
pub fn version() -> (u32, u32, u32) {
    let out = Command::new(CADDY)
        .arg("version")
        .output()
        .unwrap_or_else(|e| panic!("{CADDY} does not start ({e}): run scripts/install-deps"));
    let text = String::from_utf8_lossy(&out.stdout);
    let word = text.split_whitespace().next().unwrap_or("");
    let mut parts = word
        .trim_start_matches('v')
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse().unwrap_or(0));
    let mut next = || parts.next().unwrap_or(0);
    (next(), next(), next())
}

/// Whether this caddy has the module `id` (`caddy list-modules`).
pub fn has_module(id: &str) -> bool {
    let out = Command::new(CADDY).arg("list-modules").output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|line| line.trim() == id)
}

/// A directory of its own for Caddy's files when it runs on this machine
/// (`HOME`, `XDG_DATA_HOME`, `XDG_CONFIG_HOME`: `validate` provisions the
/// TLS app, which writes its CA and storage there), removed on drop.
pub struct Sandbox {
    dir: PathBuf,
}

impl Sandbox {
    pub fn new(name: &str) -> Sandbox {
        let dir = std::env::temp_dir().join(format!("berth-caddy-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Sandbox { dir }
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// `caddy <verb> --config <file> --adapter caddyfile` on `caddyfile`, in
    /// an empty network namespace (`unshare --net`: Caddy reaches nothing,
    /// not even loopback, whatever it would try), with its files here.
    /// Ok(stdout), or Err(the `Error: …` line Caddy ends with).
    fn caddy(&self, verb: &str, caddyfile: &str) -> Result<String, String> {
        let file = self.dir.join("Caddyfile");
        std::fs::write(&file, caddyfile).unwrap();
        let out = Command::new("unshare")
            .args(["--net", CADDY, verb, "--config"])
            .arg(&file)
            .args(["--adapter", "caddyfile"])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", &self.dir)
            .env("XDG_DATA_HOME", self.dir.join("data"))
            .env("XDG_CONFIG_HOME", self.dir.join("config"))
            .output()
            .expect("unshare runs");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        let error = stderr
            .lines()
            .filter_map(|line| line.strip_prefix("Error: "))
            .next_back()
            .unwrap_or_else(|| panic!("caddy {verb} failed without an `Error:` line: {stderr}"));
        // The file as `Caddyfile`, wherever the sandbox is.
        Err(error.replace(file.to_str().unwrap(), "Caddyfile"))
    }

    /// `caddy adapt`: the JSON config Caddy makes of `caddyfile`.
    pub fn adapt(&self, caddyfile: &str) -> Result<Value, String> {
        self.caddy("adapt", caddyfile)
            .map(|json| serde_json::from_str(&json).expect("caddy adapt prints JSON"))
    }

    /// `caddy validate`: adapted, and every module provisioned.
    pub fn validate(&self, caddyfile: &str) -> Result<(), String> {
        self.caddy("validate", caddyfile).map(drop)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The lines (from 1) of the one block of `caddyfile` that opens with the
/// line `<opening> {` (at any indentation) and ends at its closing brace;
/// panics unless there is exactly one.
pub fn block_lines(caddyfile: &str, opening: &str) -> std::ops::RangeInclusive<usize> {
    let lines: Vec<&str> = caddyfile.lines().collect();
    let opening = format!("{opening} {{");
    let starts: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].trim() == opening)
        .collect();
    assert_eq!(
        starts.len(),
        1,
        "one `{opening}` block expected in:\n{caddyfile}"
    );
    let mut depth = 0usize;
    for (i, line) in lines.iter().enumerate().skip(starts[0]) {
        depth += line.matches('{').count();
        depth -= line.matches('}').count();
        if depth == 0 {
            return starts[0] + 1..=i + 1;
        }
    }
    panic!("`{opening}` is never closed in:\n{caddyfile}");
}

/// `caddyfile` without the block of [`block_lines`], and that block.
pub fn cut_block(caddyfile: &str, opening: &str) -> (String, String) {
    let range = block_lines(caddyfile, opening);
    let (mut kept, mut block) = (String::new(), String::new());
    for (i, line) in caddyfile.lines().enumerate() {
        let to = if range.contains(&(i + 1)) {
            &mut block
        } else {
            &mut kept
        };
        to.push_str(line);
        to.push('\n');
    }
    (kept, block)
}

/// A Caddyfile parse error as Caddy reports it, `<context>Caddyfile:<line>
/// - Error during parsing: <message>`, split in its three parts.
pub fn parse_error(error: &str) -> (&str, usize, &str) {
    let (context, rest) = error
        .split_once("Caddyfile:")
        .unwrap_or_else(|| panic!("not a Caddyfile parse error: {error}"));
    let (line, message) = rest
        .split_once(" - Error during parsing: ")
        .unwrap_or_else(|| panic!("not a Caddyfile parse error: {error}"));
    (context, line.parse().expect("a line number"), message)
}

/// `text` without its blank lines: a Caddyfile cut by [`cut_block`] may
/// keep the blank line that stood before the block.
pub fn without_blank_lines(text: &str) -> String {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Every JSON object under `value` (itself included) whose `key` is `want`.
pub fn objects_with<'a>(value: &'a Value, key: &str, want: &str) -> Vec<&'a Value> {
    let mut found = Vec::new();
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(map) => {
                if map.get(key).and_then(Value::as_str) == Some(want) {
                    found.push(v);
                }
                stack.extend(map.values());
            }
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    found
}

/// Runs Caddy in the lab host as NixOS does: the Caddyfile at [`CONFIG`],
/// Debian's caddy.service (the upstream unit nixpkgs' package installs too)
/// with the settings nixpkgs' module gives it, started and ready
/// (`Type=notify`). The lab masked caddy.service, as it masks every service
/// of the machine; this unmasks it in the lab host only.
pub async fn start_in(w: &World, caddyfile: &str) {
    w.sh("mkdir -p /etc/caddy").await;
    w.write(CONFIG, caddyfile).await;
    // nixpkgs' module: ExecStart and ExecReload replaced, its data and log
    // directories, restarts, and its three sandboxing settings.
    let dropin = format!(
        "[Service]\n\
         ExecStart=\n\
         ExecStart={CADDY} run --config {CONFIG} --adapter caddyfile\n\
         ExecReload=\n\
         ExecReload={CADDY} reload --config {CONFIG} --adapter caddyfile --force\n\
         User=caddy\n\
         Group=caddy\n\
         ReadWritePaths=/var/lib/caddy\n\
         StateDirectory=caddy\n\
         LogsDirectory=caddy\n\
         Restart=on-failure\n\
         RestartPreventExitStatus=1\n\
         RestartSec=5s\n\
         NoNewPrivileges=true\n\
         PrivateDevices=true\n\
         ProtectHome=true\n"
    );
    w.sh("rm -f /etc/systemd/system/caddy.service && mkdir -p /etc/systemd/system/caddy.service.d")
        .await;
    w.write("/etc/systemd/system/caddy.service.d/nixos.conf", &dropin)
        .await;
    let started = w
        .sh(
            "systemctl daemon-reload && systemctl start caddy.service; echo rc=$?; \
             systemctl is-active caddy.service; journalctl -u caddy.service -o cat | tail -n 20",
        )
        .await;
    assert!(
        started.starts_with("rc=0\nactive\n"),
        "caddy.service did not start:\n{started}"
    );
}
