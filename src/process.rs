//! Process-group signalling. Steps and local agents run in their own process group so a cancel or a
//! timeout reaches every process they started, not only the shell.

use std::io;

/// Sends `signal` to the process group `pgid`. A group that no longer exists is not an error.
pub fn signal_group(pgid: u32, signal: i32) -> io::Result<()> {
    let Ok(pgid) = i32::try_from(pgid) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "process group id out of range",
        ));
    };
    if pgid <= 1 {
        // kill(0|-1, ..) would hit our own group or every process: never do that.
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "refusing to signal group 0 or 1",
        ));
    }
    // SAFETY: kill(2) has no memory-safety preconditions; a negative pid addresses the group.
    let rc = unsafe { libc::kill(-pgid, signal) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        Ok(())
    } else {
        Err(err)
    }
}

/// True when the process group `pgid` still has at least one member.
pub fn group_alive(pgid: u32) -> bool {
    let Ok(pgid) = i32::try_from(pgid) else {
        return false;
    };
    if pgid <= 1 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission.
    unsafe { libc::kill(-pgid, 0) == 0 }
}

pub use libc::{SIGKILL, SIGTERM};

/// Process ids of every live process in session `sid` (read from `/proc`).
pub fn session_members(sid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // "pid (comm) state ppid pgrp session ..."; comm may hold spaces and parentheses.
            let rest = &stat[stat.rfind(')')? + 1..];
            let mut fields = rest.split_whitespace();
            let state = fields.next()?;
            let session: u32 = fields.nth(2)?.parse().ok()?;
            (session == sid && state != "Z").then_some(pid)
        })
        .collect()
}

/// Sends `signal` to every process of session `sid`, including those that moved to other process
/// groups (each step runs in a group of its own). Returns how many were signalled.
pub fn signal_session(sid: u32, signal: i32) -> usize {
    if sid <= 1 {
        return 0;
    }
    let members = session_members(sid);
    for pid in &members {
        // SAFETY: kill(2) has no memory-safety preconditions; a vanished pid just fails.
        unsafe {
            libc::kill(*pid as i32, signal);
        }
    }
    members.len()
}

/// SIGTERMs every process of session `sid`, waits up to `grace` for them to end (they may flush what
/// they hold), then SIGKILLs what is left; returns how many had to be killed.
pub async fn stop_session(sid: u32, grace: std::time::Duration) -> usize {
    if signal_session(sid, SIGTERM) == 0 {
        return 0;
    }
    let deadline = tokio::time::Instant::now() + grace;
    while tokio::time::Instant::now() < deadline {
        if session_members(sid).is_empty() {
            return 0;
        }
        // The kernel has no "session ended" event to wait on; a short poll is what is left.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    signal_session(sid, SIGKILL)
}

/// Makes the kernel SIGKILL the calling process when the thread that started it ends (use in
/// `pre_exec`): a machine dies with the long-lived host agent that made it.
pub fn die_with_parent() -> io::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and takes plain integers.
    if unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    } < 0
    {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Makes the calling process the leader of a new session (use in `pre_exec`).
pub fn become_session_leader() -> io::Result<()> {
    // SAFETY: setsid(2) is async-signal-safe and has no preconditions.
    if unsafe { libc::setsid() } < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// For a `pre_exec` hook: moves the process into a network namespace of its own whose loopback device
/// is up, so a step sees no network but can still talk to itself. Raw syscalls only (no allocation),
/// as the hook runs between fork and exec.
pub fn enter_private_network() -> io::Result<()> {
    // SAFETY: unshare, socket, ioctl and close have no memory-safety preconditions; `request` is a
    // properly sized, zeroed ifreq that lives across the calls.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNET) != 0 {
            return Err(io::Error::last_os_error());
        }
        let socket = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if socket < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut request: libc::ifreq = std::mem::zeroed();
        for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
            *slot = *byte as libc::c_char;
        }
        let mut result = libc::ioctl(socket, libc::SIOCGIFFLAGS, &mut request);
        if result == 0 {
            request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            result = libc::ioctl(socket, libc::SIOCSIFFLAGS, &request);
        }
        let error = io::Error::last_os_error();
        libc::close(socket);
        if result != 0 {
            return Err(error);
        }
    }
    Ok(())
}

