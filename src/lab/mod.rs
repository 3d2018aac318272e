//! The lab: throwaway target hosts on this machine, each in its own network
//! namespace with its own sshd, keys and empty `/nix`; a systemd host boots a
//! container (systemd-nspawn) on an overlay of `/`. The hosts and the machine
//! meet on one bridge in a switch namespace, each over its own veth pair,
//! optionally rate-limited (see [`Shaping`]). Everything made is recorded in
//! the lab directory first, so [`Lab::down`] removes it all, also after a
//! crash.

mod files;
mod net;
mod procs;
mod shape;
mod state;

pub use net::{HostNet, SwitchNet, MAX_HOSTS};
pub use shape::{Rate, Shaping, RATE_SYNTAX};
pub use state::{HostKind, LabHost};

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::host::{ConnectError, Destination, Host, SshHost, SshSettings};
use crate::process::{self, Cmd, CommandError, JobLog, Via};
use state::{state_file, LabState};

/// Where labs are recorded when no `--lab-dir` is given.
pub const DEFAULT_DIR: &str = "/srv/berth-lab";
/// The agent's state directory, private to each host.
const AGENT_STATE_DIR: &str = "/var/lib/berth";
/// The agent's settings directory (agent.json, app manifests), private to
/// each plain host, so a test can make one host require signatures.
const AGENT_ETC_DIR: &str = "/etc/berth";
/// Slot claims, one file per lab on this machine.
const SLOTS_DIR: &str = "/run/berth-lab/slots";
/// How long a host may take to answer SSH (a container boots first).
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a host's process may take to stop after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// Programs the lab needs, and the Debian package of each.
const NEEDS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("sshd", "openssh-server"),
    ("ssh", "openssh-client"),
    ("ssh-keygen", "openssh-client"),
    ("nix", "nix-bin"),
    ("unshare", "util-linux"),
    ("mount", "mount"),
];
const NEEDS_SYSTEMD: &[(&str, &str)] = &[("systemd-nspawn", "systemd-container")];
const NEEDS_SHAPING: &[(&str, &str)] = &[("tc", "iproute2")];

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("the lab needs root: it makes network namespaces, mounts and containers")]
    NotRoot,
    #[error("the lab needs {} which {} not installed", .programs.join(", "), if .programs.len() == 1 { "is" } else { "are" })]
    Missing {
        programs: Vec<String>,
        packages: Vec<String>,
    },
    #[error("a lab is already up in {}", .0.display())]
    AlreadyUp(PathBuf),
    #[error("no lab is up in {}", .0.display())]
    NotUp(PathBuf),
    #[error("cannot use {} as a lab directory: {why}", .dir.display())]
    BadDir { dir: PathBuf, why: &'static str },
    #[error("a lab holds 1 to {MAX_HOSTS} hosts, not {0}")]
    HostCount(usize),
    #[error("this machine already holds {} labs", net::SLOTS)]
    NoFreeSlot,
    #[error("the lab has no host `{name}` (it has {known})")]
    UnknownHost { name: String, known: String },
    #[error("could not {what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("lab host {host} did not come up: {why}{}", render_log(.log))]
    NotReady {
        host: String,
        why: String,
        log: Vec<String>,
    },
    #[error("the lab in {} was not removed completely:\n  {}", .dir.display(), .problems.join("\n  "))]
    Teardown { dir: PathBuf, problems: Vec<String> },
}

impl crate::error::Diagnose for LabError {
    fn diagnosis(&self) -> crate::error::Diagnosis {
        crate::error::Diagnosis {
            hint: self.hint(),
            usage: self.is_usage(),
        }
    }
}

impl LabError {
    pub fn hint(&self) -> Option<String> {
        match self {
            LabError::NotRoot => Some("run it as root, e.g. `sudo berth lab up`".into()),
            LabError::Missing { packages, .. } => Some(format!(
                "install them: `apt-get install -y {}` (or run scripts/install-deps)",
                packages.join(" ")
            )),
            LabError::AlreadyUp(_) => {
                Some("run `berth lab down` first, or pick another `--lab-dir`".into())
            }
            LabError::NotUp(_) => Some("start one with `berth lab up`".into()),
            LabError::NotReady { log, .. }
                if log.iter().any(|l| l.contains("mount point does not exist")) =>
            {
                Some("a directory the lab binds over (such as /nix) is missing on this machine: create it (`mkdir -p /nix`) or run scripts/install-deps, then `berth lab down` and up again".into())
            }
            LabError::Teardown { .. } => Some(
                "fix what is listed, then run `berth lab down` again: it only removes what the lab recorded".into(),
            ),
            _ => None,
        }
    }

    /// Errors in how berth was called or set up rather than in what it did.
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            LabError::NotRoot
                | LabError::Missing { .. }
                | LabError::AlreadyUp(_)
                | LabError::NotUp(_)
                | LabError::BadDir { .. }
                | LabError::HostCount(_)
                | LabError::UnknownHost { .. }
        )
    }
}

