#!/usr/bin/env python3
"""Pontus (the seed's toy CI) measured the way ZeroCI's benchmark measures itself.

Run by `cargo bench --bench pipeline -- peers --pontus PATH` (PATH: a clone of
github.com/yandenghong/Pontus). Starts its dispatcher, test runner and repository observer on
loopback ports chosen here, then measures:
  1. commit -> result: a commit in the observed repository until the dispatcher has written the
     commit's test results (its observer polls every 5 s: that is Pontus's design);
  6. a burst: commits made in a row, then how many of them ever get tested.
Prints one JSON object on stdout.
"""
import argparse
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time

from common import commit, free_port, git






def wait_port(port, limit=10):
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise SystemExit(f"nothing listens on {port}")




def wait_result(results, sha, limit):
    path = os.path.join(results, sha)
    deadline = time.time() + limit
    while time.time() < deadline:
        if os.path.exists(path):
            return True
        time.sleep(0.005)
    return False


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--pontus", required=True)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--commits", type=int, default=50)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="pontus-bench-")
    upstream = os.path.join(work, "upstream")
    os.makedirs(os.path.join(upstream, "tests"))
    with open(os.path.join(upstream, "tests", "test_true.py"), "w") as f:
        f.write("import unittest\n\n\nclass T(unittest.TestCase):\n    def test_true(self):\n        pass\n")
    git(upstream, "init", "-q", "-b", "main")
    commit(upstream, 0)
    observed, runner = os.path.join(work, "observed"), os.path.join(work, "runner")
    git(work, "clone", "-q", upstream, observed)
    git(work, "clone", "-q", upstream, runner)
    dispatcher_dir = os.path.join(work, "dispatcher")
    os.makedirs(dispatcher_dir)
    results = os.path.join(dispatcher_dir, "test_results")
    dport, rport = free_port(), free_port()
    log = open(os.path.join(work, "pontus.log"), "w")
    procs = []
    try:
        procs.append(subprocess.Popen(
            [sys.executable, os.path.join(args.pontus, "dispatcher.py"), "--host", "localhost",
             "--port", str(dport)], cwd=dispatcher_dir, stdout=log, stderr=log))
        wait_port(dport)
        procs.append(subprocess.Popen(
            # `localhost`, as Pontus expects: it parses "host:port" with a regex that stops at dots.
            [sys.executable, os.path.join(args.pontus, "test_runner.py"), "--host", "localhost",
             "--port", str(rport), "--dispatcher-server", f"localhost:{dport}", runner],
            cwd=work, stdout=log, stderr=log))
        wait_port(rport)
        procs.append(subprocess.Popen(
            [sys.executable, os.path.join(args.pontus, "repo_observer.py"),
             "--dispatcher-server", f"localhost:{dport}", observed],
            cwd=work, stdout=log, stderr=log))
        # Warm-up: the first commit's result.
        if not wait_result(results, commit(upstream, 1), 60):
            raise SystemExit("Pontus never tested the first commit")
        times = []
        for n in range(args.runs):
            # At a random point of the observer's 5 s cycle, as commits come.
            time.sleep(random.uniform(0, 5))
            sha = commit(upstream, 100 + n)
            start = time.time()
            if wait_result(results, sha, 60):
                times.append((time.time() - start) * 1000)
        start = time.time()
        burst = [commit(upstream, 1000 + n) for n in range(args.commits)]
        made_in = time.time() - start
        # Whatever Pontus tests of them, it tests within its poll cycles.
        time.sleep(30)
        tested = sum(os.path.exists(os.path.join(results, sha)) for sha in burst)
        print(json.dumps({"commit_ms": times, "burst": {
            "commits": args.commits, "tested": tested, "seconds": made_in}}))
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


if __name__ == "__main__":
    main()
