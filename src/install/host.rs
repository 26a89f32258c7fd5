//! The host seam: everything the installer needs from the machine it runs on.
//!
//! Installer code never reads the environment, runs a program, asks a question or looks at
//! a terminal directly; it goes through a [`Host`]. The real host ([`Host::real`]) works on
//! this machine (or on a target directory with `--root`); tests build a host with a temp
//! root, a recording [`Runner`] and a fake [`Probe`], and run the real install code on it.

use std::fmt;
use std::io::Write;
use std::net::{IpAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A program to run on the target system.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cmd {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Run inside this directory with chroot(2) (`--root` with `--run-commands`).
    pub chroot: Option<PathBuf>,
    /// Start in the background, detached from us, output appended to this file.
    pub detach_log: Option<PathBuf>,
}

impl Cmd {
    pub fn new(program: &str, args: &[&str]) -> Cmd {
        Cmd { program: program.into(), args: args.iter().map(|a| a.to_string()).collect(), ..Cmd::default() }
    }
    pub fn arg(mut self, a: impl Into<String>) -> Cmd {
        self.args.push(a.into());
        self
    }
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, a: I) -> Cmd {
        self.args.extend(a.into_iter().map(Into::into));
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Cmd {
        self.env.push((k.into(), v.into()));
        self
    }
    /// The program name and arguments, without chroot or environment.
    pub fn argv(&self) -> Vec<&str> {
        std::iter::once(self.program.as_str()).chain(self.args.iter().map(String::as_str)).collect()
    }
}

impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut words = Vec::new();
        if let Some(root) = &self.chroot {
            words.push("chroot".to_owned());
            words.push(shell_quote(&root.display().to_string()));
        }
        for (k, v) in &self.env {
            words.push(format!("{k}={}", shell_quote(v)));
        }
        words.push(shell_quote(&self.program));
        words.extend(self.args.iter().map(|a| shell_quote(a)));
        write!(f, "{}", words.join(" "))?;
        if let Some(log) = &self.detach_log {
            write!(f, " >>{} 2>&1 &", log.display())?;
        }
        Ok(())
    }
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b)) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// What a finished program left behind.
#[derive(Clone, Debug, Default)]
pub struct Output {
    /// The exit code; -1 when killed by a signal.
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn ok(stdout: &str) -> Output {
        Output { status: 0, stdout: stdout.into(), stderr: String::new() }
    }
    pub fn failed(status: i32, stderr: &str) -> Output {
        Output { status, stdout: String::new(), stderr: stderr.into() }
    }
    pub fn success(&self) -> bool {
        self.status == 0
    }
}

/// Runs programs. `Err` means the program could not be started at all (not found).
pub trait Runner: Send + Sync {
    fn run(&self, cmd: &Cmd) -> std::io::Result<Output>;
}

/// Facts about the running system, for the preflight checks and `status`.
pub trait Probe: Send + Sync {
    fn is_root(&self) -> bool;
    /// The addresses a name resolves to here (getaddrinfo, so /etc/hosts counts).
    fn resolve(&self, name: &str) -> Vec<IpAddr>;
    /// `None`: nobody listens on the TCP port. `Some(name)`: a process listens (its
    /// command name, or "unknown process" when it cannot be found).
    fn port_holder(&self, port: u16) -> Option<String>;
    fn mem_total_bytes(&self) -> Option<u64>;
    fn disk_free_bytes(&self, path: &Path) -> Option<u64>;
    /// systemd is PID 1 on this machine.
    fn systemd_running(&self) -> bool;
    fn pid_alive(&self, pid: i32) -> bool;
    fn hostname(&self) -> Option<String>;
    /// Can this machine open connections to port 25 of other mail servers?
    fn outbound_smtp(&self) -> OutboundSmtp;
    /// The address of the administrator running the install over SSH (from
    /// `SSH_CONNECTION`/`SSH_CLIENT`), so the guard never bans them.
    fn admin_ip(&self) -> Option<IpAddr> {
        ssh_client_ip(
            std::env::var("SSH_CONNECTION").ok().or_else(|| std::env::var("SSH_CLIENT").ok())?.as_str(),
        )
    }
}

/// What a trial connection to a well-known MX on port 25 showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboundSmtp {
    Open,
    /// The MX's name resolved, but port 25 did not answer (blocked by the provider?).
    Blocked(String),
    /// No DNS answer for the MX: offline, or no resolver; nothing can be said.
    Unknown(String),
}

