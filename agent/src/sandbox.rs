//! `zeroci-agent sandbox`: the agent of a `local` machine, inside fresh Linux namespaces.
//!
//! Three processes, all from this binary, none exec'd twice:
//! 1. the **keeper** (started by the controller as its own session leader) reads the [`SandboxSpec`]
//!    from an inherited descriptor, clones the mount tree of every host path the sandbox shows (as the
//!    controller's user, so the sandbox never needs to reach them by path; a keeper without that
//!    privilege leaves it to the init, which then runs as the same user), and clones
//! 2. the **init**: PID 1 of new user, mount, PID, IPC and UTS namespaces. The keeper maps root inside
//!    to an unprivileged host user and lets it go; the init builds a root of its own (tmpfs, the system
//!    directories read-only, the job directory read-write at [`JOB_DIR`], private `/dev`, `/proc`,
//!    `/tmp`), pivots into it, clears the environment and forks
//! 3. the **agent**, which returns from [`enter`] and runs the job as usual.
//!
//! When the agent exits, the init exits with its code and the kernel kills every process left in the
//! PID namespace: nothing a job starts (`setsid sleep 600 &` included) outlives its machine. The init
//! dies with the keeper (parent-death signal), so killing the keeper's session tears everything down.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::signal::Signal;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Pid, Uid, fork};
use zeroci::sandbox::{JOB_DIR, SandboxSpec, StepNetwork};

/// The PATH of a sandboxed job: the usual system directories, nothing of the controller's.
const SANDBOX_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// Largest spec accepted on the descriptor (paths and a CA certificate: a few KiB).
const MAX_SPEC_BYTES: u64 = 1 << 20;

/// Why a sandbox could not be built. Each names the step and the path it failed on.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot read the sandbox spec from descriptor {fd}: {message}")]
    Spec { fd: i32, message: String },
    #[error(
        "cannot create the sandbox's namespaces: {0} (the kernel refuses user namespaces here)"
    )]
    Namespaces(nix::Error),
    #[error("cannot {action} {path}: {source}")]
    Setup {
        action: &'static str,
        path: String,
        source: nix::Error,
    },
    #[error("the sandbox's keeper went away before it was ready")]
    KeeperGone,
}

/// What the agent process gets once it runs inside the sandbox.
pub struct Entered {
    pub spec: SandboxSpec,
    /// Where the job works inside the sandbox.
    pub workdir: PathBuf,
}

/// A host path the keeper prepared, shown inside the sandbox at `inside`.
struct HostPath {
    source: HostSource,
    inside: PathBuf,
    is_dir: bool,
    read_only: bool,
}

enum HostSource {
    /// A detached copy of the host's mount tree at that path (open_tree(2)), made by the keeper as
    /// the controller's user: the init attaches it without ever resolving the host path, which the
    /// unprivileged user it runs as may not be allowed to reach.
    Tree(OwnedFd),
    /// The host path itself: a keeper without the privilege to clone mount trees runs as the same
    /// user as the init, so the init reaches the path and clones its tree itself once it owns its
    /// mount namespace (see [`HostPath::into_tree`]).
    Path(PathBuf),
}

/// A host path's mount tree, ready to attach in the new root.
struct ShownTree {
    tree: OwnedFd,
    inside: PathBuf,
    is_dir: bool,
}

impl HostPath {
    /// The init's half of a [`HostSource::Path`]: cloned here, in the init's own mount namespace and
    /// before the staging root covers `/tmp` (where the path may lie), recursively made read-only like
    /// the keeper's clones, so a mount below a shown directory is as read-only as the directory.
    fn into_tree(self) -> Result<ShownTree, SandboxError> {
        let tree = match self.source {
            HostSource::Tree(tree) => tree,
            HostSource::Path(path) => clone_tree(&path, self.read_only)
                .map_err(|e| setup("clone the mount tree of", path.display(), e))?,
        };
        Ok(ShownTree {
            tree,
            inside: self.inside,
            is_dir: self.is_dir,
        })
    }
}

