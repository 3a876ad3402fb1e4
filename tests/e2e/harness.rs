//! The end-to-end harness: a fresh installation per test (made by the real `zeroci-controller init`,
//! so certificates are generated at run time), the real binaries, ports chosen by the kernel and read
//! back from the controller's readiness line, and every process killed when the test ends.
//!
//! Binaries come from `CI_BIN_DIR`, else from the target directory this test runs from (`cargo test
//! --workspace` builds them).

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Generous upper bound for anything a test waits on; tests end as soon as the awaited signal comes.
pub use zeroci_testkit::bin;

/// How long to wait for what should happen soon (raised on slow machines with ZEROCI_TEST_PATIENCE).
pub fn patience() -> Duration {
    zeroci_testkit::patience()
}

/// A child process in its own process group, killed with its group on drop; its output is captured.
pub struct Proc {
    pub child: Child,
    /// For messages: what this process is.
    pub name: String,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's group.
        unsafe {
            libc::kill(-self.pid(), signal);
        }
    }

    /// Waits for exit, up to `limit`.
    pub fn wait_timeout(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if std::thread::panicking() {
                eprintln!("killing {} (still running)", self.name);
            }
            self.signal(libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// A line reader over a child's pipe, on its own thread, so tests can wait for a line with a deadline.
pub struct Lines {
    rx: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Lines {
    pub fn new(pipe: impl Read + Send + 'static) -> Lines {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines {
            rx,
            seen: Vec::new(),
        }
    }

    /// Every line read so far (those waiting included).
    pub fn all(&mut self) -> &[String] {
        while let Ok(line) = self.rx.try_recv() {
            self.seen.push(line);
        }
        &self.seen
    }

    /// The first line (from now on) that contains `needle`.
    pub fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + patience();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line containing {needle:?}; saw:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }
}

/// Output of a finished CLI run.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Output {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {}\nstderr: {}",
                self.stdout_str(),
                self.stderr
            )
        })
    }
}

/// One installation: its directory, config and a running controller.
pub struct TestEnv {
    pub dir: tempfile::TempDir,
    pub controller: Option<Proc>,
    pub grpc_addr: String,
    pub http_addr: String,
    pub controller_log: PathBuf,
    /// With production backends: the MongoDB and Redis servers of this installation.
    pub mongo: Option<zeroci_testkit::services::Service>,
    pub redis: Option<zeroci_testkit::services::Service>,
}

/// Knobs a test may turn in config.toml before the controller starts.
#[derive(Clone)]
pub struct Settings {
    pub workers: usize,
    pub lost_agent_timeout: u64,
    pub heartbeat_interval_ms: u64,
    pub cancel_grace: u64,
    /// Extra TOML merged into config.toml (e.g. `[repos."x"]` or `[environment]` tables).
    pub extra: String,
    /// `Some(images_dir)`: `vm` machines booting the images there, instead of `local` ones.
    pub vm_images: Option<PathBuf>,
    /// `Some(table)`: this `[provisioner]` table (another kind, such as `ssh`) instead of `local`.
    pub provisioner: Option<toml::Table>,
    /// MongoDB (nx-27017) and Redis, started for this installation, instead of the embedded store
    /// and the in-process queue. Also on for every test with `ZEROCI_E2E_BACKENDS=production`.
    pub production: bool,
    /// Where the controller listens (`127.0.0.1:0`: a port the kernel picks).
    pub grpc_listen: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            workers: 5,
            lost_agent_timeout: 5,
            heartbeat_interval_ms: 300,
            cancel_grace: 2,
            extra: String::new(),
            vm_images: None,
            provisioner: None,
            production: std::env::var("ZEROCI_E2E_BACKENDS").is_ok_and(|b| b == "production"),
            grpc_listen: "127.0.0.1:0".into(),
        }
    }
}

/// A loopback address with a port free right now, for a listener that must be known before it starts.
pub fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

impl TestEnv {
    pub fn start() -> TestEnv {
        TestEnv::start_with(Settings::default())
    }

