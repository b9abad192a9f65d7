"""Named building blocks a run config selects: one registry per kind, filled where each thing is defined.

In the idiom of TorchRL's ``register_value_estimator`` and verl's ``register_adv_est``, a name is declared once,
by a decorator beside the definition::

    @register("prm", "my_rule", options=MyRuleOptions)
    def my_rule_prm(cfg):            # a factory: called with the run config
        return MyRulePRM(cfg.env.my_threshold)

and read with :func:`get` / :func:`names`. The config's choices (``env.prm``, ``env.task``, ``env.verifier``,
``algo.estimator``, ``algo.baseline``, ``log.loggers``), ``--list-keys`` and every "allowed: ..." error read these
registries, so no list of names is kept anywhere else. A user module listed under the config's top-level
``plugins:`` key is imported before validation; what it registers is selectable by name like a built-in.

What each kind holds (the contract; README "Extending pure-rl"):

==========  ========  =================================================================================
kind        section   registered object
==========  ========  =================================================================================
estimator   algo      a ``torchrl.objectives.value.ValueEstimatorBase`` subclass, built with keyword args
baseline    algo      ``fn(batch: CreditBatch) -> advantages [N, K]`` (:mod:`pure_rl.objectives.credit`)
prm         env       ``factory(cfg) -> ProcessRewardModel``
task        env       ``factory(cfg, split) -> ProblemSource`` (``split``: ``"train"`` or ``"eval"``)
verifier    env       ``factory(cfg) -> object with .verify(response, reference) -> bool``
logger      log       ``factory(cfg, run_dir) -> torchrl.record.loggers.Logger``
==========  ========  =================================================================================

``options`` is a dataclass whose fields (made with :func:`pure_rl.config.opt`) are the thing's own config keys:
they join the kind's section (``env.prm_model``, ``algo.temperature``), are validated like every other key and
listed by ``--list-keys``. Two things may declare the same key only with the same type and default (a shared
key such as ``temperature``). ``requires`` names option keys that must be set when the thing is selected.

This module imports only the standard library, so every layer (``envs``, ``agents``, the objectives, the run)
may register into it without importing another.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "KINDS",
    "SECTIONS",
    "Entry",
    "RegistryError",
    "entry",
    "get",
    "import_plugins",
    "names",
    "opt",
    "register",
]

# Each kind, and the config section whose key selects it.
SECTIONS = {
    "estimator": "algo",
    "baseline": "algo",
    "prm": "env",
    "task": "env",
    "verifier": "env",
    "logger": "log",
}
KINDS = tuple(SECTIONS)

# Modules that define the built-ins: importing them registers every built-in name.
_BUILTIN_MODULES = (
    "pure_rl.objectives.credit",
    "pure_rl.objectives.estimators",
    "envs.factory",
    "pure_rl.loggers",
)


def opt(
    default: Any,
    help: str,
    *,
    choices: Iterable[Any] | None = None,
    kind: str | None = None,
    check: Callable[[Any], bool] | None = None,
    allowed: str | None = None,
) -> Any:
    """A config key: its default, a one-line help, and optionally its allowed values.

    ``choices`` lists the allowed values; ``kind`` makes them the names registered under that kind (read when
    the config is validated, so plug-ins count; for a list-valued key, each element); ``check`` is a predicate
    with ``allowed`` describing it.
    """
    meta = {
        "help": help,
        "choices": tuple(choices) if choices is not None else None,
        "kind": kind,
        "check": check,
        "allowed": allowed,
    }
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


class RegistryError(ValueError):
    """An unknown kind or name, a name registered twice, or a plug-in that failed to import."""


@dataclass(frozen=True)
class Entry:
    """One registered thing: its object, its own config keys and what it needs."""

    kind: str
    name: str
    obj: Any
    options: type | None = None
    requires: tuple[str, ...] = ()
    meta: dict = field(default_factory=dict)

    @property
    def section(self) -> str:
        return SECTIONS[self.kind]

    def option_fields(self) -> tuple[dataclasses.Field, ...]:
        return dataclasses.fields(self.options) if self.options is not None else ()

    def option_values(self, cfg) -> dict[str, Any]:
        """This thing's own keys as read from the run config (``{key: value}``)."""
        section = getattr(cfg, self.section)
        return {f.name: getattr(section, f.name) for f in self.option_fields()}


_REGISTRY: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
_builtins_loaded = False
_version = 0  # bumped by every registration, so what is derived from the registry knows when to rebuild


