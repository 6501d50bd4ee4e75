"""Progress of long commands and log formats (issue 15, item 6): without a terminal,
`publish-sample --count` logs a plain line at every tenth and at the end; on a terminal (a pty) it
draws a bar instead; `--log-format json` makes every log line a JSON object with `level` and
`message`.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import time

from loader_harness import child_env, unique

LINE = re.compile(r"publish-sample: (\d+)/(\d+) records \((\d+)%")


def publish(floe_bin: str, bootstrap: str, count: int, *extra: str) -> subprocess.CompletedProcess:
    cmd = [floe_bin, *extra, "publish-sample", "--brokers", bootstrap, "--topic", unique("floe-progress"),
           "--count", str(count)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, env=child_env())


def test_plain_progress_lines_without_a_terminal(floe_bin, kafka_bootstrap):
    r = publish(floe_bin, kafka_bootstrap, 2000)
    assert r.returncode == 0, r.stderr
    seen = [tuple(int(x) for x in m.groups()) for m in map(LINE.search, r.stderr.splitlines()) if m]
    assert len(seen) >= 5, f"expected a progress line per tenth, got {seen}:\n{r.stderr}"
    assert all(total == 2000 for _, total, _ in seen), seen
    done = [d for d, _, _ in seen]
    assert done == sorted(done) and len(set(done)) == len(done), f"progress goes forward, once per step: {done}"
    assert seen[-1] == (2000, 2000, 100), f"the last line says all was sent: {seen[-1]}"
    assert all(pct == d * 100 // 2000 for d, _, pct in seen), seen
    assert "\r" not in r.stderr and "\x1b[" not in r.stderr, "no bar or escape codes without a terminal"


def test_log_format_json(floe_bin, kafka_bootstrap):
    r = publish(floe_bin, kafka_bootstrap, 500, "--log-format", "json")
    assert r.returncode == 0, r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    events = []
    for l in lines:
        if l.startswith("sent "):  # the command's own summary, not a log line
            continue
        try:
            events.append(json.loads(l))
        except json.JSONDecodeError as e:
            raise AssertionError(f"not a JSON log line ({e}): {l!r}") from e
    assert events, r.stderr
    for e in events:
        assert isinstance(e.get("level"), str) and isinstance(e.get("message"), str), e
    progress = [e for e in events if e.get("task") == "publish-sample"]
    assert progress and progress[-1]["done"] == 500 and progress[-1]["total"] == 500, progress
    assert progress[-1]["level"] == "INFO"
    # A usage error is still reported in plain words on stderr (it is not a log line).
    bad = subprocess.run([floe_bin, "--log-format", "xml", "status"], capture_output=True, text=True, timeout=30,
                         env=child_env())
    assert bad.returncode == 2 and "xml" in bad.stderr


def test_progress_bar_on_a_terminal(floe_bin, kafka_bootstrap):
    """stderr is a pty: a bar is drawn (carriage returns / cursor codes, the bar's brackets), and no
    plain progress line is logged."""
    master, slave = pty.openpty()
    env = child_env()
    env["TERM"] = "xterm"
    cmd = [floe_bin, "publish-sample", "--brokers", kafka_bootstrap, "--topic", unique("floe-progress-tty"),
           "--count", "3000", "--rate", "2000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=slave, stdin=subprocess.DEVNULL, env=env)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the pty
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.wait(timeout=30) == 0, out.decode(errors="replace")
    text = out.decode(errors="replace")
    assert "publish-sample (records)" in text and "/3000" in text, f"no bar drawn:\n{text[:2000]!r}"
    assert "\r" in text or "\x1b[" in text, "a bar redraws in place"
    assert not LINE.search(text), f"no plain progress lines on a terminal:\n{text[:2000]!r}"