    pub fn start_with(settings: Settings) -> TestEnv {
        let dir = tempfile::Builder::new()
            .prefix("zeroci-e2e-")
            .tempdir()
            .expect("tempdir");
        let home = dir.path().join("home");
        let status = Command::new(bin("zeroci-controller"))
            .args(["init", "--dir"])
            .arg(&home)
            .args(["--grpc-listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .status()
            .expect("run zeroci-controller init");
        assert!(status.success(), "init failed");
        let config_path = home.join("config.toml");
        let mut config: toml::Table =
            toml::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
        let main = config
            .get_mut("main")
            .and_then(|m| m.as_table_mut())
            .expect("[main]");
        main.insert("workers".into(), (settings.workers as i64).into());
        main.insert(
            "lost_agent_timeout".into(),
            (settings.lost_agent_timeout as i64).into(),
        );
        main.insert(
            "heartbeat_interval_ms".into(),
            (settings.heartbeat_interval_ms as i64).into(),
        );
        main.insert("cancel_grace".into(), (settings.cancel_grace as i64).into());
        main.insert("shutdown_grace".into(), 1i64.into());
        let mut provisioner = toml::Table::new();
        let mut machines = toml::Table::new();
        machines.insert(
            "agent_binary".into(),
            bin("zeroci-agent").display().to_string().into(),
        );
        // Strays from a failed test go away on their own.
        machines.insert("agent_give_up".into(), 60i64.into());
        match &settings.vm_images {
            None => {
                provisioner.insert("local".into(), machines.into());
            }
            Some(images) => {
                machines.insert("images_dir".into(), images.display().to_string().into());
                // Small machines: tests run several at once on two cores.
                machines.insert("cpus".into(), 1i64.into());
                machines.insert("memory_mb".into(), 768i64.into());
                provisioner.insert("kind".into(), "vm".into());
                provisioner.insert("vm".into(), machines.into());
            }
        }
        config.insert(
            "provisioner".into(),
            settings.provisioner.clone().unwrap_or(provisioner).into(),
        );
        let (mongo, redis) = if settings.production {
            let (mongo, redis) = (
                zeroci_testkit::services::Service::mongo(),
                zeroci_testkit::services::Service::redis(),
            );
            let backends = format!(
                "[main]\ncontroller_id = \"controller-a\"\n\
                 [db]\nbackend = \"mongodb\"\nuri = \"{}\"\nname = \"zeroci\"\n\
                 [queue]\nbackend = \"redis\"\nurl = \"{}\"\n",
                mongo.url(),
                redis.url()
            );
            merge_tables(&mut config, toml::from_str(&backends).unwrap());
            (Some(mongo), Some(redis))
        } else {
            (None, None)
        };
        let extra: toml::Table = toml::from_str(&settings.extra).expect("extra settings are TOML");
        merge_tables(&mut config, extra);
        std::fs::write(&config_path, toml::to_string(&config).unwrap()).unwrap();
        let mut env = TestEnv {
            controller_log: dir.path().join("controller.log"),
            dir,
            controller: None,
            grpc_addr: String::new(),
            http_addr: String::new(),
            mongo,
            redis,
        };
        env.start_controller(&settings.grpc_listen);
        env
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    pub fn profile(&self) -> PathBuf {
        self.home().join("cli.toml")
    }

    /// Starts (or restarts) the controller on `listen` and waits for its readiness line.
    pub fn start_controller(&mut self, listen: &str) {
        let (proc, grpc, http) = spawn_controller(
            &self.home().join("config.toml"),
            listen,
            &self.controller_log,
        );
        self.grpc_addr = grpc;
        self.http_addr = http;
        let profile = std::fs::read_to_string(self.profile()).unwrap();
        let mut table: toml::Table = toml::from_str(&profile).unwrap();
        table.insert("controller".into(), self.grpc_addr.clone().into());
        std::fs::write(self.profile(), toml::to_string(&table).unwrap()).unwrap();
        self.controller = Some(proc);
    }

    /// Points the CLI profile at another controller (of the same service).
    pub fn use_controller(&mut self, grpc_addr: &str) {
        let profile = std::fs::read_to_string(self.profile()).unwrap();
        let mut table: toml::Table = toml::from_str(&profile).unwrap();
        table.insert("controller".into(), grpc_addr.into());
        std::fs::write(self.profile(), toml::to_string(&table).unwrap()).unwrap();
    }

    /// SIGKILLs the controller (its agents keep running in their own groups).
    pub fn kill_controller(&mut self) {
        if let Some(mut proc) = self.controller.take() {
            // Only the controller process itself: its agents are not in its group anyway.
            unsafe {
                libc::kill(proc.pid(), libc::SIGKILL);
            }
            let _ = proc.child.wait();
        }
    }

    /// Runs `zeroci --profile <this env's> ARGS` to completion.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_in(args, None)
    }

    pub fn cli_in(&self, args: &[&str], cwd: Option<&Path>) -> Output {
        self.cli_as(&self.profile(), args, cwd)
    }

    /// Runs `zeroci --profile PROFILE ARGS` to completion (another user's profile).
    pub fn cli_as(&self, profile: &Path, args: &[&str], cwd: Option<&Path>) -> Output {
        let mut proc = self.spawn_cli_as(profile, args, cwd);
        let mut stdout = proc.child.stdout.take().unwrap();
        let mut stderr = proc.child.stderr.take().unwrap();
        let out_thread = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = stdout.read_to_end(&mut buf);
            buf
        });
        let err_thread = std::thread::spawn(move || {
            let mut buf = String::new();
            let _ = stderr.read_to_string(&mut buf);
            buf
        });
        let status = proc.wait_timeout(patience()).unwrap_or_else(|| {
            panic!(
                "zeroci {args:?} did not finish; controller log:\n{}",
                self.controller_log_text()
            )
        });
        Output {
            code: status.code().unwrap_or(-1),
            stdout: out_thread.join().unwrap(),
            stderr: err_thread.join().unwrap(),
        }
    }