/// A pipe whose two ends close on exec (the child's end is handed over with [`inherit_fd`]):
/// `(read, write)`.
pub fn pipe() -> io::Result<(std::fs::File, std::fs::File)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array it is given.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned by nothing else.
    Ok(unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    })
}

/// For a `pre_exec` hook: makes `fd` available as `target` in the new program (dup2 clears
/// close-on-exec; a descriptor already numbered `target` has the flag cleared by hand).
pub fn inherit_fd(fd: i32, target: i32) -> io::Result<()> {
    // SAFETY: dup2 and fcntl have no memory-safety preconditions.
    let rc = unsafe {
        if fd == target {
            libc::fcntl(fd, libc::F_SETFD, 0)
        } else {
            libc::dup2(fd, target)
        }
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// For a `pre_exec` hook: moves this process into the control group whose `cgroup.procs` is open as
/// `procs_fd` (writing `0` names the writer).
pub fn join_cgroup(procs_fd: i32) -> io::Result<()> {
    // SAFETY: write reads one byte from a static buffer.
    let written = unsafe { libc::write(procs_fd, b"0".as_ptr().cast(), 1) };
    if written == 1 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Limits the processes (and threads) process `pid` (0: this one, async-signal-safe for a `pre_exec`
/// hook) and its later children may run as their user to `max`. Meant for a machine that runs as a
/// host user of its own, where the user's count is the machine's.
pub fn limit_processes(pid: u32, max: u64) -> io::Result<()> {
    let limit = libc::rlimit64 {
        rlim_cur: max,
        rlim_max: max,
    };
    // SAFETY: prlimit64 reads `limit` and writes nothing (the old-limit pointer is null).
    let rc = unsafe {
        libc::prlimit64(
            pid as libc::pid_t,
            libc::RLIMIT_NPROC,
            &limit,
            std::ptr::null_mut(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Raises this process's soft limit on open files to its hard limit; the new soft limit. A host of
/// many machines needs several descriptors per machine (its stream, step pipes), far past the usual
/// soft 1,024.
pub fn raise_open_files_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit64 {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: prlimit64 on this process, reading the current limit into `limit`.
    if unsafe { libc::prlimit64(0, libc::RLIMIT_NOFILE, std::ptr::null(), &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: prlimit64 on this process, setting `limit`.
    if unsafe { libc::prlimit64(0, libc::RLIMIT_NOFILE, &limit, std::ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(limit.rlim_cur)
}

/// The namespaces every `local` machine's sandbox gets: user, mount, PID, IPC, UTS.
pub const SANDBOX_NAMESPACES: i32 = libc::CLONE_NEWUSER
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS;

/// For a `pre_exec` hook: the namespaces of a `local` machine's sandbox (user, mount, PID, IPC, UTS).
/// The controller runs a probe with it at start-up to learn whether the kernel allows them.
pub fn enter_sandbox_namespaces() -> io::Result<()> {
    // SAFETY: unshare has no memory-safety preconditions.
    if unsafe { libc::unshare(SANDBOX_NAMESPACES) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_files_limit_is_raised_to_its_hard_limit() {
        let raised = raise_open_files_limit().unwrap();
        let mut limit = libc::rlimit64 {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: reads this process's limit into `limit`.
        assert_eq!(
            unsafe { libc::prlimit64(0, libc::RLIMIT_NOFILE, std::ptr::null(), &mut limit) },
            0
        );
        assert_eq!((limit.rlim_cur, limit.rlim_max), (raised, raised));
    }

    #[test]
    fn a_new_session_is_found_and_killed_whole() {
        let mut command = std::process::Command::new("sh");
        command.args(["-c", "sleep 30 & sleep 30; wait"]);
        // SAFETY: only setsid in the child before exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut command, become_session_leader);
        }
        let mut child = command.spawn().unwrap();
        let sid = child.id();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while session_members(sid).len() < 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "children did not start"
            );
            std::thread::yield_now();
        }
        assert!(signal_session(sid, SIGKILL) >= 3);
        child.wait().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !session_members(sid).is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "session members survived"
            );
            std::thread::yield_now();
        }
    }
}