/// The MX host the outbound port 25 probe connects to (only a TCP connect, no SMTP).
pub const OUTBOUND_PROBE_HOST: &str = "gmail-smtp-in.l.google.com";

/// The client address in `SSH_CONNECTION` ("client port server port") or `SSH_CLIENT`
/// ("client port port").
pub fn ssh_client_ip(value: &str) -> Option<IpAddr> {
    value.split_whitespace().next()?.parse().ok()
}

/// Questions to a person. Only exists when there is a terminal.
pub trait Prompter {
    fn input(&self, prompt: &str, default: Option<&str>) -> anyhow::Result<String>;
    /// One hidden entry (the wizard asks twice itself, to say what differed).
    fn password(&self, prompt: &str) -> anyhow::Result<String>;
    /// Yes or no; answered only with Enter, so a word typed ahead answers one question.
    fn confirm(&self, prompt: &str, default: bool) -> anyhow::Result<bool>;
    fn select(&self, prompt: &str, items: &[&str], default: usize) -> anyhow::Result<usize>;
    /// Why an answer is asked again (or what was made of it).
    fn tell(&self, message: &str);
}

/// Everything the installer may touch.
pub struct Host {
    /// The target filesystem: `/`, or the `--root` directory.
    pub root: PathBuf,
    /// `--root` was given: the target is not the running system.
    pub under_root: bool,
    /// Run package, user and service commands even under `--root` (chrooted into it).
    pub run_commands: bool,
    pub runner: Box<dyn Runner>,
    pub probe: Box<dyn Probe>,
    /// `None` when there is no terminal to ask.
    pub prompter: Option<Box<dyn Prompter>>,
    /// Progress bars are drawn only on a terminal.
    pub progress: bool,
    /// The posthaste binary that gets installed (normally the one running).
    pub binary: PathBuf,
    /// End the install with `posthaste check` against the started daemon: on for the real
    /// machine, off under `--root` and for emulated systems (there is no daemon to talk to).
    pub smoke_test: bool,
    out: Mutex<Box<dyn Write + Send>>,
}

impl Host {
    /// This machine (or `root`), real programs, real terminal.
    pub fn real(root: Option<PathBuf>) -> anyhow::Result<Host> {
        use std::io::IsTerminal;
        let tty = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
        let under_root = root.is_some();
        let root = match root {
            Some(r) => std::fs::canonicalize(&r).map_err(|e| {
                anyhow::anyhow!("--root {}: {e}\nhelp: create the directory first", r.display())
            })?,
            None => PathBuf::from("/"),
        };
        Ok(Host {
            root,
            under_root,
            run_commands: !under_root,
            runner: Box::new(SystemRunner),
            probe: Box::new(SystemProbe),
            prompter: if tty { Some(Box::new(TerminalPrompter)) } else { None },
            progress: tty,
            binary: std::env::current_exe()?,
            smoke_test: !under_root,
            out: Mutex::new(Box::new(std::io::stdout())),
        })
    }

    /// A host for tests and embedding: the given parts, no terminal, output to `out`.
    pub fn new(
        root: &Path,
        runner: Box<dyn Runner>,
        probe: Box<dyn Probe>,
        out: Box<dyn Write + Send>,
    ) -> Host {
        Host {
            root: root.to_owned(),
            under_root: true,
            run_commands: false,
            runner,
            probe,
            prompter: None,
            progress: false,
            binary: PathBuf::from("/proc/self/exe"),
            smoke_test: false,
            out: Mutex::new(out),
        }
    }

    /// Where the target's absolute `path` is on this machine.
    pub fn path(&self, path: impl AsRef<Path>) -> PathBuf {
        let p = path.as_ref();
        match p.strip_prefix("/") {
            Ok(rel) => self.root.join(rel),
            Err(_) => self.root.join(p),
        }
    }

    /// Print a line for the person running the installer.
    pub fn say(&self, line: impl fmt::Display) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    /// Commands that change the target run only on the real system, or when asked.
    pub fn commands_allowed(&self) -> bool {
        !self.under_root || self.run_commands
    }

    /// A command that runs in the target: chrooted under `--root`.
    pub fn target_cmd(&self, cmd: Cmd) -> Cmd {
        if self.under_root {
            Cmd { chroot: Some(self.root.clone()), ..cmd }
        } else {
            cmd
        }
    }

    pub fn run(&self, cmd: &Cmd) -> std::io::Result<Output> {
        self.runner.run(cmd)
    }
}

