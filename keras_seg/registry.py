"""Model registry: a plain dict filled by the ``@register`` decorator.

Registration happens only when :mod:`keras_seg.models` imports its family modules
explicitly, so there are no hidden import-order side effects.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

__all__ = [
    "ModelSpec", "register", "variant", "get_builder", "get_spec", "list_models", "tiny_options",
    "parse_inference_options",
]


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
        weights, and export / predict use ``logits`` alone. Training matches the weights
        to the model's outputs by name, so a configuration may build fewer of them.
      inference_options: builder options that select the inference graph without changing
        its variables (U-Net++'s ``head``): a trained model can be evaluated, predicted
        with or exported under other values of these (``--inference_options``).
    """

    name: str
    builder: Callable[..., Any]
    tiny: Mapping[str, Any]
    paper: str = ""
    aux_weights: Mapping[str, float] = dataclasses.field(default_factory=dict)
    inference_options: Tuple[str, ...] = ()

    def aux_weights_for(self, output_names: Sequence[str]) -> List[float]:
        """Loss weights of ``output_names[1:]`` (a built model's auxiliary outputs), by name.

        Raises:
          ValueError: an auxiliary output has no declared weight.
        """
        unknown = [n for n in output_names[1:] if n not in self.aux_weights]
        if unknown:
            raise ValueError(f"model {self.name!r} has auxiliary outputs {unknown} with no loss weight; "
                             f"the registry declares {dict(self.aux_weights)}")
        return [float(self.aux_weights[n]) for n in output_names[1:]]

    def build(self, num_classes: int, input_shape=(None, None, 3), **options: Any):
        """Builds the model after checking ``options`` against the builder's: the one build path
        of :func:`keras_seg.build_model`, checkpoints, shipped weights and export.

        Raises:
          ValueError: an option the builder does not take (the message lists the accepted
            ones), or an invalid value (from the builder).
        """
        check_options(self.name, options)
        return self.builder(num_classes, input_shape=tuple(input_shape), **options)

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
    inference_options: Sequence[str] = (),
):
    """Decorator that registers a model builder under ``name``.

    Args:
      name: the key users pass to :func:`keras_seg.build_model`.
      tiny: options for a fast test-size variant; every key must be a builder option.
      paper: citation of the paper the builder follows.
      aux_weights: ``{output_name: loss_weight}`` of auxiliary outputs, in output order;
        the builder must then take an ``aux_outputs`` option.
      inference_options: options that choose the inference graph only (see ModelSpec).

    Raises:
      ValueError: if ``name`` is already registered, or ``tiny`` or ``inference_options``
        names an unknown option.
    """

    def decorator(fn):
        if name in _REGISTRY:
            raise ValueError(f"Model {name!r} is registered twice. Received: name={name!r}")
        spec = ModelSpec(
            name=name, builder=fn, tiny=dict(tiny or {}), paper=paper,
            aux_weights=dict(aux_weights or {}), inference_options=tuple(inference_options),
        )
        if spec.aux_weights and "aux_outputs" not in spec.option_names():
            raise ValueError(f"Model {name!r} declares aux_weights but has no aux_outputs option")
        unknown = sorted(set(spec.inference_options) - set(spec.option_names()))
        if unknown:
            raise ValueError(f"inference_options {unknown} of model {name!r} are not arguments of {fn.__name__}")
        unknown = sorted(set(spec.tiny) - set(spec.option_names()))
        if unknown:
            raise ValueError(
                f"tiny options {unknown} of model {name!r} are not arguments of "
                f"{fn.__name__}; accepted: {spec.option_names()}"
            )
        _REGISTRY[name] = spec
        return fn

    return decorator


def variant(base: Callable[..., Any], key: str, doc: str, /, *, fixed: Optional[Mapping[str, Any]] = None,
            **defaults: Any) -> Callable[..., Any]:
    """A model variant declared as data: ``base`` with options ``fixed`` and other ``defaults``.

    FCN-32s/16s/8s are one builder at three strides, FC-DenseNet56/67/103 one builder at three
    depths: each variant is a row (fixed options, defaults) rather than a copied signature.
    The returned builder's signature is ``base``'s without the ``fixed`` options and with
    the new defaults, so the registry's option checks, ``keras-seg models`` and ``help()``
    see exactly what the variant accepts.

    Args:
      base: the general builder ``(num_classes, input_shape=..., *, **options)``.
      key: the variant's registry name; the builder is called ``build_<key>``, and its model
        ``name`` defaults to ``key``.
      doc: first paragraph of the variant's docstring; the options section is generated.
      fixed: options the variant pins; callers cannot pass them.
      **defaults: options whose default the variant changes.

    Raises:
      ValueError: ``fixed`` or ``defaults`` names an option ``base`` does not take.
    """
    fixed = dict(fixed or {})
    sig = inspect.signature(base)
    if "name" in sig.parameters and "name" not in fixed:
        defaults.setdefault("name", key)
    unknown = sorted((set(fixed) | set(defaults)) - set(sig.parameters))
    if unknown:
        raise ValueError(f"variant {key!r}: {base.__name__} has no option(s) {unknown}")
    params = [p.replace(default=defaults[p.name]) if p.name in defaults else p
              for p in sig.parameters.values() if p.name not in fixed]
    signature = sig.replace(parameters=params)

    def builder(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return base(*bound.args, **bound.kwargs, **fixed)

    pinned = ", ".join(f"``{k}={v!r}``" for k, v in fixed.items())
    changed = ", ".join(f"``{k}={v!r}``" for k, v in defaults.items())
    builder.__signature__ = signature
    builder.__name__ = builder.__qualname__ = f"build_{key}"
    builder.__module__ = base.__module__
    builder.__doc__ = (f"{doc}\n\n    A variant of :func:`{base.__module__}.{base.__name__}` (see it for every option, "
                       f"the returned model and the errors)"
                       + (f", with {pinned} fixed" if pinned else "")
                       + (f" and the defaults {changed}" if changed else "") + ".\n    ")
    return builder


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


#: Help of ``--inference_options`` (evaluate, predict and export).
INFERENCE_OPTIONS_HELP = ("key=value options that pick another inference graph of the same trained variables, "
                          "e.g. head=L2 for a pruned U-Net++ (keras_seg.registry.ModelSpec.inference_options).")


def parse_inference_options(items: Optional[List[str]]) -> Dict[str, Any]:
    """``["head=L2", "k=3"]`` (the ``--inference_options`` flag) as ``{"head": "L2", "k": 3}``.

    Values are JSON where they parse as JSON (numbers, ``true``, ``null``), else strings.

    Raises:
      ValueError: an item is not ``key=value`` or a key repeats.
    """
    options: Dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--inference_options takes key=value items, e.g. head=L2. Received: {item!r}")
        key = key.strip()
        if key in options:
            raise ValueError(f"--inference_options names {key!r} twice. Received: {items!r}")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options
