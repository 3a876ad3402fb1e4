#!/usr/bin/env python3
"""Buildbot measured the way ZeroCI's benchmark measures itself.

Run by `cargo bench --bench pipeline -- peers --buildbot DIR` (DIR: where the `buildbot` and
`buildbot-worker` programs from PyPI are, e.g. a venv's bin). Configures a master and one worker on
loopback ports chosen here (SQLite, no web UI), a post-commit hook calling `buildbot sendchange`, and
measures:
  1. commit -> result: `git commit` returned until the build of that revision is complete (read from
     the master's database);
  4. log throughput: a step printing --mib MiB, from the build's start to its end; the master's peak
     memory;
  6. a burst: commits made in a row through the hook, then how many revisions get a build.
Prints one JSON object on stdout.
"""
import argparse
import json
import os
import random
import sqlite3
import subprocess
import tempfile
import time

from common import GIT_ENV, commit, free_port, git

MASTER_CFG = """
from buildbot.plugins import changes, schedulers, steps, util, worker
c = BuildmasterConfig = {{}}
c['buildbotNetUsageData'] = None
c['workers'] = [worker.Worker('w1', 'pass')]
c['protocols'] = {{'pb': {{'port': 'tcp:{pb}:interface=127.0.0.1'}}}}
c['change_source'] = [changes.PBChangeSource(user='change', passwd='changepw')]
c['schedulers'] = [
    schedulers.SingleBranchScheduler(name='trivial', treeStableTimer=None, builderNames=['trivial'],
                                     change_filter=util.ChangeFilter(branch='main')),
    schedulers.SingleBranchScheduler(name='loud', treeStableTimer=None, builderNames=['loud'],
                                     change_filter=util.ChangeFilter(branch='loud')),
]
c['builders'] = [
    util.BuilderConfig(name='trivial', workernames=['w1'], factory=util.BuildFactory([
        steps.Git(repourl={repo!r}, mode='incremental'),
        steps.ShellCommand(command=['true']),
    ])),
    util.BuilderConfig(name='loud', workernames=['w1'], factory=util.BuildFactory([
        steps.ShellCommand(command=['sh', '-c', 'yes 0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz | head -c {bytes}']),
    ])),
]
c['db'] = {{'db_url': 'sqlite:///state.sqlite'}}
c['title'] = 'bench'
c['buildbotURL'] = 'http://127.0.0.1/'
"""

BUILD_OF = """
select b.started_at, b.complete_at, b.results from builds b
join buildrequests br on b.buildrequestid = br.id
join buildset_sourcestamps bss on bss.buildsetid = br.buildsetid
join sourcestamps ss on ss.id = bss.sourcestampid
where ss.revision = ? and b.complete_at is not null
"""


def run(*args, cwd=None):
    subprocess.run(list(args), cwd=cwd, check=True, capture_output=True, env=GIT_ENV)








def build_of(db, revision):
    try:
        with sqlite3.connect(db, timeout=5) as con:
            return con.execute(BUILD_OF, (revision,)).fetchone()
    except sqlite3.OperationalError:
        return None


def wait_build(db, revision, limit):
    deadline = time.time() + limit
    while time.time() < deadline:
        row = build_of(db, revision)
        if row:
            return row
        time.sleep(0.01)
    return None


def peak_rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--buildbot", required=True, help="directory of buildbot and buildbot-worker")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--commits", type=int, default=50)
    parser.add_argument("--mib", type=int, default=64)
    args = parser.parse_args()
    bb = os.path.join(args.buildbot, "buildbot")
    bbw = os.path.join(args.buildbot, "buildbot-worker")
    work = tempfile.mkdtemp(prefix="buildbot-bench-")
    repo = os.path.join(work, "repo")
    os.makedirs(repo)
    git(repo, "init", "-q", "-b", "main")
    commit(repo, 0)
    master, wdir = os.path.join(work, "master"), os.path.join(work, "worker")
    pb = free_port()
    run(bb, "create-master", "-r", master)
    with open(os.path.join(master, "master.cfg"), "w") as f:
        f.write(MASTER_CFG.format(pb=pb, repo=repo, bytes=args.mib * 1024 * 1024))
    run(bbw, "create-worker", "-r", wdir, f"127.0.0.1:{pb}", "w1", "pass")
    db = os.path.join(master, "state.sqlite")
    hook = os.path.join(repo, ".git", "hooks", "post-commit")
    with open(hook, "w") as f:
        f.write(f"#!/bin/sh\n{bb} sendchange --master 127.0.0.1:{pb} --auth change:changepw "
                f"--who bench --vc git --repository {repo} --branch main "
                f"--revision \"$(git rev-parse HEAD)\" >/dev/null 2>&1\n")
    os.chmod(hook, 0o755)
    try:
        run(bb, "start", master)
        run(bbw, "start", wdir)
        # The first build also waits for the worker to attach.
        if not wait_build(db, commit(repo, 1), 120):
            raise SystemExit("Buildbot never built the first commit")
        times = []
        for n in range(args.runs):
            time.sleep(random.uniform(0, 0.2))
            sha = commit(repo, 100 + n)
            start = time.time()
            if wait_build(db, sha, 120):
                times.append((time.time() - start) * 1000)
        # Throughput: a build that prints --mib MiB.
        run(bb, "sendchange", "--master", f"127.0.0.1:{pb}", "--auth", "change:changepw",
            "--who", "bench", "--branch", "loud", "--revision", "loud-1", "loud")
        row = wait_build(db, "loud-1", 3600)
        throughput = (args.mib * 1024 * 1024 / (row[1] - row[0]) / 1e6) if row else 0
        with open(os.path.join(master, "twistd.pid")) as f:
            master_pid = int(f.read().strip())
        peak = peak_rss_mib(master_pid)
        start = time.time()
        burst = [commit(repo, 1000 + n) for n in range(args.commits)]
        made_in = time.time() - start
        deadline = time.time() + 300
        while time.time() < deadline and not build_of(db, burst[-1]):
            time.sleep(0.1)
        time.sleep(5)
        tested = sum(1 for sha in burst if build_of(db, sha))
        print(json.dumps({"commit_ms": times, "throughput_mb_s": throughput,
                          "throughput_mib": args.mib, "peak_rss_mib": peak,
                          "burst": {"commits": args.commits, "tested": tested, "seconds": made_in}}))
    finally:
        subprocess.run([bbw, "stop", wdir], capture_output=True)
        subprocess.run([bb, "stop", master], capture_output=True)


if __name__ == "__main__":
    main()
