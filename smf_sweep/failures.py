"""Why a trial failed, in a few lines: the exception that really failed and where.

    describe_error(exc)   # 'ValueError: memory layers (1, 5) out of range for 2 decoder layers\n
                          #    at smf_sweep/memory/insert.py:73 in insert_memory\n …'

Ray wraps a worker's exception several times (a Tune trial's RayTaskError around Ray Train's
WorkerGroupError or ControllerError around the worker's exception, whose traceback survives only as
text). The reason reported for a trial is the innermost exception's type and message, then the
innermost frames of the project's own code (else of any code) from its traceback. The same reason
reaches Tune (the trial's last result and its error), Optuna (user attr `failure_reason` of the FAIL
trial) and MLflow (tag `failure_reason`)."""
from __future__ import annotations

import re
import traceback

MAX_CHARS = 2000
FRAME = re.compile(r'^\s*File "(?P<path>[^"]+)", line (?P<line>\d+), in (?P<fn>\S+)')
# a line that starts an exception's text: 'ValueError: …', 'ray.exceptions.RaySystemError: …', 'KeyError'
HEADLINE = re.compile(r"^(?P<type>(?:[A-Za-z_][\w]*\.)*[A-Za-z_]\w*(?:Error|Exception|Exit|Interrupt|Failed|"
                      r"Warning|Timeout|Unavailable|Died|NonFiniteLoss)(?:\([\w.]+\))?)(?::\s?(?P<msg>.*))?$")


def describe_error(exc: BaseException, frames: int = 4) -> str:
    """'<Type>: <message>' of the exception that failed (inside Ray's wrappers), then up to `frames`
    of its innermost project frames ('  at smf_sweep/x.py:12 in fn'), then where it ran. (A
    trial.TrialFailed's message already is a reason: its callers use it as is.)"""
    texts, where = [], []
    cur, seen = exc, set()
    while id(cur) not in seen:
        seen.add(id(cur))
        texts.append(_text(cur))
        nxt = None
        failures = getattr(cur, "worker_failures", None)         # ray.train.WorkerGroupError
        if isinstance(failures, dict) and failures:
            rank = min(failures)
            where.append(f"Ray Train worker rank {rank}" + (f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""))
            nxt = failures[rank]
        elif getattr(cur, "controller_failure", None) is not None:  # ray.train.ControllerError
            where.append("Ray Train controller")
            nxt = cur.controller_failure
        elif getattr(cur, "_base_exc", None) is not None:          # Ray Train's UserExceptionWithTraceback
            nxt = cur._base_exc
        elif _is_ray_task_error(cur) and getattr(cur, "cause", None) is not None and cur.cause is not cur:
            nxt = cur.cause
        if nxt is None:
            break
        cur = nxt
    root = cur
    text = "\n".join(texts)
    head = _headline(root, text)
    lines = [head] + [f"  at {f}" for f in _frames(text, frames)]
    if where:
        lines.append(f"  (in the {where[-1]})")
    return "\n".join(lines)[:MAX_CHARS]


def reason_from_text(text: str, frames: int = 4) -> str:
    """The same reason from an error's text alone (Tune's error.txt): its last exception line and
    the innermost project frames."""
    head = _last_headline(text) or next((ln.strip() for ln in reversed(text.strip().splitlines()) if ln.strip()),
                                        "unknown error")
    return "\n".join([head] + [f"  at {f}" for f in _frames(text, frames)])[:MAX_CHARS]


# ---- helpers ------------------------------------------------------------------------------------
def _is_ray_task_error(e) -> bool:
    try:
        from ray.exceptions import RayTaskError
    except ImportError:
        return False
    return isinstance(e, RayTaskError)


def _text(e: BaseException) -> str:
    """Everything known about `e`'s traceback: its own (a local exception), the text Ray kept of a
    remote one (traceback_str, _traceback_str), and its message."""
    parts = []
    if e.__traceback__ is not None:
        parts.append("".join(traceback.format_exception(type(e), e, e.__traceback__)))
    for attr in ("traceback_str", "_traceback_str"):
        if isinstance(getattr(e, attr, None), str):
            parts.append(getattr(e, attr))
    try:
        parts.append(str(e))
    except Exception:
        pass
    return "\n".join(parts)


def _type_name(e: BaseException) -> str:
    cls = type(e)
    if _is_ray_task_error(e) and getattr(e, "cause", None) is not None:
        cls = type(e.cause)
    return cls.__name__


def _headline(root: BaseException, text: str) -> str:
    msg = ""
    try:
        msg = str(root.cause if _is_ray_task_error(root) and getattr(root, "cause", None) is not None else root)
    except Exception:
        pass
    name = _type_name(root)
    # Ray's own errors (RaySystemError, a RayTaskError without its cause …) carry a whole traceback
    # as their message: the exception that failed is its last exception line
    if "Traceback (most recent call last)" in msg or "\n  File " in msg or name.startswith("Ray"):
        inner = _last_headline(msg) or _last_headline(text)
        if inner:
            return inner
    first = [ln for ln in msg.strip().splitlines() if ln.strip()][:3]
    return f"{name}: {' / '.join(s.strip() for s in first)}" if first else name


def _last_headline(text: str) -> str | None:
    for ln in reversed(text.splitlines()):
        s = ln.rstrip()
        if s and not s[0].isspace():
            m = HEADLINE.match(s)
            if m and m.group("msg") is not None:
                return s
    return None


def _frames(text: str, n: int) -> list[str]:
    """The innermost `n` frames of the project (paths containing /smf_sweep/), outermost first; of
    any code when none is the project's. Deduplicated (Ray repeats tracebacks)."""
    found = []
    for ln in text.splitlines():
        m = FRAME.match(ln)
        if m:
            path = m.group("path")
            short = path[path.rindex("smf_sweep/"):] if "smf_sweep/" in path else path
            f = f"{short}:{m.group('line')} in {m.group('fn')}"
            if f in found:
                found.remove(f)
            found.append(f)
    ours = [f for f in found if f.startswith("smf_sweep/") and not f.startswith("smf_sweep/failures.py")]
    return (ours or found)[-n:] if n else []
