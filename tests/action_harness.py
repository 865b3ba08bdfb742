#!/usr/bin/env python3
"""Runs the composite action in action.yml the way a GitHub runner would, and checks what it
produced.

For each step it evaluates the `${{ ... }}` expressions of `if:`, `env:`, `with:` and
`working-directory:` (inputs, github, runner and steps contexts), gives `run:` steps their
own GITHUB_OUTPUT file and the job's GITHUB_STEP_SUMMARY, GITHUB_EVENT_PATH (a real-shaped
pull_request payload) and GITHUB_API_URL (a fake API server in this process), and emulates
actions/cache as a cache miss. A fake release server serves the binary under test as a
release archive with SHA256SUMS.

usage: tests/action_harness.py MODELCI_BINARY   (run from the repository root)
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import threading
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "ghs_harnessTokenThatMustNotLeak"
MARKER = "<!-- modelci:report label=harness -->"


class FakeGitHub(http.server.BaseHTTPRequestHandler):
    """Just enough of the REST API for one sticky comment on acme/vision#17."""

    requests: list[tuple[str, str, str]] = []

    def log_message(self, *arguments):  # quiet
        pass

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.requests.append(("GET", self.path, ""))
        if self.path == "/user":
            self.reply(200, {"login": "modelci-bot"})
        elif self.path.startswith("/repos/acme/vision/issues/17/comments"):
            self.reply(200, [])
        else:
            self.reply(404, {"message": "not here"})

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0))).decode()
        self.requests.append(("POST", self.path, body))
        self.reply(201, {"id": 1, "body": json.loads(body)["body"], "user": {"login": "modelci-bot"}})


def serve(handler, directory=None):
    if directory:
        class Files(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *arguments, **keywords):
                super().__init__(*arguments, directory=directory, **keywords)

            def log_message(self, *arguments):
                pass

        handler = Files
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


def lookup(path: str, context: dict):
    value = context
    for part in path.split("."):
        value = value.get(part, "") if isinstance(value, dict) else ""
    return "" if value is None else str(value)


def evaluate(text, context):
    if not isinstance(text, str):
        return "" if text is None else str(text)
    return EXPRESSION.sub(lambda match: lookup(match.group(1), context), text)


def condition(expression: str, context) -> bool:
    """The `if:` forms the action uses: clauses `a == 'b'` / `a != 'b'` joined by &&."""
    for clause in expression.split("&&"):
        match = re.fullmatch(r"\s*([\w.\-]+)\s*(==|!=)\s*'([^']*)'\s*", clause)
        if not match:
            raise SystemExit(f"harness: cannot evaluate if: {expression!r}")
        equal = lookup(match.group(1), context) == match.group(3)
        if equal != (match.group(2) == "=="):
            return False
    return True


def read_outputs(path: Path) -> dict:
    outputs, lines = {}, path.read_text().splitlines() if path.exists() else []
    index = 0
    while index < len(lines):
        line = lines[index]
        if "<<" in line and "=" not in line.split("<<")[0]:
            name, delimiter = line.split("<<", 1)
            value = []
            index += 1
            while lines[index] != delimiter:
                value.append(lines[index])
                index += 1
            outputs[name] = "\n".join(value)
        elif "=" in line:
            name, value = line.split("=", 1)
            outputs[name] = value
        index += 1
    return outputs


def run_action(inputs: dict, workspace: Path, extra_env: dict) -> tuple[int, dict, dict, str]:
    """Runs action.yml; returns (exit status, action outputs, step log, printed text)."""
    action = yaml.safe_load((ROOT / "action.yml").read_text())
    given = {name: spec.get("default", "") for name, spec in action["inputs"].items()}
    given.update(inputs)
    temp = Path(tempfile.mkdtemp(prefix="runner-"))
    event = temp / "event.json"
    event.write_text(json.dumps({"pull_request": {
        "number": 17,
        "head": {"sha": "head1", "repo": {"full_name": "acme/vision"}},
        "base": {"sha": "base1", "repo": {"full_name": "acme/vision"}},
    }}))
    context = {
        "inputs": {name: evaluate(value, {"github": {"token": TOKEN}}) for name, value in given.items()},
        "github": {"action_path": str(ROOT), "action_repository": "modelci/modelci", "token": TOKEN},
        "runner": {"temp": str(temp)},
        "steps": {},
    }
    runner_env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", str(temp)),
        "GITHUB_ACTIONS": "true",
        "GITHUB_REPOSITORY": "acme/vision",
        "GITHUB_EVENT_NAME": "pull_request",
        "GITHUB_EVENT_PATH": str(event),
        "GITHUB_SHA": "merge1",
        "GITHUB_SERVER_URL": "https://github.com",
        "GITHUB_RUN_ID": "42",
        "GITHUB_WORKSPACE": str(workspace),
        "GITHUB_STEP_SUMMARY": str(temp / "summary.md"),
        "RUNNER_TEMP": str(temp),
        "RUNNER_TOOL_CACHE": str(temp / "toolcache"),
        **extra_env,
    }
    printed = ""
    for step in action["runs"]["steps"]:
        step_id = step["id"]
        if "if" in step and not condition(step["if"], context):
            context["steps"][step_id] = {"outputs": {}, "conclusion": "skipped"}
            continue
        if "uses" in step:
            assert step["uses"].startswith("actions/cache@"), step["uses"]
            with_values = {key: evaluate(value, context) for key, value in step.get("with", {}).items()}
            assert with_values["key"].startswith("modelci-libtorch-2.13.0-"), with_values
            context["steps"][step_id] = {"outputs": {"cache-hit": "false"}, "with": with_values}
            continue
        outputs_file = temp / f"output-{step_id}"
        outputs_file.touch()
        env = {**runner_env, "GITHUB_OUTPUT": str(outputs_file)}
        env.update({key: evaluate(value, context) for key, value in step.get("env", {}).items()})
        cwd = workspace / evaluate(step.get("working-directory", "."), context)
        result = subprocess.run(["bash", "-e", "-c", evaluate(step["run"], context)], cwd=cwd, env=env,
                                capture_output=True, text=True)
        printed += result.stdout + result.stderr
        context["steps"][step_id] = {"outputs": read_outputs(outputs_file)}
        if result.returncode != 0:
            return result.returncode, {}, context["steps"], printed
    outputs = {name: evaluate(spec["value"], context) for name, spec in action["outputs"].items()}
    return 0, outputs, context["steps"], printed


