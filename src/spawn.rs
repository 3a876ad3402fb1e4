//! Starting a machine's first process directly inside its control group.
//!
//! Why not `std::process::Command` with a `pre_exec` hook writing to `cgroup.procs`: moving a process
//! between control groups takes the kernel's cgroup threadgroup lock for writing, which waits for an
//! RCU grace period — about 11 ms on this kernel, half of a trivial job's machine start, spent with a
//! runtime worker blocked in `spawn`. `clone3(2)` with `CLONE_INTO_CGROUP` (Linux 5.7) creates the
//! child in the group instead: nothing is moved, and the child still runs no instruction outside it.
//! Where the kernel refuses the flag (older kernels, seccomp filters), the child joins the group by
//! writing to `cgroup.procs` before it executes the program, as before.
//!
//! The child runs only async-signal-safe calls between `clone3` and `execve` (everything it needs is
//! prepared before); an `execve` failure comes back through a close-on-exec pipe as `errno`.

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

    let mut into_cgroup = spec.cgroup.is_some();
    let (pid, pidfd) = loop {
        let mut pidfd: libc::c_int = -1;
        let mut args = CloneArgs {
            flags: libc::CLONE_PIDFD as u64,
            pidfd: &mut pidfd as *mut libc::c_int as u64,
            exit_signal: libc::SIGCHLD as u64,
            ..CloneArgs::default()
        };
        if let (true, Some((dir, _))) = (into_cgroup, spec.cgroup) {
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
        if pid == 0 {
            let join = spec.cgroup.filter(|_| !into_cgroup).map(|(_, procs)| procs);
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
        if pid > 0 {
            // SAFETY: clone3 stored a fresh pidfd owned by nothing else.
            break (pid as u32, unsafe { OwnedFd::from_raw_fd(pidfd) });
        }
        let error = io::Error::last_os_error();
        let refused = matches!(
            error.raw_os_error(),
            Some(libc::EINVAL | libc::E2BIG | libc::EPERM | libc::EOPNOTSUPP)
        );
        if into_cgroup && refused {
            into_cgroup = false;
            continue;
        }
        return Err(error);
    };
    drop(report_write);
    // EOF (the pipe closed on exec) means it runs; four bytes are the errno of what failed. Read to
    // the end so an interrupted read is retried, not taken for success.
    let mut errno = Vec::with_capacity(4);
    let mut report = std::fs::File::from(OwnedFd::from(report_read));
    match io::Read::read_to_end(&mut report, &mut errno) {
        Ok(4) => {
            // SAFETY: reaps our own child, which has exited or is about to.
            unsafe {
                libc::waitpid(pid as i32, std::ptr::null_mut(), 0);
            }
            let errno = [errno[0], errno[1], errno[2], errno[3]];
            Err(io::Error::from_raw_os_error(i32::from_ne_bytes(errno)))
        }
        _ => Ok(Spawned { pid, pidfd }),
    }
}

/// The child between clone3 and execve: async-signal-safe calls only, no allocation.
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
        // What the parent's runtime changed is not the program's: default SIGPIPE, nothing blocked.
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
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
        if libc::chdir(cwd.as_ptr()) < 0 {
            fail(report);
        }
        libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr());
        fail(report)
    }
}

/// Waits for a process started by [`spawn`] to exit; its wait status.
pub async fn wait(spawned: Spawned) -> io::Result<i32> {
    // SAFETY: the pidfd is owned by the AsyncFd, open and unchanged for its whole life.
    let ready = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(
            spawned.pidfd,
            tokio::io::Interest::READABLE,
        )
    }
    .map_err(|e| e.into_parts().1)?;
    let _ = ready.readable().await?;
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid on our own child's pidfd, writing into `info`.
    let rc = unsafe {
        libc::waitid(
            libc::P_PIDFD,
            ready.get_ref().as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: filled in by waitid for an exited child.
    Ok(unsafe { info.si_status() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn run(program: &str, args: &[&str], env: &[(&str, &str)]) -> (io::Result<i32>, String) {
        let (mut out_read, out_write) = crate::process::pipe().unwrap();
        let null = std::fs::File::open("/dev/null").unwrap();
        let args: Vec<OsString> = args.iter().map(OsString::from).collect();
        let env: Vec<(OsString, OsString)> = env
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect();
        let spawned = spawn(&Spawn {
            program: Path::new(program),
            args: &args,
            env: &env,
            cwd: Path::new("/tmp"),
            stdio: [
                null.as_raw_fd(),
                out_write.as_raw_fd(),
                out_write.as_raw_fd(),
            ],
            handover: None,
            cgroup: None,
            max_processes: None,
        });
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

    #[test]
    fn the_program_runs_with_exactly_the_given_environment_in_a_session_of_its_own() {
        let (status, out) = run(
            "/bin/sh",
            &[
                "-c",
                "echo \"$ONLY $(pwd)\"; env | wc -l; cut -d' ' -f6 /proc/$$/stat; echo $$; exit 3",
            ],
            &[("ONLY", "this"), ("PATH", "/usr/bin:/bin")],
        );
        assert_eq!(status.unwrap(), 3);
        let lines: Vec<&str> = out.lines().map(str::trim).collect();
        assert_eq!(lines[0], "this /tmp");
        // ONLY, PATH, and what sh sets itself (PWD, maybe SHLVL and _).
        assert!(lines[1].parse::<u32>().unwrap() <= 5, "{out}");
        assert_eq!(lines[2], lines[3], "it leads its own session: {out}");
    }

    #[test]
    fn a_program_that_cannot_be_executed_is_an_error_not_a_child() {
        let (status, _) = run("/nonexistent/program", &[], &[]);
        assert_eq!(status.unwrap_err().kind(), io::ErrorKind::NotFound);
    }
}
