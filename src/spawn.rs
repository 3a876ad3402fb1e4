//! Starting a machine's first process directly inside its control group.
//!
//! Why not `std::process::Command` with a `pre_exec` hook writing to `cgroup.procs`: moving a process
//! between control groups takes the kernel's cgroup threadgroup lock for writing, which waits for an
//! RCU grace period — about 11 ms on this kernel, half of a trivial job's machine start, spent with a
//! runtime worker blocked in `spawn`. `clone3(2)` with `CLONE_INTO_CGROUP` (Linux 5.7) creates the
//! child in the group instead: nothing is moved, and the child still runs no instruction outside it.
//! Where the kernel refuses the flag (older kernels, seccomp filters), the child joins the group by
//! writing to `cgroup.procs` before it executes the program, as before; where clone3 itself is
//! filtered, the child is forked and its pidfd opened afterwards.
//!
//! The child runs only async-signal-safe calls between its creation and `execve` (everything it
//! needs is prepared before); an `execve` failure comes back through a close-on-exec pipe as `errno`.
//! It starts clean: default signal dispositions, nothing blocked, no descriptor but its stdio and
//! the one handed over.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `CLONE_INTO_CGROUP` (linux/sched.h); not in every libc release.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// What to start, and how.
pub struct Spawn<'a> {
    pub program: &'a Path,
    pub args: &'a [OsString],
    /// The whole environment of the new program.
    pub env: &'a [(OsString, OsString)],
    pub cwd: &'a Path,
    /// Descriptors that become 0, 1 and 2.
    pub stdio: [RawFd; 3],
    /// A descriptor handed over under another number: `(fd, as)`.
    pub handover: Option<(RawFd, RawFd)>,
    /// The control group to start in: its directory and its `cgroup.procs`, both open.
    pub cgroup: Option<(RawFd, RawFd)>,
    /// Most processes its user may run (`RLIMIT_NPROC`), when it runs as a user of its own.
    pub max_processes: Option<u64>,
}

/// A started process: its pid (also its session id: it leads a session of its own) and a pidfd to
/// wait on.
pub struct Spawned {
    pub pid: u32,
    pub pidfd: OwnedFd,
}

#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

