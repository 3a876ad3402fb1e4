//! Servers the production-backend tests run against, started per test on ports chosen at run time and
//! killed when dropped: `redis-server` (Debian) and `nx-27017` (PyPI; speaks MongoDB's wire protocol).
//! A missing server is installed by `scripts/install-test-services`; when that fails the test fails
//! with how to get it, never passes silently.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::wait_for;

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Redis,
    Mongo,
}

/// A running server with its data directory; restartable on the same port and data.
pub struct Service {
    kind: Kind,
    pub port: u16,
    data: tempfile_dir::Dir,
    child: Option<Child>,
}

/// A directory removed when dropped (testkit has no tempfile dependency).
mod tempfile_dir {
    use std::path::{Path, PathBuf};

    pub struct Dir(PathBuf);

    impl Dir {
        pub fn new(prefix: &str) -> Dir {
            let path = std::env::temp_dir().join(format!(
                "{prefix}-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos())
            ));
            std::fs::create_dir_all(&path).expect("a data directory for a test service");
            Dir(path)
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn services_dir() -> PathBuf {
    std::env::var_os("ZEROCI_TEST_SERVICES")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/test-services"))
}

/// The server's program, installed first when missing.
fn program(kind: Kind) -> PathBuf {
    let (name, path) = match kind {
        Kind::Redis => ("redis", PathBuf::from("redis-server")),
        Kind::Mongo => ("mongo", services_dir().join("nx/bin/nx-27017")),
    };
    let present = |path: &Path| {
        Command::new(path)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    };
    if !present(&path) {
        let script = workspace().join("scripts/install-test-services");
        let installed = Command::new(&script).arg(name).status();
        assert!(
            installed.is_ok_and(|s| s.success()) && present(&path),
            "{} is needed by this test and could not be installed: run `{} {name}` as root \
             (redis-server from Debian's packages; nx-27017 from PyPI in a virtualenv)",
            path.display(),
            script.display()
        );
    }
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl Service {
    /// `redis-server` with its append-only file on (`appendfsync always`): a restart loses nothing.
    pub fn redis() -> Service {
        Service::start(Kind::Redis)
    }

    /// `nx-27017`, its databases as files in the data directory.
    pub fn mongo() -> Service {
        Service::start(Kind::Mongo)
    }

    fn start(kind: Kind) -> Service {
        let mut service = Service {
            kind,
            port: free_port(),
            data: tempfile_dir::Dir::new(match kind {
                Kind::Redis => "zeroci-redis",
                Kind::Mongo => "zeroci-mongo",
            }),
            child: None,
        };
        service.run();
        service
    }

    /// The URL a client connects with.
    pub fn url(&self) -> String {
        match self.kind {
            Kind::Redis => format!("redis://127.0.0.1:{}/", self.port),
            Kind::Mongo => format!("mongodb://127.0.0.1:{}/?directConnection=true", self.port),
        }
    }

    fn run(&mut self) {
        let data = self.data.path();
        let port = self.port.to_string();
        let mut command = Command::new(program(self.kind));
        match self.kind {
            Kind::Redis => {
                command.args(["--bind", "127.0.0.1", "--port", &port, "--save", ""]);
                command.args(["--appendonly", "yes", "--appendfsync", "always", "--dir"]);
                command.arg(data);
            }
            Kind::Mongo => {
                command.args(["--host", "127.0.0.1", "-p", &port, "--data-dir"]);
                command.arg(data).arg("--log-file").arg(data.join("nx.log"));
                command.arg("--pid-file").arg(data.join("nx.pid"));
            }
        }
        let log = std::fs::File::create(data.join("stdout.log")).expect("service log");
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("service log"))
            .stderr(log)
            .spawn()
            .expect("start the test service");
        self.child = Some(child);
        let address = format!("127.0.0.1:{}", self.port);
        wait_for(&format!("{:?} to listen on {address}", self.kind), || {
            TcpStream::connect(&address).ok()
        });
    }

    /// Kills the server (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port with the same data.
    pub fn restart(&mut self) {
        self.kill();
        self.run();
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
    }
}