/// A symbolic link of the host's root (`/bin -> usr/bin` on merged-/usr systems), recreated as is.
struct HostLink {
    path: PathBuf,
    target: PathBuf,
}

/// Builds the sandbox described on descriptor `spec_fd` and returns in the agent process inside it.
/// The keeper and init processes never return: they exit with the agent's exit code.
pub fn enter(spec_fd: i32) -> Result<Entered, SandboxError> {
    let spec = read_spec(spec_fd)?;
    let mut read_only = Vec::new();
    let mut links = Vec::new();
    for path in &spec.read_only {
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                if let Ok(target) = std::fs::read_link(path) {
                    links.push(HostLink {
                        path: path.clone(),
                        target,
                    });
                }
            }
            Ok(meta) => read_only.push(open_host(path, path, meta.is_dir(), true)?),
            Err(_) => {} // not on this host: nothing to show
        }
    }
    let sources = spec
        .sources
        .iter()
        .filter_map(|path| {
            let meta = std::fs::metadata(path).ok()?;
            Some(open_host(path, path, meta.is_dir(), true))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let job = open_host(&spec.job_dir, Path::new(JOB_DIR), true, false)?;
    let hidden = with_real_paths(&spec.hidden);

    if Uid::effective().is_root() {
        // Root's supplementary groups (kgid 0 among them) would still count on host files.
        nix::unistd::setgroups(&[]).map_err(|e| setup("drop the groups of", "the keeper", e))?;
    }
    let (go_read, go_write) = nix::unistd::pipe().map_err(|e| setup("create", "a pipe", e))?;
    let flags = zeroci::process::SANDBOX_NAMESPACES;
    // SAFETY: this process is single-threaded (no runtime yet), so the child may run any code: it is
    // a plain fork into new namespaces (a null stack means "copy the parent's", as fork does).
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_void>(),
            0 as libc::c_ulong,
        )
    };
    if pid < 0 {
        return Err(SandboxError::Namespaces(nix::Error::last()));
    }
    if pid > 0 {
        drop(go_read);
        keep(Pid::from_raw(pid as i32), &spec, go_write)
    }
    drop(go_write);
    // The init: wait until the keeper has mapped our users, then build the machine.
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    let mut byte = [0u8; 1];
    let mut go = std::fs::File::from(go_read);
    if go.read_exact(&mut byte).is_err() {
        return Err(SandboxError::KeeperGone);
    }
    become_root()?;
    // Again: a change of credentials clears the parent-death signal.
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    let shown = read_only
        .into_iter()
        .chain(sources)
        .chain([job])
        .map(HostPath::into_tree)
        .collect::<Result<Vec<_>, _>>()?;
    build_root(&shown, &links, &hidden, &spec)?;
    drop(shown);
    nix::unistd::sethostname(&spec.hostname)
        .map_err(|e| setup("set the host name", &spec.hostname, e))?;
    lock_mounts()?;
    clear_environment();
    // SAFETY: still single-threaded.
    match unsafe { fork() }.map_err(|e| setup("fork", "the agent", e))? {
        ForkResult::Child => Ok(Entered {
            spec,
            workdir: PathBuf::from(JOB_DIR),
        }),
        ForkResult::Parent { child } => reap_until(child),
    }
}

fn setup(action: &'static str, path: impl std::fmt::Display, source: nix::Error) -> SandboxError {
    SandboxError::Setup {
        action,
        path: path.to_string(),
        source,
    }
}

fn read_spec(fd: i32) -> Result<SandboxSpec, SandboxError> {
    let error = |message: String| SandboxError::Spec { fd, message };
    if fd < 3 {
        return Err(error("not an inherited descriptor".into()));
    }
    // SAFETY: the controller hands this descriptor to us alone; nothing else in the process uses it.
    let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let mut text = Vec::new();
    file.take(MAX_SPEC_BYTES)
        .read_to_end(&mut text)
        .map_err(|e| error(e.to_string()))?;
    SandboxSpec::from_json(&text).map_err(|e| error(e.to_string()))
}

