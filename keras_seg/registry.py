"""Model registry: a plain dict filled by the ``@register`` decorator.

Registration happens only when :mod:`keras_seg.models` imports its family modules
explicitly, so there are no hidden import-order side effects.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
from typing import Any, Callable, Dict, List, Mapping, Optional

__all__ = ["ModelSpec", "register", "get_builder", "get_spec", "list_models", "tiny_options"]


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What the registry knows about one architecture.

    Attributes:
      name: registry key, e.g. ``"unet"``.
      builder: function ``(num_classes, input_shape=..., **options) -> keras.Model``.
      tiny: options that give a fast, test-size variant of the same topology.
      paper: citation or link of the paper the builder follows.
      aux_weights: loss weight of each auxiliary / deep-supervision output, by output
        name, in output order. Empty for single-output models. With the builder option
        ``aux_outputs=True`` the model returns ``[logits, *aux]``; training uses these
        weights, and export / predict use ``logits`` alone.
    """

    name: str
    builder: Callable[..., Any]
    tiny: Mapping[str, Any]
    paper: str = ""
    aux_weights: Mapping[str, float] = dataclasses.field(default_factory=dict)

    def defaults(self) -> Dict[str, Any]:
        """Default value of each keyword option of the builder."""
        sig = inspect.signature(self.builder)
        return {p.name: p.default for p in sig.parameters.values()
                if p.name not in ("num_classes", "input_shape") and p.default is not p.empty}

    def option_names(self) -> List[str]:
        """Keyword options the builder accepts (everything but the positional ones)."""
        sig = inspect.signature(self.builder)
        return [
            p.name
            for p in sig.parameters.values()
            if p.name not in ("num_classes", "input_shape") and p.kind != p.VAR_KEYWORD
        ]


_REGISTRY: Dict[str, ModelSpec] = {}


def register(
    name: str,
    *,
    tiny: Optional[Mapping[str, Any]] = None,
    paper: str = "",
    aux_weights: Optional[Mapping[str, float]] = None,
):
    """Decorator that registers a model builder under ``name``.

    Args:
      name: the key users pass to :func:`keras_seg.build_model`.
      tiny: options for a fast test-size variant; every key must be a builder option.
      paper: citation of the paper the builder follows.
      aux_weights: ``{output_name: loss_weight}`` of auxiliary outputs, in output order;
        the builder must then take an ``aux_outputs`` option.

    Raises:
      ValueError: if ``name`` is already registered or ``tiny`` names an unknown option.
    """

    def decorator(fn):
        if name in _REGISTRY:
            raise ValueError(f"Model {name!r} is registered twice. Received: name={name!r}")
        spec = ModelSpec(
            name=name, builder=fn, tiny=dict(tiny or {}), paper=paper,
            aux_weights=dict(aux_weights or {}),
        )
        if spec.aux_weights and "aux_outputs" not in spec.option_names():
            raise ValueError(f"Model {name!r} declares aux_weights but has no aux_outputs option")
        unknown = sorted(set(spec.tiny) - set(spec.option_names()))
        if unknown:
            raise ValueError(
                f"tiny options {unknown} of model {name!r} are not arguments of "
                f"{fn.__name__}; accepted: {spec.option_names()}"
            )
        _REGISTRY[name] = spec
        return fn

    return decorator


def _ensure_loaded() -> None:
    # The models package registers every family when imported; import it lazily so
    # that `keras_seg.registry` itself stays importable without TensorFlow.
    import keras_seg.models  # noqa: F401  pylint: disable=import-outside-toplevel


def list_models() -> List[str]:
    """Returns the sorted names of every registered model."""
    _ensure_loaded()
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """Returns the :class:`ModelSpec` registered as ``name``.

    Raises:
      ValueError: for an unknown name; the message lists the valid names.
    """
    _ensure_loaded()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), _REGISTRY, n=3)
        hint = f" Did you mean {close}?" if close else ""
        raise ValueError(
            f"Unknown model. Received: name={name!r}.{hint} Valid names: {sorted(_REGISTRY)}"
        )
    return _REGISTRY[name]


def get_builder(name: str) -> Callable[..., Any]:
    """Returns the builder function registered as ``name``."""
    return get_spec(name).builder


def tiny_options(name: str) -> Dict[str, Any]:
    """Options that build a fast, test-size variant of model ``name``."""
    return dict(get_spec(name).tiny)


def check_options(name: str, options: Mapping[str, Any]) -> None:
    """Raises ValueError naming the accepted options if ``options`` has an unknown key."""
    accepted = get_spec(name).option_names()
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"Unknown option(s) {unknown} for model {name!r}. Accepted options: {accepted}"
        )
