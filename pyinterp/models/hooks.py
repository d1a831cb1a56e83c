"""Hook points and the TransformerLens-style hook API shared by every pyinterp model.

A :class:`HookPoint` is an identity on its activation until a hook function is added; hook
functions have the TransformerLens signature ``fn(activation, hook) -> tensor | None`` (return
a tensor to replace the activation, ``None`` to keep it). :class:`HookedModel` gives a model
``hook_names()``, ``run_with_cache``, ``run_with_hooks`` and the ``hooks(...)`` context manager.
"""
from __future__ import annotations

import contextlib
import difflib
import re
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

HookFn = Callable[[torch.Tensor, "HookPoint"], Optional[torch.Tensor]]
NameOrFilter = Union[str, Callable[[str], bool]]
FwdHooks = Sequence[Tuple[NameOrFilter, HookFn]]


class HookHandle:
    """Removes one hook function from its hook point."""

    def __init__(self, point: "HookPoint", fn: HookFn):
        self.point, self.fn = point, fn

    def remove(self) -> None:
        self.point._remove(self.fn)


class HookPoint(nn.Module):
    """Identity on a named activation, with hook functions run in the order they were added.

    Calling a hook point with no hook costs one attribute test (no ``nn.Module.__call__``),
    which keeps unhooked models as fast as plain ones.
    """

    def __init__(self):
        super().__init__()
        self.name: Optional[str] = None
        self._fns: List[HookFn] = []
        # Adapters set this to attach/detach framework hooks lazily: called with True when the
        # first hook function is added and with False when the last is removed.
        self._on_change: Optional[Callable[[bool], None]] = None

    @property
    def active(self) -> bool:
        return bool(self._fns)

    def add_hook(self, fn: HookFn, dir: str = "fwd") -> HookHandle:
        """Add ``fn(activation, hook) -> tensor | None``; only forward hooks are supported."""
        if dir != "fwd":
            raise ValueError(f"dir must be 'fwd' (backward hooks are not supported), got {dir!r}")
        if not callable(fn):
            raise TypeError(f"hook function for {self.name} must be callable, got {type(fn).__name__}")
        was = self.active
        self._fns.append(fn)
        if not was and self._on_change is not None:
            self._on_change(True)
        return HookHandle(self, fn)

    def _remove(self, fn: HookFn) -> None:
        for i, f in enumerate(self._fns):
            if f is fn:
                del self._fns[i]
                break
        if not self._fns and self._on_change is not None:
            self._on_change(False)

    def remove_hooks(self) -> None:
        had = self.active
        self._fns.clear()
        if had and self._on_change is not None:
            self._on_change(False)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self._fns:
            return x
        for fn in list(self._fns):
            out = fn(x, self)
            if out is not None:
                if not isinstance(out, torch.Tensor):
                    raise TypeError(f"hook on {self.name} returned {type(out).__name__}; "
                                    "return a tensor to replace the activation or None to keep it")
                x = out
        return x

    def forward(self, x):  # for completeness (nn.Module API); __call__ is the fast path
        return self.__call__(x)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, hooks={len(self._fns)}"


_BLOCK = re.compile(r"^blocks\.(\d+)\.")
_BEFORE_BLOCKS = ("hook_embed", "hook_pos_embed", "hook_tokens")


class AttentionHookPoints(nn.Module):
    """An attention layer's hook points, under TransformerLens's names (q, k, v: (B, T, H,
    d_head); attn_scores, pattern: (B, H, T, T); z: (B, T, H, d_head))."""

    def __init__(self):
        super().__init__()
        self.hook_q = HookPoint()
        self.hook_k = HookPoint()
        self.hook_v = HookPoint()
        self.hook_attn_scores = HookPoint()
        self.hook_pattern = HookPoint()
        self.hook_z = HookPoint()

    def points(self) -> List[HookPoint]:
        return [self.hook_q, self.hook_k, self.hook_v, self.hook_attn_scores, self.hook_pattern,
                self.hook_z]


def stop_layer(model, names: Iterable[str]) -> Optional[int]:
    """The ``stop_at_layer`` that still runs every hook in ``names`` (hook names of a model
    with ``cfg.n_layers`` and a ``forward(..., stop_at_layer=)``), or None when the whole
    forward is needed (a hook after the last block, an unknown name, or a model that cannot
    stop early). ``blocks.i.*`` needs blocks 0..i, so the forward stops before block i+1."""
    import inspect

    n_layers = getattr(getattr(model, "cfg", None), "n_layers", None)
    forward = getattr(model, "forward", None)
    if not isinstance(n_layers, int) or forward is None:
        return None
    # TransformerLens wraps HookedTransformer.forward as (input, **kwargs): trust its class
    tl = any(c.__name__ == "HookedTransformer" and c.__module__.startswith("transformer_lens")
             for c in type(model).__mro__)
    try:
        if not tl and "stop_at_layer" not in inspect.signature(forward).parameters:
            return None
    except (TypeError, ValueError):
        return None
    last = 0
    for name in names:
        m = _BLOCK.match(name)
        if m:
            last = max(last, int(m.group(1)) + 1)
        elif name not in _BEFORE_BLOCKS:
            return None
    return min(last, n_layers)