def release(binary: Path, directory: Path, corrupt: bool = False):
    """A release folder as the release workflow makes it, for the -notorch archive."""
    pack = directory / "pack"
    pack.mkdir(parents=True)
    (pack / "modelci").write_bytes(binary.read_bytes())
    (pack / "modelci").chmod(0o755)
    archive = directory / "download" / "v9.9.9" / "modelci-x86_64-unknown-linux-gnu-notorch.tar.gz"
    archive.parent.mkdir(parents=True)
    with tarfile.open(archive, "w:gz", compresslevel=1) as tar:
        tar.add(pack / "modelci", arcname="modelci")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if corrupt:
        digest = "0" * 64
    (archive.parent / "SHA256SUMS").write_text(f"{digest}  {archive.name}\n")


def check(condition_holds: bool, message: str, failures: list):
    print(("ok   " if condition_holds else "FAIL ") + message)
    if not condition_holds:
        failures.append(message)


def main() -> int:
    binary = Path(sys.argv[1]).resolve()
    failures: list[str] = []
    github, api = serve(FakeGitHub)

    # 1. gate with the release binary, comment and summary against the fake API.
    with tempfile.TemporaryDirectory() as workspace, tempfile.TemporaryDirectory() as releases:
        workspace = Path(workspace)
        (workspace / "base.json").write_text('{"accuracy": 0.90}')
        (workspace / "run.json").write_text('{"accuracy": 0.91}')
        release(binary, Path(releases))
        files, release_url = serve(None, directory=releases)
        status, outputs, steps, printed = run_action(
            {"command": "gate", "libtorch": "none", "version": "9.9.9", "metrics": "run.json",
             "baseline": "base.json", "comment-label": "harness"},
            workspace,
            {"GITHUB_API_URL": api, "MODELCI_RELEASE_URL": release_url},
        )
        files.shutdown()
        check(status == 0, f"gate through the action exits 0 (got {status})", failures)
        check(outputs.get("verdict") == "pass", f"output verdict is pass ({outputs})", failures)
        check(outputs.get("report-path") == "modelci-output/report.md", "output report-path", failures)
        check(outputs.get("metrics-path") == "run.json", "output metrics-path", failures)
        check(steps["cache"].get("conclusion") == "skipped", "no libtorch cache for libtorch: none", failures)
        posts = [request for request in FakeGitHub.requests if request[0] == "POST"]
        check(len(posts) == 1 and posts[0][1] == "/repos/acme/vision/issues/17/comments",
              "one comment posted on the pull request", failures)
        check(bool(posts) and json.loads(posts[0][2])["body"].startswith(MARKER),
              "the comment carries the label's marker", failures)
        check(TOKEN not in printed, "the token appears nowhere in the log", failures)

    # 2. a release whose checksum does not match is refused.
    with tempfile.TemporaryDirectory() as workspace, tempfile.TemporaryDirectory() as releases:
        release(binary, Path(releases), corrupt=True)
        files, release_url = serve(None, directory=releases)
        status, _, _, printed = run_action(
            {"command": "doctor", "libtorch": "none", "version": "9.9.9"},
            Path(workspace),
            {"GITHUB_API_URL": api, "MODELCI_RELEASE_URL": release_url},
        )
        files.shutdown()
        check(status != 0 and "refusing to install it" in printed,
              "a release with a wrong checksum is refused", failures)

    # 3. run on the MNIST example with the runner's own libtorch; the step summary is written.
    with tempfile.TemporaryDirectory() as workspace:
        workspace = Path(workspace)
        subprocess.run(["cp", "-r", str(ROOT / "examples"), str(workspace)], check=True)
        status, outputs, steps, printed = run_action(
            {"command": "run", "libtorch": "system", "working-directory": "examples/mnist",
             "github-token": "", "comment-label": "harness"},
            workspace,
            {"GITHUB_API_URL": api, "MODELCI_BINARY": str(binary), "LIBTORCH": str(ROOT / ".libtorch" / "2.13.0")},
        )
        check(status == 0, f"run through the action exits 0 (got {status}): {printed[-400:]}", failures)
        check(outputs.get("verdict") == "pass", f"output verdict is pass ({outputs})", failures)
        report = workspace / "examples/mnist" / outputs.get("report-path", "missing")
        check(report.is_file(), f"the report exists at {report}", failures)
        summary = Path(tempfile.gettempdir())
        summaries = list(summary.glob("runner-*/summary.md"))
        check(any("modelci" in path.read_text() for path in summaries), "the job summary holds the report", failures)

    github.shutdown()
    if failures:
        print(f"action harness: {len(failures)} check(s) failed", file=sys.stderr)
        return 1
    print("action harness: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
