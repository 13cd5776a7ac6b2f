"""The alert hook: a shell command or an http(s) URL told when a scheduled job fails or is missed."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import urllib.request
from typing import Final

__all__ = ["ALERT_ENV", "send_alert"]

log = logging.getLogger(__name__)

ALERT_ENV: Final = "RECYCLE_ENGINE_ALERT"  # the message; _JOB, _KIND and _RUN_ID carry the parts
_MAX_REASON_CHARS: Final = 2000


def send_alert(
    hook: str | None,
    *,
    job: str,
    kind: str,
    reason: str,
    run_id: str | None = None,
    timeout_s: float = 30.0,
) -> bool:
    """Tell the alert hook that `job` ended as `kind` (FAILED or MISSED) and why; never raises.

    A hook starting with http:// or https:// receives a JSON POST. Anything else is a command line,
    run by /bin/sh with the message appended as its last argument and in $RECYCLE_ENGINE_ALERT
    (also $RECYCLE_ENGINE_ALERT_JOB, _KIND and _RUN_ID). Returns True when the hook reported
    success (exit 0 or HTTP 2xx), False otherwise or when no hook is set.
    """
    if not hook:
        return False
    message = f"recycle-engine {job} {kind}: {reason}"[:_MAX_REASON_CHARS]
    try:
        if hook.startswith(("http://", "https://")):
            return _post(hook, job=job, kind=kind, message=message, run_id=run_id, timeout_s=timeout_s)
        return _run_command(hook, job=job, kind=kind, message=message, run_id=run_id, timeout_s=timeout_s)
    except Exception:
        # An alert that cannot be delivered must never take the scheduler down with it.
        log.exception("alert hook failed", extra={"job": job, "kind": kind, "run_id": run_id})
        return False


def _run_command(
    command: str, *, job: str, kind: str, message: str, run_id: str | None, timeout_s: float
) -> bool:
    env = {
        **os.environ,
        ALERT_ENV: message,
        f"{ALERT_ENV}_JOB": job,
        f"{ALERT_ENV}_KIND": kind,
        f"{ALERT_ENV}_RUN_ID": run_id or "",
    }
    # `sh -c 'cmd "$@"' name message` hands the message over as $1 without ever quoting it into the
    # command line, so an error text with quotes or `;` cannot change what the shell runs.
    argv = ["/bin/sh", "-c", f'{command} "$@"', "recycle-engine-alert", message]
    # A session of its own, so a timeout kills the whole group: a grandchild left holding the
    # stderr pipe would otherwise keep us waiting past the timeout.
    with subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            _, stderr = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            log.error("alert command timed out", extra={"job": job, "kind": kind, "timeout_s": timeout_s})
            return False
    if proc.returncode != 0:
        log.error(
            "alert command failed",
            extra={"job": job, "kind": kind, "exit_code": proc.returncode, "stderr": stderr[-500:]},
        )
        return False
    log.info("alert sent", extra={"job": job, "kind": kind, "run_id": run_id})
    return True


def _post(url: str, *, job: str, kind: str, message: str, run_id: str | None, timeout_s: float) -> bool:
    body = json.dumps(
        {"job": job, "kind": kind, "message": message, "run_id": run_id, "host": socket.gethostname()}
    ).encode()
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    # urlopen raises HTTPError for 4xx and 5xx answers; send_alert logs those and returns False.
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        status = int(response.status)
    log.info("alert posted", extra={"job": job, "kind": kind, "run_id": run_id, "http_status": status})
    return 200 <= status < 300