def _template(name: str) -> str:
    return re.sub(r"\.\d+\.", ".{i}.", name)


class HookedModel:
    """Mixin: TransformerLens-style hook API over the model's :class:`HookPoint` submodules.

    The model calls :meth:`setup_hooks` at the end of ``__init__``; hook points are found by
    module path (``blocks.0.attn.hook_q`` ...). Subclasses implement ``forward``.
    """

    def setup_hooks(self, root: Optional[nn.Module] = None) -> None:
        root = self if root is None else root
        self._hook_dict: Dict[str, HookPoint] = {}
        for name, mod in root.named_modules():
            if isinstance(mod, HookPoint):
                mod.name = name
                self._hook_dict[name] = mod

    @property
    def hook_dict(self) -> Dict[str, HookPoint]:
        return self._hook_dict

    def hook_names(self) -> List[str]:
        """All hook point names, in forward order."""
        return list(self._hook_dict)

    def _unknown_hook(self, name: str) -> ValueError:
        templates = list(dict.fromkeys(_template(n) for n in self._hook_dict))
        close = difflib.get_close_matches(name, list(self._hook_dict), n=3)
        n_layers = getattr(getattr(self, "cfg", None), "n_layers", None)
        hint = f" Did you mean {close}?" if close else ""
        layers = f" ({{i}} = 0..{n_layers - 1})" if n_layers else ""
        return ValueError(f"unknown hook name {name!r}.{hint} Valid hook names{layers}: "
                          + ", ".join(templates))

    def _resolve(self, name_or_filter: NameOrFilter) -> List[HookPoint]:
        if isinstance(name_or_filter, str):
            if name_or_filter not in self._hook_dict:
                raise self._unknown_hook(name_or_filter)
            return [self._hook_dict[name_or_filter]]
        if callable(name_or_filter):
            return [hp for n, hp in self._hook_dict.items() if name_or_filter(n)]
        raise TypeError("a hook is (name_or_filter, fn) with name_or_filter a hook name or a "
                        f"callable name -> bool, got {type(name_or_filter).__name__}")

    def _names_filter(self, names_filter) -> List[HookPoint]:
        if names_filter is None:
            return list(self._hook_dict.values())
        if isinstance(names_filter, str):
            return self._resolve(names_filter)
        if callable(names_filter):
            return self._resolve(names_filter)
        points = []
        for n in names_filter:
            points += self._resolve(n)
        return points

    def add_hook(self, name_or_filter: NameOrFilter, fn: HookFn) -> List[HookHandle]:
        """Add a hook that stays until :meth:`reset_hooks` (prefer the ``hooks`` context)."""
        return [hp.add_hook(fn) for hp in self._resolve(name_or_filter)]

    def reset_hooks(self) -> None:
        """Remove every hook function from every hook point."""
        for hp in self._hook_dict.values():
            hp.remove_hooks()

    @contextlib.contextmanager
    def hooks(self, fwd_hooks: FwdHooks = ()) -> Iterator["HookedModel"]:
        """Hooks active inside the ``with`` block (training, generation ...), removed after.

        fwd_hooks: ``[(name_or_filter, fn(activation, hook) -> tensor | None), ...]``.
        """
        handles: List[HookHandle] = []
        try:
            for item in fwd_hooks:
                if not (isinstance(item, (tuple, list)) and len(item) == 2):
                    raise TypeError("fwd_hooks must be a list of (name_or_filter, fn) pairs")
                name, fn = item
                points = self._resolve(name)  # validate every name before adding any
                handles += [hp.add_hook(fn) for hp in points]
            yield self
        finally:
            for h in reversed(handles):
                h.remove()

    def run_with_hooks(self, *args, fwd_hooks: FwdHooks = (), **kwargs):
        """``forward(*args, **kwargs)`` with ``fwd_hooks`` active for this call only."""
        with self.hooks(fwd_hooks):
            return self(*args, **kwargs)

    def run_with_cache(self, *args, names_filter=None, detach: bool = True,
                       device: Optional[Union[str, torch.device]] = None, **kwargs):
        """Run forward and return ``(output, cache)``, ``cache[name]`` = the activation.

        names_filter: a hook name, a list of names, a callable ``name -> bool`` or None (all).
        Activations are detached unless ``detach=False``; ``device`` moves them.
        """
        cache: Dict[str, torch.Tensor] = {}

        def save(x, hook):
            y = x.detach() if detach else x
            cache[hook.name] = y.to(device) if device is not None else y

        points = self._names_filter(names_filter)
        with self.hooks([(hp.name, save) for hp in points]):
            out = self(*args, **kwargs)
        return out, cache