/// A writer that collects output in memory (tests read it back).
#[derive(Clone, Default)]
pub struct SharedBuf(pub Arc<Mutex<Vec<u8>>>);

impl SharedBuf {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for SharedBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Real programs.
pub struct SystemRunner;

impl Runner for SystemRunner {
    fn run(&self, cmd: &Cmd) -> std::io::Result<Output> {
        use std::os::unix::process::CommandExt;
        use std::process::{Command, Stdio};
        let mut c = match &cmd.chroot {
            Some(root) => {
                let mut c = Command::new("chroot");
                c.arg(root).arg(&cmd.program);
                c
            }
            None => Command::new(&cmd.program),
        };
        c.args(&cmd.args).envs(cmd.env.iter().map(|(k, v)| (k, v))).stdin(Stdio::null());
        if let Some(log) = &cmd.detach_log {
            if let Some(dir) = log.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let f = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
            c.stdout(f.try_clone()?).stderr(f).process_group(0);
            // The daemon outlives us: it is not waited for (it writes its own pidfile).
            let child = c.spawn()?;
            return Ok(Output::ok(&child.id().to_string()));
        }
        // Output goes to unlinked temp files, not pipes: an init script that starts a daemon
        // leaves it holding its stdout, and reading a pipe to the end would wait for the
        // daemon to exit. Waiting for the command itself is what we mean.
        let (mut out, mut err) = (unlinked_temp()?, unlinked_temp()?);
        c.stdout(out.try_clone()?).stderr(err.try_clone()?);
        let status = c.spawn()?.wait()?;
        Ok(Output {
            status: status.code().unwrap_or(-1),
            stdout: read_all(&mut out)?,
            stderr: read_all(&mut err)?,
        })
    }
}

fn unlinked_temp() -> std::io::Result<std::fs::File> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!(
        "posthaste-cmd-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let f = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path)?;
    std::fs::remove_file(&path)?;
    Ok(f)
}

fn read_all(f: &mut std::fs::File) -> std::io::Result<String> {
    use std::io::{Read, Seek};
    f.seek(std::io::SeekFrom::Start(0))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

/// Facts from this machine's /proc, resolver and statvfs.
pub struct SystemProbe;

impl Probe for SystemProbe {
    fn is_root(&self) -> bool {
        nix::unistd::geteuid().is_root()
    }
    fn resolve(&self, name: &str) -> Vec<IpAddr> {
        (name, 25).to_socket_addrs().map(|it| it.map(|a| a.ip()).collect()).unwrap_or_default()
    }
    fn port_holder(&self, port: u16) -> Option<String> {
        let inodes = listening_inodes(port);
        if inodes.is_empty() {
            return None;
        }
        Some(process_with_socket(&inodes).unwrap_or_else(|| "unknown process".into()))
    }
    fn mem_total_bytes(&self) -> Option<u64> {
        let text = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }
    fn disk_free_bytes(&self, path: &Path) -> Option<u64> {
        // The nearest existing ancestor: the data dir may not exist yet.
        let mut p = path.to_owned();
        while !p.exists() {
            p = p.parent()?.to_owned();
        }
        let st = nix::sys::statvfs::statvfs(&p).ok()?;
        Some(st.blocks_available() as u64 * st.fragment_size() as u64)
    }
    fn systemd_running(&self) -> bool {
        // sd_booted(3): this directory exists only when systemd is PID 1.
        Path::new("/run/systemd/system").is_dir()
    }
    fn pid_alive(&self, pid: i32) -> bool {
        pid > 0 && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
    }
    fn hostname(&self) -> Option<String> {
        let h = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
        Some(h.trim().to_owned()).filter(|h| !h.is_empty())
    }
    fn outbound_smtp(&self) -> OutboundSmtp {
        // getaddrinfo has no timeout of its own: resolve on a thread and stop waiting.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send((OUTBOUND_PROBE_HOST, 25).to_socket_addrs().map(|a| a.collect::<Vec<_>>()));
        });
        let addrs = match rx.recv_timeout(std::time::Duration::from_secs(3)) {
            Ok(Ok(a)) if !a.is_empty() => a,
            Ok(Err(e)) => return OutboundSmtp::Unknown(format!("cannot resolve {OUTBOUND_PROBE_HOST}: {e}")),
            _ => return OutboundSmtp::Unknown(format!("no DNS answer for {OUTBOUND_PROBE_HOST} within 3 s")),
        };
        let mut last = String::new();
        for a in addrs.iter().filter(|a| a.is_ipv4()).chain(addrs.iter().filter(|a| a.is_ipv6())).take(2) {
            match std::net::TcpStream::connect_timeout(a, std::time::Duration::from_secs(3)) {
                Ok(_) => return OutboundSmtp::Open,
                Err(e) => last = format!("{a}: {e}"),
            }
        }
        OutboundSmtp::Blocked(last)
    }
}

