//! Process-group signalling. Steps and local agents run in their own process group so a cancel or a
//! timeout reaches every process they started, not only the shell.

use std::io;

/// Sends `signal` to the process group `pgid`. A group that no longer exists is not an error.
pub fn signal_group(pgid: u32, signal: i32) -> io::Result<()> {
    let Ok(pgid) = i32::try_from(pgid) else {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "process group id out of range"));
    };
    if pgid <= 1 {
        // kill(0|-1, ..) would hit our own group or every process: never do that.
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "refusing to signal group 0 or 1"));
    }
    // SAFETY: kill(2) has no memory-safety preconditions; a negative pid addresses the group.
    let rc = unsafe { libc::kill(-pgid, signal) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) { Ok(()) } else { Err(err) }
}

/// True when the process group `pgid` still has at least one member.
pub fn group_alive(pgid: u32) -> bool {
    let Ok(pgid) = i32::try_from(pgid) else { return false };
    if pgid <= 1 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission.
    unsafe { libc::kill(-pgid, 0) == 0 }
}

pub use libc::{SIGKILL, SIGTERM};