    pub fn spawn_cli(&self, args: &[&str], cwd: Option<&Path>) -> Proc {
        self.spawn_cli_as(&self.profile(), args, cwd)
    }

    fn spawn_cli_as(&self, profile: &Path, args: &[&str], cwd: Option<&Path>) -> Proc {
        let mut command = Command::new(bin("zeroci"));
        command.arg("--profile").arg(profile).args(args);
        if let Some(cwd) = cwd {
            command.current_dir(cwd);
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("spawn zeroci");
        Proc {
            child,
            name: format!("zeroci {args:?}"),
        }
    }

    /// `zeroci run PATH --detach` → job id.
    pub fn submit(&self, repo: &Path) -> u64 {
        let out = self.cli(&["run", repo.to_str().unwrap(), "--detach"]);
        assert_eq!(out.code, 0, "submit failed: {}", out.stderr);
        out.stdout_str()
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("no job id in {:?}", out.stdout_str()))
    }

    /// Follows the job's log until it is over and returns its JSON document.
    pub fn wait_job(&self, id: u64) -> Value {
        let out = self.cli(&["logs", &id.to_string(), "--follow", "--raw"]);
        assert_eq!(out.code, 0, "logs --follow failed: {}", out.stderr);
        self.job(id)
    }

    pub fn job(&self, id: u64) -> Value {
        let out = self.cli(&["show", &id.to_string(), "--json"]);
        assert_eq!(out.code, 0, "show failed: {}", out.stderr);
        out.json()
    }

    /// Waits until the job's output (of `step`, or all of it) holds `needle`.
    pub fn wait_for_output(&self, id: u64, step: Option<&str>, needle: &str) {
        zeroci_testkit::wait_for(&format!("{needle:?} in the output of job {id}"), || {
            String::from_utf8_lossy(&self.raw_log(id, step))
                .contains(needle)
                .then_some(())
        });
    }

    /// The job's output up to the line that says `[limits] max_log_bytes` cut it, and that line on.
    pub fn log_cut_at_limit(&self, id: u64) -> (String, String) {
        let log = String::from_utf8(self.raw_log(id, None)).unwrap();
        let (stored, note) = log
            .split_once("\nzeroci: ")
            .unwrap_or_else(|| panic!("no line about the output limit in {log:?}"));
        (stored.to_string(), note.to_string())
    }

    pub fn raw_log(&self, id: u64, step: Option<&str>) -> Vec<u8> {
        let id = id.to_string();
        let mut args = vec!["logs", id.as_str(), "--raw"];
        if let Some(step) = step {
            args.extend(["--step", step]);
        }
        let out = self.cli(&args);
        assert_eq!(out.code, 0, "logs failed: {}", out.stderr);
        out.stdout
    }

    /// `GET path` on the controller's HTTP listener: status code and body (chunked bodies decoded).
    pub fn http_get(&self, path: &str) -> (u16, Vec<u8>) {
        let (status, _, body) = self.http_get_with_head(path);
        (status, body)
    }