fn open_host(
    path: &Path,
    inside: &Path,
    is_dir: bool,
    read_only: bool,
) -> Result<HostPath, SandboxError> {
    let source = match clone_tree(path, read_only) {
        Ok(fd) => HostSource::Tree(fd),
        Err(nix::Error::EPERM | nix::Error::ENOSYS) => HostSource::Path(path.to_path_buf()),
        Err(e) => return Err(setup("clone the mount tree of", path.display(), e)),
    };
    Ok(HostPath {
        source,
        inside: inside.to_path_buf(),
        is_dir,
        read_only,
    })
}

/// Each path to hide as given and, where a symbolic link lies on its way, as it really is: inside the
/// sandbox a link leads to its target, which may lie under a shown directory (a state directory at
/// `/srv/ci` that links to `/data/ci`, with `/data` shown). Covering the link itself is not possible
/// (a mount follows it) nor needed once its target is covered.
fn with_real_paths(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut all = Vec::with_capacity(paths.len() * 2);
    for path in paths {
        all.push(path.clone());
        if let Ok(real) = std::fs::canonicalize(path)
            && real != *path
        {
            all.push(real);
        }
    }
    all
}

/// open_tree(2) with OPEN_TREE_CLONE: a detached, recursive copy of the mounts at `path`, made
/// read-only, nosuid and nodev all the way down when asked.
fn clone_tree(path: &Path, read_only: bool) -> Result<OwnedFd, nix::Error> {
    const OPEN_TREE_CLONE: libc::c_uint = 1;
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| nix::Error::EINVAL)?;
    let flags =
        OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_RECURSIVE as libc::c_uint;
    // SAFETY: c_path is a valid NUL-terminated string for the duration of the call.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c_path.as_ptr(), flags) };
    if fd < 0 {
        return Err(nix::Error::last());
    }
    // SAFETY: open_tree returned a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut attr = libc::mount_attr {
        attr_set: libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    if read_only {
        attr.attr_set |= libc::MOUNT_ATTR_RDONLY;
    }
    // SAFETY: attr is a valid mount_attr whose size is passed along; "" with AT_EMPTY_PATH means fd.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as libc::c_uint,
            &mut attr as *mut libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if rc < 0 {
        return Err(nix::Error::last());
    }
    Ok(fd)
}

/// move_mount(2): attaches a tree from [`clone_tree`] at `target`.
fn attach_tree(tree: &OwnedFd, target: &Path) -> Result<(), SandboxError> {
    const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;
    let c_target = std::ffi::CString::new(target.as_os_str().as_encoded_bytes())
        .map_err(|_| setup("attach at", target.display(), nix::Error::EINVAL))?;
    // SAFETY: both strings are valid and NUL-terminated for the duration of the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            c_target.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc < 0 {
        return Err(setup(
            "attach a mount at",
            target.display(),
            nix::Error::last(),
        ));
    }
    Ok(())
}

/// The keeper: maps the init's users, lets it go, waits for it and exits with its code.
fn keep(init: Pid, spec: &SandboxSpec, go: OwnedFd) -> ! {
    let code = match map_users(init, spec) {
        Ok(()) => {
            let mut go = std::fs::File::from(go);
            let _ = std::io::Write::write_all(&mut go, b"g");
            drop(go);
            wait_exit_code(init)
        }
        Err(error) => {
            tracing::error!(%error, "cannot map the sandbox's users");
            let _ = nix::sys::signal::kill(init, Signal::SIGKILL);
            wait_exit_code(init);
            1
        }
    };
    std::process::exit(code)
}