/// Socket inodes listening on `port` (IPv4 and IPv6), from /proc/net/tcp{,6}.
fn listening_inodes(port: u16) -> Vec<u64> {
    let mut inodes = Vec::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(file) else { continue };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st ... inode (field 9); 0A = TCP_LISTEN
            if f.len() < 10 || f[3] != "0A" {
                continue;
            }
            let Some(p) = f[1].rsplit(':').next().and_then(|h| u16::from_str_radix(h, 16).ok()) else {
                continue;
            };
            if p == port {
                if let Ok(inode) = f[9].parse() {
                    inodes.push(inode);
                }
            }
        }
    }
    inodes
}

fn process_with_socket(inodes: &[u64]) -> Option<String> {
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let pid = entry.file_name();
        if !pid.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                if wanted.iter().any(|w| target.as_os_str() == w.as_str()) {
                    let comm = std::fs::read_to_string(entry.path().join("comm")).ok()?;
                    return Some(comm.trim().to_owned());
                }
            }
        }
    }
    None
}

/// dialoguer on the terminal.
pub struct TerminalPrompter;

impl Prompter for TerminalPrompter {
    fn input(&self, prompt: &str, default: Option<&str>) -> anyhow::Result<String> {
        let mut q = dialoguer::Input::<String>::new().with_prompt(prompt);
        if let Some(d) = default {
            q = q.default(d.to_owned());
        }
        Ok(q.interact_text()?)
    }
    fn password(&self, prompt: &str) -> anyhow::Result<String> {
        Ok(dialoguer::Password::new().with_prompt(prompt).interact()?)
    }
    fn confirm(&self, prompt: &str, default: bool) -> anyhow::Result<bool> {
        // Not single keys: `yes` typed ahead would otherwise answer this question with its
        // `y` and the next ones with the rest (and Enter).
        Ok(dialoguer::Confirm::new()
            .with_prompt(prompt)
            .default(default)
            .wait_for_newline(true)
            .interact()?)
    }
    fn select(&self, prompt: &str, items: &[&str], default: usize) -> anyhow::Result<usize> {
        Ok(dialoguer::Select::new().with_prompt(prompt).items(items).default(default).interact()?)
    }
    fn tell(&self, message: &str) {
        eprintln!("  {message}");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_ssh_client_address_comes_from_ssh_connection() {
        assert_eq!(
            super::ssh_client_ip("203.0.113.9 52144 192.0.2.1 22"),
            Some("203.0.113.9".parse().unwrap())
        );
        assert_eq!(super::ssh_client_ip("2001:db8::5 52144 22"), Some("2001:db8::5".parse().unwrap()));
        assert_eq!(super::ssh_client_ip(""), None);
        assert_eq!(super::ssh_client_ip("garbage 1 2"), None);
    }

    use super::*;

    #[test]
    fn commands_display_shell_quoted() {
        let c = Cmd::new("apt-get", &["install", "-y", "a b"]).env("DEBIAN_FRONTEND", "noninteractive");
        assert_eq!(c.to_string(), "DEBIAN_FRONTEND=noninteractive apt-get install -y 'a b'");
    }

    /// Regression: `service rspamd start` hung the install, because the daemon the init
    /// script started kept the output pipe open.
    #[test]
    fn a_command_that_leaves_a_daemon_behind_returns() {
        let start = std::time::Instant::now();
        let out =
            SystemRunner.run(&Cmd::new("sh", &["-c", "echo started; sleep 5 & echo done >&2"])).unwrap();
        assert!(start.elapsed() < std::time::Duration::from_secs(4));
        assert_eq!((out.status, out.stdout.as_str(), out.stderr.as_str()), (0, "started\n", "done\n"));
    }

    #[test]
    fn target_paths_are_under_root() {
        let h = Host::new(
            Path::new("/tmp/r"),
            Box::new(SystemRunner),
            Box::new(SystemProbe),
            Box::new(SharedBuf::default()),
        );
        assert_eq!(h.path("/etc/posthaste"), Path::new("/tmp/r/etc/posthaste"));
    }
}