fn c_string(bytes: &OsStr) -> io::Result<CString> {
    CString::new(bytes.as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in an argument"))
}

/// Starts the process in its own session (and control group); see the module docs.
pub fn spawn(spec: &Spawn) -> io::Result<Spawned> {
    let best = if spec.cgroup.is_some() {
        Clone::IntoCgroup
    } else {
        Clone::Plain
    };
    spawn_from(spec, best)
}

/// [`spawn`], trying `how` first (tests start at the fallbacks).
fn spawn_from(spec: &Spawn, mut how: Clone) -> io::Result<Spawned> {
    // Everything the child touches is made here: after clone3 it may not allocate.
    let program = c_string(spec.program.as_os_str())?;
    let mut argv = vec![program.clone()];
    for arg in spec.args {
        argv.push(c_string(arg)?);
    }
    let envp: Vec<CString> = spec
        .env
        .iter()
        .map(|(k, v)| {
            let mut pair = k.as_bytes().to_vec();
            pair.push(b'=');
            pair.extend_from_slice(v.as_bytes());
            c_string(OsStr::from_bytes(&pair))
        })
        .collect::<io::Result<_>>()?;
    let cwd = c_string(spec.cwd.as_os_str())?;
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut envp_ptrs: Vec<*const libc::c_char> = envp.iter().map(|e| e.as_ptr()).collect();
    envp_ptrs.push(std::ptr::null());
    let (report_read, report_write) = crate::process::pipe()?;
    // Above every descriptor number the child sets up (0-2, the handover's): a `dup2` onto one of
    // them must not replace the report pipe, or a failure would read as a start.
    let report_write = above_targets(report_write)?;

    let (pid, pidfd) = loop {
        let started = match how {
            Clone::Fork => fork_with_pidfd(),
            _ => clone3(how, spec.cgroup),
        };
        let (pid, pidfd) = match started {
            Ok(Started::Parent { pid, pidfd }) => (pid, pidfd),
            Ok(Started::Child) => {
                let join = spec
                    .cgroup
                    .filter(|_| how != Clone::IntoCgroup)
                    .map(|(_, procs)| procs);
                // SAFETY: in the child; see `child`.
                unsafe {
                    child(
                        spec,
                        join,
                        &cwd,
                        &program,
                        &argv_ptrs,
                        &envp_ptrs,
                        report_write.as_raw_fd(),
                    )
                }
            }
            Err(error) => {
                match (how, error.raw_os_error()) {
                    // The flag refused (an older kernel, a seccomp filter): join by writing.
                    (
                        Clone::IntoCgroup,
                        Some(libc::EINVAL | libc::E2BIG | libc::EPERM | libc::EOPNOTSUPP),
                    ) => how = Clone::Plain,
                    // clone3 filtered (container runtimes' default seccomp profiles answer ENOSYS
                    // for it): fork, then a pidfd for the unreaped child.
                    (Clone::IntoCgroup | Clone::Plain, Some(libc::ENOSYS | libc::EPERM)) => {
                        how = Clone::Fork
                    }
                    _ => return Err(error),
                }
                continue;
            }
        };
        break (pid, pidfd);
    };
    drop(report_write);
    // EOF (the pipe closed on exec) means it runs; four bytes are the errno of what failed. Read to
    // the end so an interrupted read is retried, not taken for success.
    let mut errno = Vec::with_capacity(4);
    let mut report = std::fs::File::from(OwnedFd::from(report_read));
    let failure = match io::Read::read_to_end(&mut report, &mut errno) {
        Ok(0) => None,
        Ok(4) => Some(io::Error::from_raw_os_error(i32::from_ne_bytes([
            errno[0], errno[1], errno[2], errno[3],
        ]))),
        Ok(n) => Some(io::Error::other(format!(
            "a report of {n} bytes from the starting process"
        ))),
        // Whether it runs is unknown: it is ended rather than left unaccounted for.
        Err(error) => Some(error),
    };
    let Some(failure) = failure else {
        return Ok(Spawned { pid, pidfd });
    };
    // SAFETY: signals and reaps our own child (it exists until reaped, so the pid is its).
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
        while libc::waitpid(pid as i32, std::ptr::null_mut(), 0) < 0
            && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
        {}
    }
    Err(failure)
}

/// `fd` moved to a number of 10 or more (close-on-exec), out of the way of the child's `dup2`s.
fn above_targets(fd: std::fs::File) -> io::Result<std::fs::File> {
    // SAFETY: F_DUPFD_CLOEXEC on an open descriptor we own; the new one is owned by nothing else.
    let moved = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    if moved < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor, owned by nothing else.
    Ok(unsafe { std::fs::File::from_raw_fd(moved) })
}

/// How the child is created, best first.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Clone {
    /// clone3 straight into the control group.
    IntoCgroup,
    /// clone3; the child joins its group (if any) by writing to `cgroup.procs`.
    Plain,
    /// fork and pidfd_open; the child joins as with `Plain`.
    Fork,
}

/// Which side of a clone this is.
enum Started {
    Child,
    Parent { pid: u32, pidfd: OwnedFd },
}

/// clone3 with a pidfd (and into `cgroup`'s directory for [`Clone::IntoCgroup`]).
fn clone3(how: Clone, cgroup: Option<(RawFd, RawFd)>) -> io::Result<Started> {
    let mut pidfd: libc::c_int = -1;
    let mut args = CloneArgs {
        flags: libc::CLONE_PIDFD as u64,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    if let (Clone::IntoCgroup, Some((dir, _))) = (how, cgroup) {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = dir as u64;
    }
    // SAFETY: clone3 with a valid, fully initialised argument block and no CLONE_VM: the child
    // gets a copy of this address space and only runs `child` (async-signal-safe calls) before
    // execve or _exit.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match pid {
        p if p < 0 => Err(io::Error::last_os_error()),
        0 => Ok(Started::Child),
        p => Ok(Started::Parent {
            pid: p as u32,
            // SAFETY: clone3 stored a fresh pidfd owned by nothing else.
            pidfd: unsafe { OwnedFd::from_raw_fd(pidfd) },
        }),
    }
}