/// Root inside is `spec.uid` (or the keeper's own user) outside; the same for groups.
fn map_users(init: Pid, spec: &SandboxSpec) -> std::io::Result<()> {
    let proc = PathBuf::from(format!("/proc/{init}"));
    let uid = spec.uid.unwrap_or_else(|| Uid::effective().as_raw());
    let gid = spec.gid.unwrap_or_else(|| Gid::effective().as_raw());
    if !Uid::effective().is_root() {
        // Without CAP_SETGID outside, the kernel takes a gid map only once setgroups is off.
        std::fs::write(proc.join("setgroups"), "deny")?;
    }
    std::fs::write(proc.join("uid_map"), format!("0 {uid} 1\n"))?;
    std::fs::write(proc.join("gid_map"), format!("0 {gid} 1\n"))
}

fn wait_exit_code(pid: Pid) -> i32 {
    loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, signal, _)) => return 128 + signal as i32,
            Ok(_) => continue,
            Err(nix::Error::EINTR) => continue,
            Err(_) => return 1,
        }
    }
}

/// The init reaps whatever the job leaves behind and ends with the agent.
fn reap_until(agent: Pid) -> ! {
    loop {
        match waitpid(Pid::from_raw(-1), None) {
            Ok(WaitStatus::Exited(pid, code)) if pid == agent => std::process::exit(code),
            Ok(WaitStatus::Signaled(pid, signal, _)) if pid == agent => {
                std::process::exit(128 + signal as i32)
            }
            Ok(_) | Err(nix::Error::EINTR) => continue,
            Err(_) => std::process::exit(1),
        }
    }
}

/// Seals the machine's mounts: a user namespace nested in the sandbox's, with a mount namespace of its
/// own, turns every mount built above into a locked one (the kernel's rule for mounts handed to a less
/// privileged namespace), so the job, root in the nested namespace, can neither unmount what hides the
/// host's files, nor bind a directory without what covers parts of it, nor make a read-only mount
/// writable. Root stays root: the nested namespace maps 0 to 0.
fn lock_mounts() -> Result<(), SandboxError> {
    use nix::sched::{CloneFlags, unshare};
    unshare(CloneFlags::CLONE_NEWUSER | CloneFlags::CLONE_NEWNS)
        .map_err(|e| setup("nest", "a user namespace to lock the mounts", e))?;
    // The change of user made this process undumpable, which gives its /proc files to the host's root:
    // it could not write its own maps.
    nix::sys::prctl::set_dumpable(true)
        .map_err(|e| setup("make", "the init dumpable to map its users", e))?;
    // A process may map its own ids into a namespace it just made; for groups only once setgroups is
    // off (only root's group exists inside anyway).
    for (file, map) in [
        ("/proc/self/uid_map", "0 0 1\n"),
        ("/proc/self/setgroups", "deny"),
        ("/proc/self/gid_map", "0 0 1\n"),
    ] {
        std::fs::write(file, map).map_err(|e| setup("write", file, io_errno(&e)))?;
    }
    // Undumpable again, and so the agent forked from here: steps, root in this same namespace, must
    // not ptrace it (its network is the host's, its memory holds its credentials).
    nix::sys::prctl::set_dumpable(false).map_err(|e| setup("make", "the agent undumpable", e))?;
    Ok(())
}

fn become_root() -> Result<(), SandboxError> {
    let root_gid = Gid::from_raw(0);
    let root_uid = Uid::from_raw(0);
    nix::unistd::setresgid(root_gid, root_gid, root_gid)
        .map_err(|e| setup("become", "root's group in the sandbox", e))?;
    nix::unistd::setresuid(root_uid, root_uid, root_uid)
        .map_err(|e| setup("become", "root in the sandbox", e))
}

/// Where the new root is assembled before the pivot: `/tmp`, which every host has and every user may
/// reach; mounting over it is private to this mount namespace.
const STAGING: &str = "/tmp";