    /// `GET path`: status code, the response head (status line and headers, lower-cased) and body.
    pub fn http_get_with_head(&self, path: &str) -> (u16, String, Vec<u8>) {
        self.http_get_sending(path, &[])
    }

    /// `GET path` with extra request headers; as [`http_get_with_head`](Self::http_get_with_head).
    pub fn http_get_sending(&self, path: &str, headers: &[(&str, &str)]) -> (u16, String, Vec<u8>) {
        self.http_request("GET", path, headers, b"")
    }

    /// `POST path` of a form (`a=1&b=2`), with extra request headers.
    pub fn http_post_form(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        form: &str,
    ) -> (u16, String, Vec<u8>) {
        let mut all = headers.to_vec();
        all.push(("Content-Type", "application/x-www-form-urlencoded"));
        self.http_request("POST", path, &all, form.as_bytes())
    }

    /// One HTTP/1.1 exchange: status code, the response head (lower-cased) and the body (de-chunked).
    pub fn http_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, String, Vec<u8>) {
        use std::io::Write;
        let mut stream =
            std::net::TcpStream::connect(&self.http_addr).expect("connect to HTTP listener");
        stream.set_read_timeout(Some(patience())).unwrap();
        let extra: String = headers
            .iter()
            .map(|(name, value)| format!("{name}: {value}\r\n"))
            .collect();
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n{extra}\r\n",
            body.len()
        )
        .unwrap();
        stream.write_all(body).unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).unwrap();
        let split = response
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("HTTP header end");
        let head = String::from_utf8_lossy(&response[..split]).to_string();
        let mut body = response[split + 4..].to_vec();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("status code");
        if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            let mut decoded = Vec::new();
            let mut rest = &body[..];
            loop {
                let line_end = rest
                    .windows(2)
                    .position(|w| w == b"\r\n")
                    .expect("chunk size line");
                let size = usize::from_str_radix(
                    std::str::from_utf8(&rest[..line_end]).unwrap().trim(),
                    16,
                )
                .unwrap();
                rest = &rest[line_end + 2..];
                if size == 0 {
                    break;
                }
                decoded.extend_from_slice(&rest[..size]);
                rest = &rest[size + 2..];
            }
            body = decoded;
        }
        (status, head.to_ascii_lowercase(), body)
    }

    /// A number from the running controller's `/proc/PID/FILE`: the line starting with `key`.
    fn controller_proc_number(&self, file: &str, key: &str) -> u64 {
        let pid = self.controller.as_ref().expect("the controller runs").pid();
        let text = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{key} in /proc/{pid}/{file}"))
    }

    /// The running controller's peak resident memory so far (`VmHWM`), in KiB.
    pub fn controller_peak_rss_kib(&self) -> u64 {
        self.controller_proc_number("status", "VmHWM:")
    }

    pub fn controller_log_text(&self) -> String {
        std::fs::read_to_string(&self.controller_log).unwrap_or_default()
    }

    /// The job record as the controller stored it (for details the API does not show, like the pid):
    /// from the embedded store's file, or from MongoDB with the production backends.
    pub fn stored_job(&self, id: u64) -> Value {
        let Some(mongo) = &self.mongo else {
            let path = self.home().join(format!("state/jobs/{id}/job.json"));
            return serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let client = mongodb::Client::with_uri_str(mongo.url()).await.unwrap();
            let jobs = client
                .database("zeroci")
                .collection::<mongodb::bson::Document>("jobs");
            let document = jobs
                .find_one(mongodb::bson::doc! {"_id": id as i64})
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("job {id} is not in MongoDB"));
            let record = document.get("record").cloned().expect("a record");
            record.into_relaxed_extjson()
        })
    }
}

/// A stand-in for an outside service (GitHub, Telegram's Bot API, a webhook receiver): `app` served
/// on a loopback port of its own, on a runtime of its own, until dropped.
pub struct StandIn {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    _runtime: tokio::runtime::Runtime,
}

impl StandIn {
    pub fn serve(app: axum::Router) -> StandIn {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        runtime.spawn(async move { axum::serve(listener, app).await });
        StandIn {
            addr,
            _runtime: runtime,
        }
    }
}