/// fork, then `pidfd_open` on the child: race-free, as an unreaped child's pid cannot be reused.
fn fork_with_pidfd() -> io::Result<Started> {
    // SAFETY: fork in a multi-threaded process is sound when the child runs only async-signal-safe
    // calls before execve, which `child` does.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        return Ok(Started::Child);
    }
    // SAFETY: pidfd_open on our own, unreaped child.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        let error = io::Error::last_os_error();
        // SAFETY: our own child, not yet reaped; whatever it started is ended with it.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            while libc::waitpid(pid, std::ptr::null_mut(), 0) < 0
                && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted
            {}
        }
        return Err(error);
    }
    Ok(Started::Parent {
        pid: pid as u32,
        // SAFETY: a fresh pidfd owned by nothing else.
        pidfd: unsafe { OwnedFd::from_raw_fd(fd as RawFd) },
    })
}

/// The child between its creation (clone3 or fork) and execve: async-signal-safe calls only, no
/// allocation.
///
/// # Safety
/// Only to be called in a freshly cloned child; never returns.
unsafe fn child(
    spec: &Spawn,
    join_procs: Option<RawFd>,
    cwd: &CString,
    program: &CString,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
    report: RawFd,
) -> ! {
    let fail = |report: RawFd| -> ! {
        let errno = io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        // SAFETY: write and _exit are async-signal-safe.
        unsafe {
            libc::write(report, errno.to_ne_bytes().as_ptr().cast(), 4);
            libc::_exit(127)
        }
    };
    // SAFETY (whole block): plain system calls on descriptors and memory prepared by the parent.
    unsafe {
        // What the parent's runtime changed, or whoever started it ignored (SIGPIPE by Rust's
        // runtime, SIGHUP under nohup), is not the program's: default dispositions, nothing blocked.
        // (Caught signals are reset by execve itself; glibc's own reserved ones it refuses.)
        for signal in 1..=libc::SIGRTMAX() {
            let mut current: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, std::ptr::null(), &mut current) == 0
                && current.sa_sigaction == libc::SIG_IGN
            {
                libc::signal(signal, libc::SIG_DFL);
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        if libc::setsid() < 0 {
            fail(report);
        }
        if let Some(procs) = join_procs
            && crate::process::join_cgroup(procs).is_err()
        {
            fail(report);
        }
        if let Some(max) = spec.max_processes
            && crate::process::limit_processes(0, max).is_err()
        {
            fail(report);
        }
        for (target, fd) in spec.stdio.iter().enumerate() {
            if crate::process::inherit_fd(*fd, target as RawFd).is_err() {
                fail(report);
            }
        }
        if let Some((fd, target)) = spec.handover
            && crate::process::inherit_fd(fd, target).is_err()
        {
            fail(report);
        }
        // Nothing else the controller holds or inherited reaches the machine: every other
        // descriptor is closed (the report pipe closes itself on exec). Kernels before 5.9 have no
        // close_range; there, descriptors without close-on-exec still leak through.
        let handed = spec.handover.map_or(-1, |(_, target)| target);
        let mut keep = [report, handed];
        keep.sort_unstable();
        let mut from: libc::c_uint = 3;
        for kept in keep {
            if kept >= from as RawFd {
                if kept > from as RawFd {
                    libc::syscall(libc::SYS_close_range, from, kept as libc::c_uint - 1, 0);
                }
                from = kept as libc::c_uint + 1;
            }
        }
        libc::syscall(libc::SYS_close_range, from, libc::c_uint::MAX, 0);
        if libc::chdir(cwd.as_ptr()) < 0 {
            fail(report);
        }
        libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr());
        fail(report)
    }
}

/// Waits for a process started by [`spawn`] to exit, and reaps it.
pub async fn wait(spawned: Spawned) -> io::Result<std::process::ExitStatus> {
    // SAFETY: the pidfd is owned by the AsyncFd, open and unchanged for its whole life.
    let registered = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(
            spawned.pidfd,
            tokio::io::Interest::READABLE,
        )
    };
    let pidfd = match registered {
        Ok(ready) => match ready.readable().await {
            // Exited: waitid answers at once.
            Ok(_) => return reap(ready.get_ref()),
            Err(_) => ready.into_inner(),
        },
        Err(error) => error.into_parts().0,
    };
    // The reactor could not watch it: a blocking wait, off the runtime's workers, still reaps it.
    tokio::task::spawn_blocking(move || reap(&pidfd))
        .await
        .map_err(io::Error::other)?
}

