"""Final-answer verification: the last ``\\boxed{}`` of a response against a reference, with math-verify.

``MathVerifier().verify(response, reference) -> bool`` is a contract (outside checks call it). It never
raises and its time is bounded in any thread: a response with no ``\\boxed{}`` is wrong (the spec's prompt
demands one), inputs are capped in length before any parsing, and the symbolic compare is bounded by
math-verify's own timeouts. Those use SIGALRM, which only the main thread receives, so a call from another
thread runs the compare in a worker process (started on first use) and abandons it past the time bound: a power
tower such as ``10^{10^{10^{10}}}`` is judged wrong, never a hung thread.
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


_WORKER = {"pool": None}
_WORKER_LOCK = threading.Lock()
_WORKER_START_SECONDS = 120  # the first call waits for the worker process to start and import math-verify


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


def _worker_pool():
    with _WORKER_LOCK:
        if _WORKER["pool"] is None:
            with _main_module_importable():
                pool = multiprocessing.get_context("spawn").Pool(1)
            pool.apply_async(_warm_up).get(timeout=_WORKER_START_SECONDS)
            _WORKER["pool"] = pool
            atexit.register(_stop_worker)
        return _WORKER["pool"]


def _stop_worker() -> None:
    # Stopped before interpreter shutdown: a pool finalised during it raises inside its own __del__.
    with _WORKER_LOCK:
        pool, _WORKER["pool"] = _WORKER["pool"], None
    if pool is not None:
        pool.terminate()
        pool.join()


def _warm_up() -> bool:
    import math_verify  # noqa: F401 (imported once, before the first timed compare)

    return True


def _symbolic_equal_in_worker(reference: str, answer: str, timeout: int) -> bool:
    """:func:`_symbolic_equal` in the worker process (where SIGALRM works), abandoned after the parse and compare
    timeouts plus a second: the worker is then killed and restarted on the next call."""
    pool = _worker_pool()
    try:
        return pool.apply_async(_symbolic_equal, (reference, answer, timeout)).get(timeout=3 * timeout + 1)
    except multiprocessing.TimeoutError:
        with _WORKER_LOCK:
            if _WORKER["pool"] is pool:
                _WORKER["pool"] = None
        pool.terminate()
        log.warning("verifier: %.80r vs %.80r took over %ss; judged wrong", answer, reference, 3 * timeout + 1)
        return False


def _as_latex(answer: str) -> str:
    # math-verify extracts from math mode; a bare answer such as "\frac{1}{2}" or "(3, 4)" gets wrapped.
    return answer if "$" in answer else f"${answer}$"