fn render_log(lines: &[String]) -> String {
    if lines.is_empty() {
        return String::new();
    }
    format!("; its log ended with:\n    {}", lines.join("\n    "))
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> LabError {
    let what = what.into();
    move |source| LabError::Io { what, source }
}

/// A lab that is up, as recorded in its directory.
#[derive(Debug)]
pub struct Lab {
    dir: PathBuf,
    state: LabState,
}

impl Lab {
    /// Makes hosts `h1`, `h2`, … of the given kinds and waits until each
    /// answers SSH (and a systemd host has booted). On failure, removes
    /// whatever it made before returning the error.
    pub async fn up(dir: &Path, kinds: &[HostKind]) -> Result<Lab, LabError> {
        Lab::up_shaped(dir, kinds, Shaping::default()).await
    }

    /// As [`Lab::up`], with the uplink and each host's link limited to the
    /// rates of `shaping`.
    pub async fn up_shaped(
        dir: &Path,
        kinds: &[HostKind],
        shaping: Shaping,
    ) -> Result<Lab, LabError> {
        check_dir(dir)?;
        check_prerequisites(kinds, &shaping)?;
        if kinds.is_empty() || kinds.len() > MAX_HOSTS as usize {
            return Err(LabError::HostCount(kinds.len()));
        }
        if state_file(dir).exists() {
            return Err(LabError::AlreadyUp(dir.to_owned()));
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(format!("create {}", dir.display())))?;
        let slot = claim_slot(dir)?;
        let mut lab = Lab {
            dir: dir.to_owned(),
            state: LabState {
                slot,
                switch: None,
                shaping,
                hosts: Vec::new(),
            },
        };
        lab.save()?;
        if let Err(err) = lab.build(kinds).await {
            if let Err(down) = Lab::down(dir).await {
                tracing::error!("cleaning up the failed lab: {down}");
            }
            return Err(err);
        }
        Ok(lab)
    }

    /// The lab recorded in `dir`.
    pub fn open(dir: &Path) -> Result<Lab, LabError> {
        match LabState::load(dir) {
            Ok(state) => Ok(Lab {
                dir: dir.to_owned(),
                state,
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(LabError::NotUp(dir.to_owned())),
            Err(e) => Err(io_err(format!("read {}", state_file(dir).display()))(e)),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn hosts(&self) -> &[LabHost] {
        &self.state.hosts
    }

    /// The switch the hosts and the machine meet on.
    pub fn switch(&self) -> Option<&SwitchNet> {
        self.state.switch.as_ref()
    }

    /// The rates the lab's links are limited to.
    pub fn shaping(&self) -> &Shaping {
        &self.state.shaping
    }

    pub fn host(&self, name: &str) -> Result<&LabHost, LabError> {
        self.state
            .hosts
            .iter()
            .find(|h| h.name == name)
            .ok_or_else(|| LabError::UnknownHost {
                name: name.to_owned(),
                known: self
                    .state
                    .hosts
                    .iter()
                    .map(|h| h.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Whether the host's process is still the one the lab started.
    pub fn is_running(&self, host: &LabHost) -> bool {
        host.pid
            .is_some_and(|pid| process::alive(pid) && procs::is_ours(pid, &host.process_tag()))
    }

    /// The ssh_config with an alias per host (`ssh -F <it> h1`).
    pub fn ssh_config(&self) -> PathBuf {
        self.dir.join("ssh_config")
    }

    /// SSH settings that reach the lab's hosts by alias.
    pub fn ssh_settings(&self) -> SshSettings {
        SshSettings {
            config_file: Some(self.ssh_config()),
            ..SshSettings::default()
        }
    }

    /// Opens an SSH connection to a lab host.
    pub async fn connect(&self, name: &str) -> Result<SshHost, LabError> {
        let host = self.host(name)?;
        let destination = Destination::parse(&host.name).expect("lab host names are valid");
        Ok(SshHost::connect(&destination, &self.ssh_settings()).await?)
    }

    /// Reboots a systemd host: powers its container off and boots it again
    /// on the same root, as a real host's reboot keeps its disk.
    pub async fn reboot(&mut self, name: &str) -> Result<(), LabError> {
        let i = self
            .state
            .hosts
            .iter()
            .position(|h| h.name == name)
            .ok_or_else(|| self.host(name).unwrap_err())?;
        let host = self.state.hosts[i].clone();
        if host.kind != HostKind::Systemd {
            return Err(LabError::NotReady {
                host: host.name,
                why: "only a systemd host can reboot".into(),
                log: Vec::new(),
            });
        }
        if let Some(pid) = host.pid {
            procs::stop(pid, &host.process_tag(), STOP_GRACE)
                .await
                .map_err(|why| LabError::NotReady {
                    host: host.name.clone(),
                    why,
                    log: log_tail(&host),
                })?;
        }
        let pid = process::spawn_detached(&nspawn_cmd(&host), &host.log_file())?;
        self.state.hosts[i].pid = Some(pid);
        self.save()?;
        self.wait_ready(&self.state.hosts[i]).await
    }

    fn save(&self) -> Result<(), LabError> {
        self.state
            .save(&self.dir)
            .map_err(io_err(format!("write {}", state_file(&self.dir).display())))
    }

    async fn build(&mut self, kinds: &[HostKind]) -> Result<(), LabError> {
        let log = JobLog::new();
        let client_key = self.dir.join("id_ed25519");
        keygen(&client_key, "berth-lab-client", &log).await?;
        let client_pub = read(&client_key.with_extension("pub"))?;
        write(&self.dir.join("authorized_keys"), &client_pub, 0o600)?;

        let switch = net::switch_net(self.state.slot);
        self.state.switch = Some(switch.clone());
        self.save()?;
        for cmd in switch_cmds(&switch, self.state.shaping.uplink.as_ref()) {
            run(&cmd, &log).await?;
        }

        for (i, &kind) in kinds.iter().enumerate() {
            let index = i as u8 + 1;
            let host = LabHost::new(
                index,
                kind,
                net::host_net(self.state.slot, index),
                &self.dir.join(net::host_name(index)),
            );
            self.state.hosts.push(host);
            self.save()?;
            self.make_host(i, &client_pub, &log).await?;
        }
        self.write_ssh_files()?;
        for host in &self.state.hosts {
            self.wait_ready(host).await?;
        }
        Ok(())
    }

    async fn make_host(
        &mut self,
        i: usize,
        client_pub: &str,
        log: &JobLog,
    ) -> Result<(), LabError> {
        let dir = self.state.hosts[i].dir.clone();
        mkdir(&dir)?;
        mkdir(&self.state.hosts[i].nix_dir())?;
        let host_key = dir.join("ssh_host_ed25519_key");
        keygen(
            &host_key,
            &format!("berth-lab-{}", self.state.hosts[i].name),
            log,
        )
        .await?;

        self.state.hosts[i].net_made = true;
        self.save()?;
        let switch = self
            .state
            .switch
            .as_ref()
            .expect("the switch is made first");
        let link = self.state.shaping.link.as_ref();
        for cmd in net_cmds(switch, &self.state.hosts[i].net, link) {
            run(&cmd, log).await?;
        }

        let host = &self.state.hosts[i];
        let pid = match host.kind {
            HostKind::Plain => {
                let config = host.dir.join("sshd_config");
                let text =
                    files::plain_sshd_config(host, &host_key, &self.dir.join("authorized_keys"));
                write(&config, &text, 0o600)?;
                // sshd's privilege separation directory, as Debian's unit makes it.
                mkdir(Path::new("/run/sshd"))?;
                // The mount points of the host's own store and agent state:
                // Debian's nix-bin makes `/nix` only when a nix command first
                // runs, and the machine's berth state may never have existed.
                mkdir(Path::new("/nix"))?;
                mkdir(Path::new(AGENT_STATE_DIR))?;
                mkdir(&host.state_dir())?;
                mkdir(Path::new(AGENT_ETC_DIR))?;
                mkdir(&host.etc_dir())?;
                let sshd = process::find_program("sshd").expect("checked in prerequisites");
                let cmd = plain_host_cmd(host, &sshd);
                process::spawn_detached(&cmd, &dir.join("start.log"))?
            }
            HostKind::Systemd => {
                let root = host.root_dir();
                for sub in ["upper", "work", "root"] {
                    mkdir(&dir.join(sub))?;
                }
                self.state.hosts[i].mounts.push(root.clone());
                self.save()?;
                let host = &self.state.hosts[i];
                run(&overlay_mount_cmd(host), log).await?;
                prepare_container_root(host, &host_key, client_pub)?;
                process::spawn_detached(&nspawn_cmd(host), &host.log_file())?
            }
        };
        self.state.hosts[i].pid = Some(pid);
        self.save()
    }

    fn write_ssh_files(&self) -> Result<(), LabError> {
        let known_hosts = self.dir.join("known_hosts");
        let keys = self
            .state
            .hosts
            .iter()
            .map(|h| read(&h.dir.join("ssh_host_ed25519_key.pub")))
            .collect::<Result<Vec<_>, _>>()?;
        let text = files::known_hosts(self.state.hosts.iter().zip(keys.iter().map(String::as_str)));
        write(&known_hosts, &text, 0o644)?;
        let config = files::ssh_config(
            &self.state.hosts,
            &self.dir.join("id_ed25519"),
            &known_hosts,
        );
        write(&self.ssh_config(), &config, 0o644)
    }

    async fn wait_ready(&self, host: &LabHost) -> Result<(), LabError> {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        let not_ready = |why: String| LabError::NotReady {
            host: host.name.clone(),
            why,
            log: log_tail(host),
        };
        loop {
            // Only liveness: the pid was just spawned by us, and until it has
            // exec'd its command line is still berth's own.
            if !host.pid.is_some_and(process::alive) {
                return Err(not_ready("its process exited".into()));
            }
            let connect = tokio::net::TcpStream::connect((host.net.addr, 22));
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), connect).await {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(not_ready(format!(
                    "no SSH on {}:22 after {READY_TIMEOUT:?}",
                    host.net.addr
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if host.kind == HostKind::Systemd {
            let ssh = self.connect(&host.name).await?;
            // Exits non-zero for `degraded`, which is fine for a lab host.
            let booted = ssh
                .output(&Cmd::new("systemctl").args(["is-system-running", "--wait"]))
                .await?;
            let state = booted.stdout_str().trim().to_owned();
            if !matches!(state.as_str(), "running" | "degraded") {
                return Err(not_ready(format!("systemd says `{state}`")));
            }
            tracing::info!(host = host.name, "booted ({state})");
        }
        Ok(())
    }

    /// Removes everything the lab in `dir` recorded: its processes (by pid,
    /// after checking they are still its own), whatever still runs in its
    /// namespaces, its mounts, namespaces (the switch's takes the bridge and
    /// every veth pair with it), the uplink, its slot and directory.
    pub async fn down(dir: &Path) -> Result<(), LabError> {
        let lab = Lab::open(dir)?;
        let log = JobLog::new();
        let mut problems = Vec::new();
        for host in lab.state.hosts.iter().rev() {
            if let Some(pid) = host.pid {
                if let Err(problem) = procs::stop(pid, &host.process_tag(), STOP_GRACE).await {
                    problems.push(format!("{}: {problem}", host.name));
                }
            }
            if host.net_made {
                if let Err(problem) = remove_net(&host.net, &log).await {
                    problems.push(format!("{}: {problem}", host.name));
                }
            }
            for mount in host.mounts.iter().rev() {
                if let Err(problem) = unmount(mount, &log).await {
                    problems.push(format!("{}: {problem}", host.name));
                }
            }
        }
        if let Some(switch) = &lab.state.switch {
            if let Err(problem) = remove_switch(switch, &log).await {
                problems.push(format!("the switch: {problem}"));
            }
        }
        if problems.is_empty() {
            if let Some(mount) = mounts_under(dir).first() {
                problems.push(format!("{} is still mounted", mount.display()));
            }
        }
        if !problems.is_empty() {
            return Err(LabError::Teardown {
                dir: dir.to_owned(),
                problems,
            });
        }
        release_slot(lab.state.slot, dir);
        fs::remove_dir_all(dir).map_err(io_err(format!("remove {}", dir.display())))
    }
}

/// A lab for tests: tears itself down when dropped, also on panic.
pub struct LabGuard {
    lab: Option<Lab>,
}

impl LabGuard {
    pub async fn up(dir: &Path, kinds: &[HostKind]) -> Result<LabGuard, LabError> {
        LabGuard::up_shaped(dir, kinds, Shaping::default()).await
    }

    pub async fn up_shaped(
        dir: &Path,
        kinds: &[HostKind],
        shaping: Shaping,
    ) -> Result<LabGuard, LabError> {
        Ok(LabGuard {
            lab: Some(Lab::up_shaped(dir, kinds, shaping).await?),
        })
    }

    /// Tears the lab down now and reports how that went.
    pub async fn down(mut self) -> Result<(), LabError> {
        let lab = self.lab.take().expect("a guard holds its lab until down");
        Lab::down(&lab.dir).await
    }
}

impl std::ops::DerefMut for LabGuard {
    fn deref_mut(&mut self) -> &mut Lab {
        self.lab.as_mut().expect("a guard holds its lab until down")
    }
}

impl std::ops::Deref for LabGuard {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        self.lab.as_ref().expect("a guard holds its lab until down")
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        let Some(lab) = self.lab.take() else { return };
        // Drop may run inside a runtime; tear down on a thread of its own.
        let teardown = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for lab teardown");
            runtime.block_on(Lab::down(&lab.dir))
        });
        match teardown.join() {
            Ok(Ok(())) => {}
            Ok(Err(err)) => eprintln!("lab teardown failed: {err}"),
            Err(_) => eprintln!("lab teardown panicked"),
        }
    }
}

fn check_dir(dir: &Path) -> Result<(), LabError> {
    let bad = |why| {
        Err(LabError::BadDir {
            dir: dir.to_owned(),
            why,
        })
    };
    let text = dir.to_string_lossy();
    if !dir.is_absolute() {
        return bad("it must be an absolute path");
    }
    // Paths go into sshd_config, mount options and NIX_SSHOPTS unquoted.
    if text
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || ",:\"'".contains(c))
    {
        return bad("it must not contain spaces, quotes, commas or colons");
    }
    if dir == Path::new("/") {
        return bad("it must not be /");
    }
    Ok(())
}

fn check_prerequisites(kinds: &[HostKind], shaping: &Shaping) -> Result<(), LabError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(LabError::NotRoot);
    }
    let mut needs = NEEDS.to_vec();
    if kinds.contains(&HostKind::Systemd) {
        needs.extend_from_slice(NEEDS_SYSTEMD);
    }
    if shaping.is_some() {
        needs.extend_from_slice(NEEDS_SHAPING);
    }
    let missing: Vec<_> = needs
        .into_iter()
        .filter(|(program, _)| process::find_program(program).is_none())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut packages: Vec<String> = Vec::new();
    for (_, package) in &missing {
        if !packages.iter().any(|p| p == package) {
            packages.push(package.to_string());
        }
    }
    Err(LabError::Missing {
        programs: missing.iter().map(|(p, _)| p.to_string()).collect(),
        packages,
    })
}

/// Claims the lowest free slot for `dir` (an exclusive create, safe against
/// labs started at the same moment).
fn claim_slot(dir: &Path) -> Result<u8, LabError> {
    fs::create_dir_all(SLOTS_DIR).map_err(io_err(format!("create {SLOTS_DIR}")))?;
    for slot in 0..net::SLOTS {
        let path = Path::new(SLOTS_DIR).join(slot.to_string());
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(_) => {
                fs::write(&path, dir.as_os_str().as_encoded_bytes())
                    .map_err(io_err(format!("write {}", path.display())))?;
                return Ok(slot as u8);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_err(format!("create {}", path.display()))(e)),
        }
    }
    Err(LabError::NoFreeSlot)
}

fn release_slot(slot: u8, dir: &Path) {
    let path = Path::new(SLOTS_DIR).join(slot.to_string());
    if fs::read(&path).is_ok_and(|owner| owner == dir.as_os_str().as_encoded_bytes()) {
        let _ = fs::remove_file(path);
    }
}

/// The commands that make the lab's switch: a namespace with a bridge, and
/// the uplink veth pair from the machine's own namespace to a port of it,
/// the machine's end holding the machine's address on the lab network. With
/// `uplink`, each end of the pair limits what it sends: the machine's end
/// what the deployer sends to the hosts, the switch's end what they send
/// back.
fn switch_cmds(switch: &SwitchNet, uplink: Option<&Rate>) -> Vec<Cmd> {
    let ns = switch.netns.as_str();
    let in_ns = |args: &[&str]| Cmd::new("ip").args(["-n", ns]).args(args);
    let cidr = format!("{}/{}", switch.addr, switch.prefix_len);
    let mut cmds = vec![
        Cmd::new("ip").args(["netns", "add", ns]),
        in_ns(&["link", "set", "lo", "up"]),
        in_ns(&["link", "add", "name", &switch.bridge, "type", "bridge"]),
        in_ns(&["link", "set", &switch.bridge, "up"]),
        // Made with its peer already in the switch's namespace, so no end of
        // it is ever left in the machine's namespace under a name no record
        // has.
        Cmd::new("ip").args([
            "link",
            "add",
            "name",
            &switch.uplink_out,
            "type",
            "veth",
            "peer",
            "name",
            &switch.uplink_in,
            "netns",
            ns,
        ]),
        in_ns(&["link", "set", &switch.uplink_in, "master", &switch.bridge]),
        in_ns(&["link", "set", &switch.uplink_in, "up"]),
        Cmd::new("ip").args(["addr", "add", &cidr, "dev", &switch.uplink_out]),
        Cmd::new("ip").args(["link", "set", &switch.uplink_out, "up"]),
    ];
    if let Some(rate) = uplink {
        cmds.push(shape::tbf_cmd(None, &switch.uplink_out, rate));
        cmds.push(shape::tbf_cmd(Some(ns), &switch.uplink_in, rate));
    }
    cmds
}

/// The commands that give a host its namespace, a veth pair from a port of
/// the switch's bridge into it, and its address. With `link`, each end of
/// the pair limits what it sends: the switch's end what reaches the host,
/// the host's end what it sends.
fn net_cmds(switch: &SwitchNet, net: &HostNet, link: Option<&Rate>) -> Vec<Cmd> {
    let ns = net.netns.as_str();
    let sw = net.switch_netns.as_str();
    let cidr = format!("{}/{}", net.addr, net.prefix_len);
    let mut cmds = vec![
        Cmd::new("ip").args(["netns", "add", ns]),
        // Without loopback an app in the host cannot bind 127.0.0.1.
        Cmd::new("ip").args(["-n", ns, "link", "set", "lo", "up"]),
        Cmd::new("ip").args([
            "-n",
            sw,
            "link",
            "add",
            "name",
            &net.veth_out,
            "type",
            "veth",
            "peer",
            "name",
            &net.veth_in,
            "netns",
            ns,
        ]),
        Cmd::new("ip").args([
            "-n",
            sw,
            "link",
            "set",
            &net.veth_out,
            "master",
            &switch.bridge,
        ]),
        Cmd::new("ip").args(["-n", sw, "link", "set", &net.veth_out, "up"]),
        Cmd::new("ip").args(["-n", ns, "addr", "add", &cidr, "dev", &net.veth_in]),
        Cmd::new("ip").args(["-n", ns, "link", "set", &net.veth_in, "up"]),
    ];
    if let Some(rate) = link {
        cmds.push(shape::tbf_cmd(Some(sw), &net.veth_out, rate));
        cmds.push(shape::tbf_cmd(Some(ns), &net.veth_in, rate));
    }
    cmds
}

/// sshd in the host's namespace, with the host's own `/nix`,
/// `/var/lib/berth` and `/etc/berth` bound over the machine's in a private
/// mount namespace,
/// and root's shell setup on the machine (version managers and the like,
/// which cost every SSH command time) hidden, as in a systemd host.
fn plain_host_cmd(host: &LabHost, sshd: &Path) -> Cmd {
    Cmd::new("ip")
        .args(["netns", "exec", &host.net.netns])
        .args(["unshare", "--mount", "--propagation", "private"])
        .args([
            "sh",
            "-c",
            r#"mount --bind "$1" /nix && mount --bind "$5" /var/lib/berth && mount --bind "$6" /etc/berth && { [ ! -e /root/.bashrc ] || mount --bind /dev/null /root/.bashrc; } && exec "$2" -D -f "$3" -E "$4""#,
            "sh",
        ])
        .arg(host.nix_dir())
        .arg(sshd)
        .arg(host.dir.join("sshd_config"))
        .arg(host.log_file())
        .arg(host.state_dir())
        .arg(host.etc_dir())
}

fn overlay_mount_cmd(host: &LabHost) -> Cmd {
    let options = format!(
        "lowerdir=/,upperdir={},workdir={}",
        host.dir.join("upper").display(),
        host.dir.join("work").display()
    );
    Cmd::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &options])
        .arg(host.root_dir())
}

fn nspawn_cmd(host: &LabHost) -> Cmd {
    let mut bind = std::ffi::OsString::from("--bind=");
    bind.push(host.nix_dir());
    bind.push(":/nix");
    Cmd::new("systemd-nspawn")
        .args([
            "--register=no",
            "--keep-unit",
            "--quiet",
            "--console=read-only",
        ])
        .arg(format!("--hostname={}", host.name))
        .arg(format!(
            "--network-namespace-path=/run/netns/{}",
            host.net.netns
        ))
        .arg(bind)
        .arg("--directory")
        .arg(host.root_dir())
        .arg("--boot")
}

/// Puts the lab's keys and sshd settings into a container's root before it
/// boots, and masks the machine's own services (databases, timers) so it
/// boots fast with only sshd.
fn prepare_container_root(
    host: &LabHost,
    host_key: &Path,
    client_pub: &str,
) -> Result<(), LabError> {
    let root = host.root_dir();
    let etc_ssh = root.join("etc/ssh");
    mkdir(&etc_ssh.join("sshd_config.d"))?;
    let key_in_container = "/etc/ssh/berth_lab_host_ed25519_key";
    write(&root.join(&key_in_container[1..]), &read(host_key)?, 0o600)?;
    write(
        &etc_ssh.join("sshd_config.d/berth-lab.conf"),
        &files::container_sshd_dropin(key_in_container),
        0o644,
    )?;
    let ssh_dir = root.join("root/.ssh");
    mkdir(&ssh_dir)?;
    fs::set_permissions(&ssh_dir, fs::Permissions::from_mode(0o700))
        .map_err(io_err(format!("chmod {}", ssh_dir.display())))?;
    write(&ssh_dir.join("authorized_keys"), client_pub, 0o600)?;
    write(
        &root.join("etc/hostname"),
        &format!("{}\n", host.name),
        0o644,
    )?;
    // Root's shell setup on the machine (language version managers and the
    // like) does not belong on a lab host, and can stall every command.
    for file in [".bashrc", ".profile"] {
        let text = "# berth lab host: a plain root shell\n";
        write(&root.join("root").join(file), text, 0o644)?;
    }

    let units = root.join("etc/systemd/system");
    for wants in ["multi-user.target.wants", "timers.target.wants"] {
        let Ok(entries) = fs::read_dir(units.join(wants)) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name == "ssh.service" || name == "sshd.service" {
                continue;
            }
            let mask = units.join(&*name);
            let _ = fs::remove_file(&mask);
            std::os::unix::fs::symlink("/dev/null", &mask)
                .map_err(io_err(format!("mask {}", mask.display())))?;
        }
    }
    let ssh_wants = units.join("multi-user.target.wants/ssh.service");
    if fs::symlink_metadata(&ssh_wants).is_err() {
        mkdir(&units.join("multi-user.target.wants"))?;
        std::os::unix::fs::symlink("/lib/systemd/system/ssh.service", &ssh_wants)
            .map_err(io_err(format!("enable sshd in {}", root.display())))?;
    }
    Ok(())
}

/// Deletes a host's namespace, which takes its veth pair with it (the
/// bridge port in the switch's namespace included).
async fn remove_net(net: &HostNet, log: &JobLog) -> Result<(), String> {
    remove_netns(&net.netns, log).await?;
    // A lab recorded by a berth from before the switch had the pair's other
    // end in the machine's own namespace.
    if net.switch_netns.is_empty() {
        remove_machine_link(&net.veth_out, log).await?;
    }
    Ok(())
}

/// Deletes the switch's namespace, which takes the bridge, its ports and
/// the uplink pair with it, and then the uplink's end in the machine's
/// namespace if it outlived that.
async fn remove_switch(switch: &SwitchNet, log: &JobLog) -> Result<(), String> {
    remove_netns(&switch.netns, log).await?;
    remove_machine_link(&switch.uplink_out, log).await
}

/// Deletes a lab namespace, after killing what still runs in it: what runs
/// there was started there by the lab (sshd sessions, a container's
/// leftovers).
async fn remove_netns(netns: &str, log: &JobLog) -> Result<(), String> {
    if !Path::new("/run/netns").join(netns).exists() {
        return Ok(());
    }
    let pids = run(&Cmd::new("ip").args(["netns", "pids", netns]), log)
        .await
        .map_err(|e| e.to_string())?
        .stdout_str()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect::<Vec<u32>>();
    for &pid in &pids {
        procs::signal(pid, libc::SIGKILL);
    }
    if !procs::wait_gone(&pids, Duration::from_secs(5)).await {
        return Err(format!("processes {pids:?} in {netns} did not exit"));
    }
    run(&Cmd::new("ip").args(["netns", "del", netns]), log)
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Deletes a veth end in the machine's own namespace. Deleting the
/// namespace of its peer deletes it too, but not always at once.
async fn remove_machine_link(name: &str, log: &JobLog) -> Result<(), String> {
    let link = Path::new("/sys/class/net").join(name);
    if link.exists() {
        if let Err(err) = run(&Cmd::new("ip").args(["link", "del", name]), log).await {
            if link.exists() {
                return Err(err.to_string());
            }
        }
    }
    Ok(())
}

async fn unmount(mount: &Path, log: &JobLog) -> Result<(), String> {
    if !mounts_under(mount).contains(&mount.to_path_buf()) {
        return Ok(());
    }
    if run(&Cmd::new("umount").arg(mount), log).await.is_err() {
        // Busy for a moment after its container exits; detach it instead.
        run(&Cmd::new("umount").arg("--lazy").arg(mount), log)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Mount points at or under `dir` in this mount namespace.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mount_path(field)))
        .filter(|point| point.starts_with(dir))
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape_mount_path(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4].iter().all(u8::is_ascii_digit)
        {
            let code = std::str::from_utf8(&bytes[i + 1..i + 4])
                .ok()
                .and_then(|s| u8::from_str_radix(s, 8).ok());
            if let Some(code) = code {
                out.push(code);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn log_tail(host: &LabHost) -> Vec<String> {
    let mut lines = Vec::new();
    for file in [host.dir.join("start.log"), host.log_file()] {
        if let Ok(text) = fs::read_to_string(&file) {
            lines.extend(text.lines().map(str::to_owned));
        }
    }
    lines.split_off(lines.len().saturating_sub(15))
}

async fn run(cmd: &Cmd, log: &JobLog) -> Result<process::Output, CommandError> {
    process::output(cmd, Via::Local, log).await?.check()
}

async fn keygen(path: &Path, comment: &str, log: &JobLog) -> Result<(), LabError> {
    let cmd = Cmd::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path);
    run(&cmd, log).await?;
    Ok(())
}

fn mkdir(dir: &Path) -> Result<(), LabError> {
    fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))
}

fn read(path: &Path) -> Result<String, LabError> {
    fs::read_to_string(path).map_err(io_err(format!("read {}", path.display())))
}

fn write(path: &Path, text: &str, mode: u32) -> Result<(), LabError> {
    let _ = fs::remove_file(path);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_err(format!("write {}", path.display())))?;
    io::Write::write_all(&mut file, text.as_bytes())
        .map_err(io_err(format!("write {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_mount_point_is_named_with_its_fix() {
        let err = LabError::NotReady {
            host: "h1".into(),
            why: "its process exited".into(),
            log: vec!["mount: /nix: mount point does not exist.".into()],
        };
        let hint = err.hint().expect("a hint");
        assert!(hint.contains("mkdir -p /nix"), "{hint}");
        assert!(hint.contains("scripts/install-deps"), "{hint}");
        let other = LabError::NotReady {
            host: "h1".into(),
            why: "its process exited".into(),
            log: vec!["sshd: bad config".into()],
        };
        assert_eq!(other.hint(), None);
    }

    #[test]
    fn mount_paths_are_unescaped() {
        assert_eq!(unescape_mount_path(r"/srv/a\040b"), "/srv/a b");
        assert_eq!(unescape_mount_path(r"/plain"), "/plain");
        assert_eq!(unescape_mount_path(r"/x\"), r"/x\");
    }

    #[test]
    fn lab_dirs_that_would_break_configs_are_refused() {
        for bad in ["relative", "/", "/srv/a b", "/srv/a,b", "/srv/a:b"] {
            assert!(check_dir(Path::new(bad)).is_err(), "{bad:?} was accepted");
        }
        check_dir(Path::new("/srv/berth-lab")).unwrap();
    }

    fn lines(cmds: &[Cmd]) -> Vec<String> {
        cmds.iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn switch_commands() {
        let switch = net::switch_net(3);
        assert_eq!(
            lines(&switch_cmds(&switch, None)),
            [
                "ip netns add berth-3-sw",
                "ip -n berth-3-sw link set lo up",
                "ip -n berth-3-sw link add name br0 type bridge",
                "ip -n berth-3-sw link set br0 up",
                "ip link add name b3u type veth peer name uplink netns berth-3-sw",
                "ip -n berth-3-sw link set uplink master br0",
                "ip -n berth-3-sw link set uplink up",
                "ip addr add 10.231.3.1/24 dev b3u",
                "ip link set b3u up",
            ]
        );
        let rate = Rate::parse("100mbit").unwrap();
        let shaped = lines(&switch_cmds(&switch, Some(&rate)));
        assert_eq!(
            shaped[9..],
            [
                "tc qdisc add dev b3u root tbf rate 100000000bit burst 50000 latency 50ms",
                "tc -n berth-3-sw qdisc add dev uplink root tbf rate 100000000bit burst 50000 latency 50ms",
            ]
        );
    }

    #[test]
    fn namespace_commands() {
        let switch = net::switch_net(3);
        assert_eq!(
            lines(&net_cmds(&switch, &net::host_net(3, 1), None)),
            [
                "ip netns add berth-3-h1",
                "ip -n berth-3-h1 link set lo up",
                "ip -n berth-3-sw link add name b3h1o type veth peer name b3h1i netns berth-3-h1",
                "ip -n berth-3-sw link set b3h1o master br0",
                "ip -n berth-3-sw link set b3h1o up",
                "ip -n berth-3-h1 addr add 10.231.3.2/24 dev b3h1i",
                "ip -n berth-3-h1 link set b3h1i up",
            ]
        );
        let rate = Rate::parse("1gbit").unwrap();
        let shaped = lines(&net_cmds(&switch, &net::host_net(3, 40), Some(&rate)));
        assert_eq!(
            shaped[5],
            "ip -n berth-3-h40 addr add 10.231.3.41/24 dev b3h40i"
        );
        assert_eq!(
            shaped[7..],
            [
                "tc -n berth-3-sw qdisc add dev b3h40o root tbf rate 1000000000bit burst 500000 latency 50ms",
                "tc -n berth-3-h40 qdisc add dev b3h40i root tbf rate 1000000000bit burst 500000 latency 50ms",
            ]
        );
    }

    #[test]
    fn host_processes() {
        let host = LabHost::new(
            2,
            HostKind::Systemd,
            net::host_net(3, 2),
            Path::new("/srv/lab/h2"),
        );
        assert_eq!(
            nspawn_cmd(&host).to_string(),
            "systemd-nspawn --register=no --keep-unit --quiet --console=read-only --hostname=h2 \
             --network-namespace-path=/run/netns/berth-3-h2 --bind=/srv/lab/h2/nix:/nix \
             --directory /srv/lab/h2/root --boot"
        );
        assert_eq!(
            overlay_mount_cmd(&host).to_string(),
            "mount -t overlay overlay -o lowerdir=/,upperdir=/srv/lab/h2/upper,workdir=/srv/lab/h2/work /srv/lab/h2/root"
        );
        let plain = LabHost::new(
            1,
            HostKind::Plain,
            net::host_net(3, 1),
            Path::new("/srv/lab/h1"),
        );
        let argv = plain_host_cmd(&plain, Path::new("/usr/sbin/sshd")).to_string();
        assert!(
            argv.starts_with(
                "ip netns exec berth-3-h1 unshare --mount --propagation private sh -c"
            ),
            "{argv}"
        );
        assert!(
            argv.ends_with(" sh /srv/lab/h1/nix /usr/sbin/sshd /srv/lab/h1/sshd_config /srv/lab/h1/sshd.log /srv/lab/h1/state /srv/lab/h1/etc"),
            "{argv}"
        );
    }
}