fn build_root(
    shown: &[ShownTree],
    links: &[HostLink],
    hidden: &[PathBuf],
    spec: &SandboxSpec,
) -> Result<(), SandboxError> {
    let no_data: Option<&str> = None;
    mount(
        no_data,
        "/",
        no_data,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        no_data,
    )
    .map_err(|e| setup("make private", "/", e))?;
    let root = Path::new(STAGING);
    mount_tmpfs(root, "mode=0755")?;
    let inside = |path: &Path| root.join(path.strip_prefix("/").unwrap_or(path));

    // Private /dev, /proc, /tmp first: sources may live under /tmp.
    let dev = inside(Path::new("/dev"));
    mount_tmpfs(&dev, "mode=0755")?;
    for name in ["null", "zero", "full", "random", "urandom", "tty"] {
        let target = dev.join(name);
        make_file(&target)?;
        bind(
            Path::new("/dev").join(name).as_path(),
            &target,
            Bind::Device,
        )?;
    }
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        symlink(Path::new(target), &dev.join(name))?;
    }
    mount_tmpfs(&dev.join("shm"), "mode=1777")?;
    let pts = dev.join("pts");
    make_dir(&pts)?;
    mount(
        Some("devpts"),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=620"),
    )
    .map_err(|e| setup("mount devpts on", pts.display(), e))?;
    let proc = inside(Path::new("/proc"));
    make_dir(&proc)?;
    mount(
        Some("proc"),
        &proc,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        no_data,
    )
    .map_err(|e| setup("mount proc on", proc.display(), e))?;
    mount_tmpfs(&inside(Path::new("/tmp")), "mode=1777")?;

    for link in links {
        symlink(&link.target, &inside(&link.path))?;
    }
    for host in shown {
        show(host, &inside(&host.inside))?;
    }
    for path in hidden {
        mask(&inside(path))?;
    }
    if let Err(error) = name_this_host(root, &inside(Path::new("/etc/hosts")), &spec.hostname) {
        // A nicety, not a barrier: the job runs, its host name just does not resolve.
        tracing::warn!(%error, "cannot make the sandbox's host name resolve");
    }

    // Pivot with the old root stacked under the new one, then detach it (pivot_root(2), ". .").
    nix::unistd::chdir(root).map_err(|e| setup("enter", root.display(), e))?;
    nix::unistd::pivot_root(".", ".").map_err(|e| setup("pivot into", root.display(), e))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| setup("detach", "the host's root", e))?;
    nix::unistd::chdir("/").map_err(|e| setup("enter", "/", e))?;
    let flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID;
    mount(no_data, "/", no_data, flags, no_data).map_err(|e| setup("make read-only", "/", e))?;
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS) has no memory-safety preconditions.
    unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    Ok(())
}

/// Shows a host path's mount tree at `target`.
fn show(host: &ShownTree, target: &Path) -> Result<(), SandboxError> {
    if host.is_dir {
        make_dir(target)?;
    } else {
        make_file(target)?;
    }
    attach_tree(&host.tree, target)
}

/// How a bind mount (of one file: devices and `/etc/hosts`) may be used.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Bind {
    ReadOnly,
    /// A device node (`/dev/null`): read-write, and the one kind of mount where devices work.
    Device,
}

fn bind(source: &Path, target: &Path, kind: Bind) -> Result<(), SandboxError> {
    let no_data: Option<&str> = None;
    mount(
        Some(source),
        target,
        no_data,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        no_data,
    )
    .map_err(|e| setup("bind-mount", target.display(), e))?;
    // A remount must keep the flags the host mount has (the kernel locks them in a user namespace).
    use nix::sys::statvfs::FsFlags;
    let existing =
        nix::sys::statvfs::statvfs(target).map_err(|e| setup("inspect", target.display(), e))?;
    let mut flags = MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_NOSUID;
    if kind != Bind::Device || existing.flags().contains(FsFlags::ST_NODEV) {
        flags |= MsFlags::MS_NODEV;
    }
    for (has, flag) in [
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if existing.flags().contains(has) {
            flags |= flag;
        }
    }
    if kind == Bind::ReadOnly || existing.flags().contains(FsFlags::ST_RDONLY) {
        flags |= MsFlags::MS_RDONLY;
    }
    mount(no_data, target, no_data, flags, no_data)
        .map_err(|e| setup("restrict", target.display(), e))
}

