"""What the peer scripts share: git with a fixed identity, a free loopback port, a commit."""
import os
import socket
import subprocess

GIT_ENV = dict(os.environ, GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="b@b",
               GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="b@b")


def git(cwd, *args):
    out = subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, env=GIT_ENV)
    return out.stdout.decode().strip()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def commit(repo, n):
    """Commits a change to `counter` in `repo`; the new commit's id."""
    with open(os.path.join(repo, "counter"), "w") as f:
        f.write(str(n))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", f"bench {n}")
    return git(repo, "rev-parse", "HEAD")
