"""Final-answer verification: the last ``\\boxed{}`` of a response against a reference, with math-verify.

``MathVerifier().verify(response, reference) -> bool`` is a contract (outside checks call it). It never
raises and its time is bounded in any thread: a response with no ``\\boxed{}`` is wrong (the spec's prompt
demands one), inputs are capped in length before any parsing, and the symbolic compare is bounded by
math-verify's own timeouts. Those use SIGALRM, which only the main thread receives, so a call from another
thread runs the compare in a worker process of its own (a few are kept for later calls) and abandons it past the
time bound: a power tower such as ``10^{10^{10^{10}}}`` is judged wrong, never a hung thread, and each call's
bound holds however many run at once.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import multiprocessing
import os
import sys
import threading

__all__ = ["MathVerifier", "last_boxed"]

log = logging.getLogger(__name__)

_BOXED_MARKERS = ("\\boxed", "\\fbox")


def last_boxed(text: str, max_chars: int = 2000) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``, or ``\\boxed 5``) in ``text``, else None.

    Braces are matched (nested braces are fine); an unbalanced or over-long box gives None. Scans at most
    ``max_chars`` after the marker, so time is linear in the input whatever it holds.
    """
    start = max(text.rfind(m) for m in _BOXED_MARKERS)
    if start < 0:
        return None
    marker = next(m for m in _BOXED_MARKERS if text.startswith(m, start))
    i = start + len(marker)
    if i < len(text) and text[i] == " ":
        # "\boxed 5": the argument runs to the next '$' or whitespace.
        rest = text[i + 1 : i + 1 + max_chars]
        arg = rest.split("$")[0].split()[0] if rest.strip() else ""
        return arg or None
    if i >= len(text) or text[i] != "{":
        return None
    depth = 0
    for j in range(i, min(len(text), i + max_chars)):
        c = text[j]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None


class MathVerifier:
    """Checks the final ``\\boxed{}`` answer of a response against a reference answer.

    Args:
        max_response_chars: only the last this-many characters of a response are searched (the final answer
            is at the end; this bounds time on huge inputs).
        max_answer_chars: a boxed answer or reference longer than this is judged wrong without parsing.
        timeout_seconds: math-verify's parse and compare timeouts (they use SIGALRM, so they apply only in
            the main thread; elsewhere the length caps alone bound the time).
    """

    def __init__(self, max_response_chars: int = 20_000, max_answer_chars: int = 500, timeout_seconds: int = 5):
        self.max_response_chars = max_response_chars
        self.max_answer_chars = max_answer_chars
        self.timeout_seconds = timeout_seconds

    def extract(self, response: str) -> str | None:
        """The boxed final answer of ``response``, or None when there is none."""
        if not isinstance(response, str):
            return None
        return last_boxed(response[-self.max_response_chars :], max_chars=self.max_answer_chars + 2)

    def verify(self, response: str, reference: str) -> bool:
        """True when the last ``\\boxed{}`` of ``response`` equals ``reference`` mathematically. Never raises."""
        try:
            return self._verify(response, reference)
        except Exception as e:  # a verifier must never take a training run down
            log.warning("verifier error on answer %.80r vs %.80r: %s", self.extract(response), reference, e)
            return False

    def _verify(self, response: str, reference: str) -> bool:
        answer = self.extract(response)
        if answer is None or reference is None:
            return False
        reference = str(reference).strip()
        answer = answer.strip()
        if not answer or not reference or len(reference) > self.max_answer_chars:
            return False
        if answer == reference:
            return True
        if threading.current_thread() is threading.main_thread():
            return _symbolic_equal(reference, answer, self.timeout_seconds)
        return _symbolic_equal_in_worker(reference, answer, self.timeout_seconds)


def _symbolic_equal(reference: str, answer: str, timeout: int) -> bool:
    """math-verify's parse and compare, each bounded by ``timeout`` seconds (SIGALRM: the main thread only)."""
    from math_verify import parse, verify

    gold = parse(_as_latex(reference), parsing_timeout=timeout)
    pred = parse(_as_latex(answer), parsing_timeout=timeout)
    if not gold or not pred:
        return False
    return bool(verify(gold, pred, timeout_seconds=timeout))


