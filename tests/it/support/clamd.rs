//! A real clamd for one test, with a one-signature database (EICAR as an `.ndb` body
//! signature, which matches anywhere in the stream: inline text and the decoded contents
//! of base64 attachments). freshclam cannot download signatures offline, and this starts
//! in a fraction of a second. It listens on a unix socket and on a TCP port.

use std::fs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::{free_addr, require, wait_for, wait_for_port, ProcessGuard, TestDir};

/// The EICAR anti-virus test file (68 bytes).
pub const EICAR: &str = r"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

/// What clamd reports for [`EICAR`] (custom signatures get `.UNOFFICIAL`).
pub const EICAR_NAME: &str = "Eicar-Test-Signature.UNOFFICIAL";

pub struct Clamd {
    pub socket: PathBuf,
    pub tcp: SocketAddr,
    guard: Option<ProcessGuard>,
}

impl Clamd {
    pub fn start(dir: &TestDir) -> Clamd {
        let bin = require("clamd", "clamav-daemon");
        let root = dir.subdir("clamd");
        let db = root.join("db");
        fs::create_dir_all(&db).unwrap();
        let hex: String = EICAR.bytes().map(|b| format!("{b:02x}")).collect();
        fs::write(db.join("eicar.ndb"), format!("Eicar-Test-Signature:0:*:{hex}\n")).unwrap();
        let socket = root.join("clamd.sock");
        let tcp = free_addr();
        let conf = root.join("clamd.conf");
        fs::write(
            &conf,
            format!(
                "Foreground yes\nDatabaseDirectory {}\nLocalSocket {}\nTCPSocket {}\nTCPAddr 127.0.0.1\n\
                 PidFile {}\nUser root\nLogFile {}\nStreamMaxLength 25M\n",
                db.display(),
                socket.display(),
                tcp.port(),
                root.join("clamd.pid").display(),
                root.join("clamd.log").display()
            ),
        )
        .unwrap();
        let mut cmd = Command::new(bin);
        cmd.arg("-c").arg(&conf);
        let mut guard = ProcessGuard::spawn("clamd", cmd, &dir.join("clamd.out"));
        wait_for_port(tcp, Duration::from_secs(60), &mut guard);
        wait_for("clamd's unix socket", Duration::from_secs(30), || socket.exists().then_some(()));
        Clamd { socket, tcp, guard: Some(guard) }
    }

    /// `[antivirus] clamd` for the unix socket.
    pub fn socket_str(&self) -> String {
        self.socket.display().to_string()
    }

    /// Stops clamd (a clamd that went down).
    pub fn stop(&mut self) {
        if let Some(mut g) = self.guard.take() {
            g.terminate(Duration::from_secs(5));
        }
    }
}
