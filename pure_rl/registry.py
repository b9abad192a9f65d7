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

============  ========  ===============================================================================
kind          section   registered object
============  ========  ===============================================================================
estimator     algo      a ``torchrl.objectives.value.ValueEstimatorBase`` subclass, built with keyword args
baseline      algo      ``fn(batch: CreditBatch) -> advantages [N, K]`` (:mod:`pure_rl.objectives.credit`)
aggregation   algo      a class: ``()(values [B, T], mask [B, T], max_tokens) -> loss`` and
                        ``.share(mask, batch_mask) -> float`` (:mod:`pure_rl.objectives.aggregation`)
group_filter  algo      ``fn(advantage [G, S, K], mask [G, S, K], correct [G, S] or None) -> keep [G]``
                        (:mod:`pure_rl.group_filter`)
prm           env       ``factory(cfg) -> ProcessRewardModel``
task          env       ``factory(cfg, split) -> ProblemSource`` (``split``: ``"train"`` or ``"eval"``)
verifier      env       ``factory(cfg) -> object with .verify(response, reference) -> bool``
logger        log       ``factory(cfg, run_dir) -> torchrl.record.loggers.Logger``
============  ========  ===============================================================================

``options`` is a dataclass whose fields (made with :func:`pure_rl.config.opt`) are the thing's own config keys:
they join the kind's section (``env.prm_model``, ``algo.temperature``), are validated like every other key and
listed by ``--list-keys``. **A plug-in adds keys, it never changes one**: a core key of the section
(``env.max_steps``) cannot be declared at all, and two things may declare the same key only with the same type,
default, check and choices (a shared key such as ``temperature``); either clash is an error naming both owners.
``requires`` names option keys that must be set when the thing is selected.

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
    "declare_core_keys",
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
    "aggregation": "algo",
    "group_filter": "algo",
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
    "pure_rl.objectives.aggregation",
    "pure_rl.group_filter",
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
# Each section's own keys and the class that declares them (pure_rl.config declares them as it is imported).
_CORE_KEYS: dict[str, tuple[str, frozenset[str]]] = {}
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


def declare_core_keys(section: str, owner: str, keys: Iterable[str]) -> None:
    """Record ``section``'s core keys (declared by ``owner``, a class's qualified name); no registered thing may
    declare one of them."""
    _CORE_KEYS[section] = (owner, frozenset(keys))
    for e in all_entries():
        _check_core_keys(e)


def _check_core_keys(new: Entry) -> None:
    owner, core = _CORE_KEYS.get(new.section, ("", frozenset()))
    for f in new.option_fields():
        if f.name in core:
            raise RegistryError(
                f"{new.kind} {new.name!r} ({_qualname(new.obj)}) declares {new.section}.{f.name}, a core key of "
                f"the {new.section} section ({owner}): a plug-in may add keys, not redeclare one (its type, default "
                f"and check would replace the core's); rename the option, e.g. {new.name}_{f.name}"
            )


def _check_shared_keys(new: Entry) -> None:
    """A key two things declare in one section must mean the same: type, default, check and choices."""
    _check_core_keys(new)
    for other in all_entries():
        if other.section != new.section or (other.kind, other.name) == (new.kind, new.name):
            continue
        theirs = {f.name: f for f in other.option_fields()}
        for f in new.option_fields():
            if f.name in theirs and _signature(f) != _signature(theirs[f.name]):
                ours, other_sig = _signature(f), _signature(theirs[f.name])
                differs = [what for what, a, b in zip(_SIGNATURE_PARTS, ours, other_sig) if a != b]
                raise RegistryError(
                    f"{new.kind} {new.name!r} ({_qualname(new.obj)}) declares {new.section}.{f.name} with another "
                    f"{', '.join(differs)} than {other.kind} {other.name!r} ({_qualname(other.obj)}) does "
                    f"({_describe(f)} vs {_describe(theirs[f.name])}); rename the key"
                )


_SIGNATURE_PARTS = ("type", "default", "check", "choices")


def _signature(f: dataclasses.Field) -> tuple:
    """What a key means: its type, default, check (compared by its code, so two identical lambdas agree) and
    choices."""
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    check = f.metadata.get("check")
    code = getattr(check, "__code__", None)
    check_sig = None if check is None else (code.co_code, code.co_consts, code.co_names) if code else _qualname(check)
    return (str(f.type), repr(default), check_sig, repr(f.metadata.get("choices") or f.metadata.get("kind")))


def _describe(f: dataclasses.Field) -> str:
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    check = f.metadata.get("allowed") or ("a check" if f.metadata.get("check") else "no check")
    return f"{f.type} = {default!r}, {check}"


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