/// Starts `zeroci-controller --config CONFIG` on `listen` (its log appended to `log`) and waits for its
/// readiness line; returns it with its gRPC and HTTP addresses.
pub fn spawn_controller(config: &Path, listen: &str, log: &Path) -> (Proc, String, String) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let mut child = Command::new(bin("zeroci-controller"))
        .arg("--config")
        .arg(config)
        .args(["--grpc-listen", listen, "--http-listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info,zeroci_controller=debug")
        .stdout(Stdio::piped())
        .stderr(log)
        .process_group(0)
        .spawn()
        .expect("spawn controller");
    let stdout = child.stdout.take().expect("stdout");
    let proc = Proc {
        child,
        name: "zeroci-controller".into(),
    };
    let mut lines = Lines::new(stdout);
    let ready = lines.wait_for("zeroci-controller ready grpc=");
    let field = |name: &str| {
        ready
            .split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .map(str::to_string)
            .expect("address in ready line")
    };
    (proc, field("grpc="), field("http="))
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        if let Some(mut controller) = self.controller.take() {
            controller.signal(libc::SIGKILL);
            let _ = controller.child.wait();
        }
        kill_processes_under(self.dir.path());
        if std::thread::panicking() {
            eprintln!("--- controller log ---\n{}", self.controller_log_text());
            let state = self.home().join("state");
            let machines = std::fs::read_dir(state.join("machines"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path().join("agent.log"));
            let kept = std::fs::read_dir(state.join("agent-logs"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path());
            for log in machines.chain(kept) {
                eprintln!(
                    "--- {} ---\n{}",
                    log.display(),
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
        }
    }
}

/// Kills every process whose executable, command line or working directory is under `dir` (agents and
/// the steps they started).
pub fn kill_processes_under(dir: &Path) {
    let needle = dir.display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let exe = std::fs::read_link(entry.path().join("exe"))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        // Steps run inside the machine's workspace: their working directory gives them away.
        let cwd = std::fs::read_link(entry.path().join("cwd"))
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle)
            || exe.contains(&needle)
            || cwd.contains(&needle)
        {
            // SAFETY: kill(2) with a pid we just read; worst case it is gone already.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// Merges `more` into `base`, table by table (`[provisioner.local] isolation` keeps `agent_binary`).
pub fn merge_tables(base: &mut toml::Table, more: toml::Table) {
    for (key, value) in more {
        match (base.get_mut(&key).and_then(|v| v.as_table_mut()), value) {
            (Some(existing), toml::Value::Table(more)) => merge_tables(existing, more),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// A git repository made by a test.
pub struct Repo {
    pub path: PathBuf,
}

use zeroci_testkit::git;

impl Repo {
    /// A repository with `files` committed on branch main.
    pub fn new(env: &TestEnv, name: &str, files: &[(&str, &str)]) -> Repo {
        Repo::at(&env.dir.path().join("repos").join(name), files)
    }

    /// A repository at `path` (for tests that must name it in the config before the controller starts).
    pub fn at(path: &Path, files: &[(&str, &str)]) -> Repo {
        let path = path.to_path_buf();
        std::fs::create_dir_all(&path).unwrap();
        git(&path, &["init", "-q", "-b", "main"]);
        let repo = Repo { path };
        repo.commit(files, "initial");
        repo
    }

    pub fn commit(&self, files: &[(&str, &str)], message: &str) -> String {
        for (name, contents) in files {
            let file = self.path.join(name);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(&file, contents).unwrap();
        }
        git(&self.path, &["add", "-A"]);
        git(&self.path, &["commit", "-q", "-m", message]);
        git(&self.path, &["rev-parse", "HEAD"])
    }

    pub fn path_str(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

/// A process of a test's own (a server standing in for a host), in its own process group, killed with
/// it on drop.
pub fn spawn_process(command: &mut Command, name: &str) -> Proc {
    let child = command
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
    Proc {
        child,
        name: name.to_string(),
    }
}

/// Pipeline file of form 1 with these script commands.
pub fn pipeline(script: &[&str]) -> String {
    let mut text = String::from("script:\n");
    for cmd in script {
        text.push_str(&format!("  - {}\n", serde_json::to_string(cmd).unwrap()));
    }
    text
}

/// Steps of a job document by name.
pub fn step<'a>(job: &'a Value, name: &str) -> &'a Value {
    job["steps"]
        .as_array()
        .and_then(|steps| steps.iter().find(|s| s["name"] == name))
        .unwrap_or_else(|| panic!("no step {name:?} in {job:#}"))
}