def _check_kind(kind: str) -> None:
    if kind not in _REGISTRY:
        raise RegistryError(f"unknown registry kind {kind!r}; kinds: {', '.join(KINDS)}")


def register(
    kind: str,
    name: str,
    *,
    options: type | None = None,
    requires: tuple[str, ...] = (),
    **meta: Any,
) -> Callable[[Any], Any]:
    """Decorator: register the decorated object under ``kind`` / ``name`` and return it unchanged.

    Args:
        kind: one of :data:`KINDS`.
        name: the name a config selects it by.
        options: a dataclass of the thing's own config keys (fields made with ``pure_rl.config.opt``).
        requires: option keys that must not be None when this thing is selected.
        meta: what else the run needs to know: a baseline's ``needs_group=True`` / ``needs_step_tokens=True``;
            ``package="wandb"``, an importable package whose absence fails config validation with its pip name.
    """
    _check_kind(kind)
    if options is not None and not dataclasses.is_dataclass(options):
        raise RegistryError(f"{kind} {name!r}: options must be a dataclass of config keys, got {options!r}")
    declared = {f.name for f in dataclasses.fields(options)} if options is not None else set()
    missing = [k for k in requires if k not in declared]
    if missing:
        raise RegistryError(f"{kind} {name!r}: requires {missing}, which its options do not declare")

    def decorator(obj: Any) -> Any:
        old = _REGISTRY[kind].get(name)
        if old is not None and _qualname(old.obj) != _qualname(obj):
            raise RegistryError(
                f"{kind} {name!r} is already registered by {_qualname(old.obj)}; choose another name for "
                f"{_qualname(obj)}"
            )
        new = Entry(kind, name, obj, options, tuple(requires), dict(meta))
        _check_shared_keys(new)
        global _version
        if old != new:
            _REGISTRY[kind][name] = new
            _version += 1
        return obj

    return decorator


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _check_shared_keys(new: Entry) -> None:
    """A key two things declare in one section must mean the same type with the same default."""
    for other in all_entries():
        if other.section != new.section or (other.kind, other.name) == (new.kind, new.name):
            continue
        theirs = {f.name: f for f in other.option_fields()}
        for f in new.option_fields():
            if f.name in theirs and _signature(f) != _signature(theirs[f.name]):
                raise RegistryError(
                    f"{new.kind} {new.name!r} declares {new.section}.{f.name} unlike {other.kind} "
                    f"{other.name!r} does ({_signature(f)} vs {_signature(theirs[f.name])}); rename the key"
                )


def _signature(f: dataclasses.Field) -> tuple:
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    return (str(f.type), repr(default))


def load_builtins() -> None:
    """Import the modules that register the built-in names (once)."""
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def import_plugins(modules: list[str] | tuple[str, ...]) -> None:
    """Import user modules (the config's ``plugins:``) so that what they register is selectable.

    A plug-in is ordinary Python code and runs with the user's rights: list only modules you trust.
    """
    load_builtins()
    for module in modules:
        if not isinstance(module, str) or not module:
            raise RegistryError(f"plugins: each entry must be an importable module name, got {module!r}")
        try:
            importlib.import_module(module)
        except Exception as e:  # any failure inside the user's module is reported with its name
            raise RegistryError(
                f"plugins: module {module!r} failed to import ({type(e).__name__}: {e}); check that it is on "
                "PYTHONPATH (or installed) and imports cleanly with `python -c 'import "
                f"{module}'`"
            ) from e


def entry(kind: str, name: str) -> Entry:
    """The registered :class:`Entry` for ``kind`` / ``name``; an unknown name lists the registered ones."""
    _check_kind(kind)
    load_builtins()
    try:
        return _REGISTRY[kind][name]
    except KeyError:
        raise RegistryError(
            f"unknown {kind} {name!r}; registered: {', '.join(names(kind))} (a plug-in module listed under "
            "'plugins:' can register more)"
        ) from None


def get(kind: str, name: str) -> Any:
    """The object registered under ``kind`` / ``name``."""
    return entry(kind, name).obj


def version() -> int:
    """A number that changes whenever something is registered (after the built-ins are loaded)."""
    load_builtins()
    return _version


def names(kind: str) -> tuple[str, ...]:
    """The registered names of ``kind``, sorted."""
    _check_kind(kind)
    load_builtins()
    return tuple(sorted(_REGISTRY[kind]))


def all_entries(kind: str | None = None) -> list[Entry]:
    """Every registered entry (of ``kind``), in registration order."""
    kinds = KINDS if kind is None else (kind,)
    return [e for k in kinds for e in _REGISTRY[k].values()]