_WORKER_START_SECONDS = 120  # a new worker process waits this long to start and import math-verify
_MAX_IDLE_WORKERS = 4  # started workers kept for later calls; more concurrent calls start more
_IDLE: list[_Worker] = []
_IDLE_LOCK = threading.Lock()


@contextlib.contextmanager
def _main_module_importable():
    """While a worker process starts: hide ``__main__.__file__`` when it names no file (a script piped to
    ``python -``, ``-c``, a notebook). A spawned process re-imports the parent's main module from that path and
    would die with FileNotFoundError; the worker needs nothing from it."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    hide = main is not None and path is not None and getattr(main.__spec__, "name", None) is None
    hide = hide and not os.path.isfile(path)
    if hide:
        del main.__file__
    try:
        yield
    finally:
        if hide:
            main.__file__ = path


class _Worker:
    """One spawned process that runs :func:`_symbolic_equal` (in its main thread, where SIGALRM works) for one
    caller at a time. **Each call is bounded on its own**: a call has a worker to itself (an idle one, or a new
    one when all are busy), so k slow compares cost one bound, not k, and a compare abandoned past its bound
    kills only its own worker, never another caller's pending answer."""

    def __init__(self):
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        with _main_module_importable():
            self.process = ctx.Process(target=_serve, args=(child,), daemon=True)
            self.process.start()
        child.close()
        if not self.conn.poll(_WORKER_START_SECONDS):
            self.stop()
            raise TimeoutError(f"the verifier's worker process did not start within {_WORKER_START_SECONDS}s")
        self.conn.recv()  # ready: math-verify imported

    def compare(self, reference: str, answer: str, timeout: int) -> bool | None:
        """The compare's result, or None when it ran past the parse and compare timeouts plus a second (the
        worker is then stopped)."""
        self.conn.send((reference, answer, timeout))
        if self.conn.poll(3 * timeout + 1):
            with contextlib.suppress(EOFError):  # the process died: judged as past the bound
                return self.conn.recv()
        self.stop()
        return None

    def stop(self) -> None:
        self.process.kill()
        self.process.join()
        self.conn.close()


def _serve(conn) -> None:
    import math_verify  # noqa: F401 (imported once, before the first timed compare)

    conn.send(True)
    while True:
        try:
            reference, answer, timeout = conn.recv()
        except EOFError:  # the caller's process ended
            return
        try:
            result = _symbolic_equal(reference, answer, timeout)
        except Exception:
            result = False
        conn.send(result)


def _stop_idle_workers() -> None:
    # Stopped before interpreter shutdown, not left to the processes' finalisers.
    with _IDLE_LOCK:
        workers, _IDLE[:] = list(_IDLE), []
    for worker in workers:
        worker.stop()


atexit.register(_stop_idle_workers)


def _symbolic_equal_in_worker(reference: str, answer: str, timeout: int) -> bool:
    """:func:`_symbolic_equal` in a worker process of its own, abandoned past its bound (judged wrong)."""
    with _IDLE_LOCK:
        worker = _IDLE.pop() if _IDLE else None
    if worker is None or not worker.process.is_alive():
        worker = _Worker()
    result = worker.compare(reference, answer, timeout)
    if result is None:
        log.warning("verifier: %.80r vs %.80r took over %ss; judged wrong", answer, reference, 3 * timeout + 1)
        return False
    with _IDLE_LOCK:
        keep = len(_IDLE) < _MAX_IDLE_WORKERS
        if keep:
            _IDLE.append(worker)
    if not keep:
        worker.stop()
    return result


def _as_latex(answer: str) -> str:
    # math-verify extracts from math mode; a bare answer such as "\frac{1}{2}" or "(3, 4)" gets wrapped.
    return answer if "$" in answer else f"${answer}$"