/// Makes the sandbox's host name resolve, as on any machine: tools look it up (git does, for the
/// committer's identity), and an unknown name means a DNS query that may hang for seconds. The host's
/// `/etc/hosts` plus one line, written on the new root and mounted over the read-only copy.
fn name_this_host(root: &Path, hosts: &Path, hostname: &str) -> Result<(), SandboxError> {
    let mut text = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&format!("127.0.1.1\t{hostname}\n"));
    let ours = root.join(".hosts");
    std::fs::write(&ours, text).map_err(|e| setup("write", ours.display(), io_errno(&e)))?;
    if std::fs::symlink_metadata(hosts).is_err() {
        make_file(hosts)?;
    }
    bind(&ours, hosts, Bind::ReadOnly)
}

/// Covers a path that lies under a shown directory: an empty read-only directory or `/dev/null`. A path
/// that does not exist or that root inside cannot reach (a 0700 directory of the host's root) is
/// hidden already.
fn mask(target: &Path) -> Result<(), SandboxError> {
    let Ok(meta) = std::fs::symlink_metadata(target) else {
        return Ok(());
    };
    let no_data: Option<&str> = None;
    if meta.is_dir() {
        let flags =
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        mount(
            Some("tmpfs"),
            target,
            Some("tmpfs"),
            flags,
            Some("mode=0000,size=4k"),
        )
        .map_err(|e| setup("hide", target.display(), e))
    } else if meta.is_file() {
        mount(
            Some("/dev/null"),
            target,
            no_data,
            MsFlags::MS_BIND,
            no_data,
        )
        .map_err(|e| setup("hide", target.display(), e))
    } else {
        Ok(())
    }
}

fn mount_tmpfs(target: &Path, options: &str) -> Result<(), SandboxError> {
    make_dir(target)?;
    mount(
        Some("tmpfs"),
        target,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(options),
    )
    .map_err(|e| setup("mount a tmpfs on", target.display(), e))
}

fn make_dir(path: &Path) -> Result<(), SandboxError> {
    match std::fs::create_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) => Err(setup("create", path.display(), io_errno(&e))),
    }
}

fn make_file(path: &Path) -> Result<(), SandboxError> {
    if let Some(parent) = path.parent() {
        make_dir(parent)?;
    }
    match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        Ok(_) => Ok(()),
        Err(e) => Err(setup("create", path.display(), io_errno(&e))),
    }
}

fn symlink(target: &Path, link: &Path) -> Result<(), SandboxError> {
    if let Some(parent) = link.parent() {
        make_dir(parent)?;
    }
    match std::os::unix::fs::symlink(target, link) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(setup("link", link.display(), io_errno(&e))),
    }
}

fn io_errno(error: &std::io::Error) -> nix::Error {
    nix::Error::from_raw(error.raw_os_error().unwrap_or(libc::EIO))
}

/// Only what a job needs, none of the controller's variables (its tokens, its paths).
fn clear_environment() {
    let names: Vec<_> = std::env::vars_os().map(|(name, _)| name).collect();
    let home = format!("{JOB_DIR}/home");
    let _ = std::fs::create_dir_all(&home);
    // Inside, every host file belongs to "nobody", so git's check that a repository belongs to its
    // user means nothing here and would refuse to clone a local repository.
    let _ = std::fs::write(format!("{home}/.gitconfig"), "[safe]\n\tdirectory = *\n");
    // SAFETY: the init is single-threaded; nothing reads the environment concurrently.
    unsafe {
        for name in names {
            std::env::remove_var(name);
        }
        std::env::set_var("PATH", SANDBOX_PATH);
        std::env::set_var("HOME", home);
        std::env::set_var("LANG", "C.UTF-8");
        std::env::set_var("TMPDIR", "/tmp");
    }
}

/// Whether steps get a network namespace of their own.
pub fn isolates_step_network(spec: &SandboxSpec) -> bool {
    spec.network == StepNetwork::None
}