/// `waitid` on a pidfd until it answers: the exit status, in the form `std` reads.
fn reap(pidfd: &OwnedFd) -> io::Result<std::process::ExitStatus> {
    use std::os::unix::process::ExitStatusExt;
    loop {
        // SAFETY: a zeroed siginfo_t is valid; waitid fills it for our own child's pidfd.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let rc = unsafe {
            libc::waitid(
                libc::P_PIDFD,
                pidfd.as_raw_fd() as libc::id_t,
                &mut info,
                libc::WEXITED,
            )
        };
        if rc < 0 {
            let error = io::Error::last_os_error();
            if error.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        // SAFETY: filled in by waitid for an exited child.
        let status = unsafe { info.si_status() };
        // The raw wait status `ExitStatus` decodes: the code in the second byte for an exit, the
        // signal in the low bits (0x80: core dumped) for a kill.
        let raw = match info.si_code {
            libc::CLD_EXITED => (status & 0xff) << 8,
            libc::CLD_DUMPED => status | 0x80,
            _ => status,
        };
        return Ok(std::process::ExitStatus::from_raw(raw));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// What a test starts: a shell command, its environment, and how it is cloned.
    struct Case<'a> {
        program: &'a str,
        script: &'a str,
        env: &'a [(&'a str, &'a str)],
        cwd: &'a str,
        how: Clone,
    }

    impl Default for Case<'_> {
        fn default() -> Self {
            Case {
                program: "/bin/sh",
                script: "true",
                env: &[("PATH", "/usr/bin:/bin")],
                cwd: "/tmp",
                how: Clone::Plain,
            }
        }
    }

    /// Runs `case` to its end: its exit status and what it printed.
    fn run(case: Case) -> (io::Result<std::process::ExitStatus>, String) {
        let (mut out_read, out_write) = crate::process::pipe().unwrap();
        let null = std::fs::File::open("/dev/null").unwrap();
        let args: Vec<OsString> = ["-c", case.script].iter().map(OsString::from).collect();
        let env: Vec<(OsString, OsString)> = case
            .env
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect();
        let spawned = spawn_from(
            &Spawn {
                program: Path::new(case.program),
                args: &args,
                env: &env,
                cwd: Path::new(case.cwd),
                stdio: [
                    null.as_raw_fd(),
                    out_write.as_raw_fd(),
                    out_write.as_raw_fd(),
                ],
                handover: None,
                cgroup: None,
                max_processes: None,
            },
            case.how,
        );
        drop(out_write);
        let spawned = match spawned {
            Ok(spawned) => spawned,
            Err(e) => return (Err(e), String::new()),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let status = runtime.block_on(wait(spawned));
        let mut text = String::new();
        out_read.read_to_string(&mut text).unwrap();
        (status, text)
    }

    /// Exactly the environment given, `cwd`, a session of its own, exit code 3: by clone3 and by
    /// the fork fallback alike.
    fn starts_as_asked(how: Clone) {
        let (status, out) = run(Case {
            script: "echo \"$ONLY $(pwd)\"; env | wc -l; cut -d' ' -f6 /proc/$$/stat; echo $$; exit 3",
            env: &[("ONLY", "this"), ("PATH", "/usr/bin:/bin")],
            how,
            ..Case::default()
        });
        assert_eq!(status.unwrap().code(), Some(3));
        let lines: Vec<&str> = out.lines().map(str::trim).collect();
        assert_eq!(lines[0], "this /tmp");
        // ONLY, PATH, and what sh sets itself (PWD, maybe SHLVL and _).
        assert!(lines[1].parse::<u32>().unwrap() <= 5, "{out}");
        assert_eq!(lines[2], lines[3], "it leads its own session: {out}");
    }

    #[test]
    fn the_program_runs_with_exactly_the_given_environment_in_a_session_of_its_own() {
        starts_as_asked(Clone::Plain);
    }

    #[test]
    fn without_clone3_the_fork_fallback_starts_it_the_same_way() {
        starts_as_asked(Clone::Fork);
        let (status, _) = run(Case {
            cwd: "/nonexistent",
            how: Clone::Fork,
            ..Case::default()
        });
        assert_eq!(status.unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn only_stdio_and_the_handed_over_descriptor_are_open_with_nothing_blocked_or_ignored() {
        let (handed, _keep) = crate::process::pipe().unwrap();
        let null = std::fs::File::open("/dev/null").unwrap();
        // What the child must not get: a descriptor without close-on-exec (as a parent's parent may
        // leave), and an ignored SIGHUP (as under nohup). Both are this test process's for a moment.
        // SAFETY: dup of an open descriptor; closed below.
        let inheritable = unsafe { libc::dup(null.as_raw_fd()) };
        assert!(inheritable >= 0);
        // SAFETY: signal(2) with SIG_IGN, restored below.
        let hup = unsafe { libc::signal(libc::SIGHUP, libc::SIG_IGN) };
        let spawned = spawn(&Spawn {
            program: Path::new("/bin/sleep"),
            args: &[OsString::from("30")],
            env: &[],
            cwd: Path::new("/"),
            stdio: [null.as_raw_fd(); 3],
            handover: Some((handed.as_raw_fd(), 3)),
            cgroup: None,
            max_processes: None,
        });
        // SAFETY: restores what was there; closes our own duplicate.
        unsafe {
            libc::signal(libc::SIGHUP, hup);
            libc::close(inheritable);
        }
        let spawned = spawned.unwrap();
        // Looked at from outside, once `sleep`'s loader has closed what it opened (a leaked
        // descriptor would stay).
        let proc_dir = format!("/proc/{}", spawned.pid);
        zeroci_testkit::wait_for("only stdio and the handed-over descriptor open", || {
            let mut fds: Vec<u32> = std::fs::read_dir(format!("{proc_dir}/fd"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
                .collect();
            fds.sort();
            if fds != [0, 1, 2, 3] {
                eprintln!("open in the child now: {fds:?}");
            }
            (fds == [0, 1, 2, 3]).then_some(())
        });
        let status = std::fs::read_to_string(format!("{proc_dir}/status")).unwrap();
        // SAFETY: our own child, not yet reaped.
        unsafe { libc::kill(spawned.pid as i32, libc::SIGKILL) };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(wait(spawned)).unwrap();
        let mask = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::trim)
                .unwrap()
                .to_string()
        };
        assert_eq!(mask("SigBlk:"), "0000000000000000", "{status}");
        // None of the standard signals is ignored: SIGHUP and SIGPIPE (ignored by Rust's runtime)
        // are back to their defaults. (The test harness also ignores glibc's reserved signal 32,
        // which glibc does not let a program change.)
        let ignored = u64::from_str_radix(&mask("SigIgn:"), 16).unwrap();
        assert_eq!(ignored & 0x7fff_ffff, 0, "{status}");
    }

    #[test]
    fn a_program_killed_by_a_signal_is_told_apart_from_one_that_exits() {
        use std::os::unix::process::ExitStatusExt;
        let (status, _) = run(Case {
            script: "kill -9 $$",
            ..Case::default()
        });
        let status = status.unwrap();
        assert_eq!((status.code(), status.signal()), (None, Some(9)));
        let (status, _) = run(Case {
            script: "exit 9",
            ..Case::default()
        });
        assert_eq!(status.unwrap().code(), Some(9));
    }

    #[test]
    fn a_bad_working_directory_or_program_is_an_error_not_a_child() {
        let bad_cwd = Case {
            cwd: "/nonexistent",
            ..Case::default()
        };
        let bad_program = Case {
            program: "/nonexistent/program",
            ..Case::default()
        };
        for case in [bad_cwd, bad_program] {
            let (status, _) = run(case);
            assert_eq!(status.unwrap_err().kind(), io::ErrorKind::NotFound);
        }
    }
}
