"""Streaming projection monitor: persona projections accumulated by hooks during a forward pass
or token-by-token generation, in O(L x B x P) memory (plus per-token traces on request).

    mon = ProjectionMonitor(model, vectors, layers=[4, 8], select="prompt")
    with mon:
        model(tokens, attention_mask=mask)        # or model.generate(...)
    mon.last()   # (L, B, P): projection of the last selected token (last prompt token)
    mon.mean()   # (L, B, P): mean projection over the selected tokens

Each hook call reduces its chunk of activations on the device with the fused
:func:`pyinterp.ops.persona_project` ("sum" and "last" over the chunk's selected tokens) and adds
into running (L, B, P) sums; nothing is copied to the host and no hidden state is kept.
Chunks: the first forward after :meth:`reset` is the *prompt* chunk (a plain forward pass is all
prompt); with a KV cache every later forward (one generated token per row) is a *response*
chunk. ``select`` picks which chunks count; ``prompt_mask`` (e.g. the attention mask of
left-padded prompts) and :meth:`set_mask` choose tokens within a chunk. See
docs/decisions/persona-monitor.md.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from pyinterp import ops
from pyinterp.persona._model import DEFAULT_HOOK, check_layers, check_vector, hook_name

SELECTS = ("all", "prompt", "response")


class ProjectionMonitor:
    """Hooks that accumulate projections of ``blocks.{l}.<hook>`` onto persona directions.

    vectors: (P, D) shared by every monitored layer, (L, P, D) one set per layer in ``layers``,
    or (D,) one direction. layers: layer indices (default all). normalize: a·v/|v| (the
    paper's projection). traces: also keep per-token projections (L, B, T, P).
    """

    def __init__(self, model, vectors: torch.Tensor, layers: Optional[Sequence[int]] = None,
                 *, hook: str = DEFAULT_HOOK, select: str = "all",
                 prompt_mask: Optional[torch.Tensor] = None, normalize: bool = True,
                 traces: bool = False, backend: Optional[str] = None):
        if select not in SELECTS:
            raise ValueError(f"select must be one of {SELECTS}, got {select!r}")
        self.model = model
        self.layers = check_layers(model, layers)
        vectors = check_vector(model, vectors, "vectors")
        if vectors.dim() == 1:
            vectors = vectors[None]
        if vectors.dim() == 3 and vectors.shape[0] != len(self.layers):
            raise ValueError(f"vectors must have one set per monitored layer ({len(self.layers)}), "
                             f"got shape {tuple(vectors.shape)}")
        if vectors.dim() not in (2, 3):
            raise ValueError(f"vectors must be (D,), (P, D) or (L, P, D), got {tuple(vectors.shape)}")
        self.vectors = vectors.detach()
        self.hook, self.select, self.normalize = hook, select, normalize
        self.keep_traces, self.backend = traces, backend
        self.prompt_mask = prompt_mask
        self._handles: list = []
        self.reset()

    # -- state ---------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget everything accumulated (the next forward is a prompt chunk again)."""
        self._sum: Optional[torch.Tensor] = None   # (L, B, P) float32
        self._count: Optional[torch.Tensor] = None  # (B,) selected tokens so far
        self._last: Optional[torch.Tensor] = None  # (L, B, P), NaN until a token is selected
        self._traces: List[List[torch.Tensor]] = [[] for _ in self.layers]
        self._chunk = -1
        self._seen_in_chunk = set()
        self._next_mask: Optional[torch.Tensor] = None
        self._chunk_mask: Optional[torch.Tensor] = None

    def set_mask(self, mask: Optional[torch.Tensor]) -> None:
        """Token mask (B, T_chunk) for the next forward chunk only (overrides ``select``)."""
        self._next_mask = mask

    # -- hooks ---------------------------------------------------------------------------
    def __enter__(self) -> "ProjectionMonitor":
        self.attach()
        return self

    def __exit__(self, *exc) -> None:
        self.detach()

    def attach(self) -> None:
        if self._handles:
            return
        for k, layer in enumerate(self.layers):
            self._handles += self.model.add_hook(hook_name(layer, self.hook), self._make_hook(k))

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _start_chunk(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        """Mask (B, T) of the chunk that begins with activation ``x`` (None = all tokens,
        False = no token selected)."""
        self._chunk += 1
        B, T = x.shape[:2]
        if self._next_mask is not None:
            mask, self._next_mask = self._next_mask.to(x.device), None
            return mask
        is_prompt = self._chunk == 0
        if (self.select == "prompt" and not is_prompt) or (self.select == "response" and is_prompt):
            return False
        if is_prompt and self.prompt_mask is not None:
            if tuple(self.prompt_mask.shape) != (B, T):
                raise ValueError(f"prompt_mask must have shape {(B, T)} (the prompt chunk), "
                                 f"got {tuple(self.prompt_mask.shape)}")
            return self.prompt_mask.to(x.device)
        return None

    def _make_hook(self, k: int):
        def fn(x: torch.Tensor, hook) -> None:
            if k in self._seen_in_chunk or not self._seen_in_chunk:
                # the first monitored layer to fire (or a layer firing again) opens a new chunk
                self._seen_in_chunk = set()
                self._chunk_mask = self._start_chunk(x)
            self._seen_in_chunk.add(k)
            with torch.no_grad():
                self._accumulate(k, x.detach(), self._chunk_mask)
            return None
        return fn

    def _accumulate(self, k: int, x: torch.Tensor, mask) -> None:
        B, T, _ = x.shape
        L, P = len(self.layers), self.vectors.shape[-2]
        if self._sum is None:
            self._sum = torch.zeros(L, B, P, dtype=torch.float32, device=x.device)
            self._count = torch.zeros(B, dtype=torch.float32, device=x.device)
            self._last = torch.full((L, B, P), float("nan"), dtype=torch.float32, device=x.device)
        v = (self.vectors if self.vectors.dim() == 2 else self.vectors[k]).to(x.device)
        if self.keep_traces:
            tr = ops.persona_project([x], v, None, "none", self.normalize, backend=self.backend)[0]
            if mask is not None:
                tr = tr * (torch.zeros(B, T, device=x.device) if mask is False else (mask != 0))[..., None]
            self._traces[k].append(tr.float())
        if mask is False:
            return
        s = ops.persona_project([x], v, mask, "sum", self.normalize, backend=self.backend)[0]
        last = ops.persona_project([x], v, mask, "last", self.normalize, backend=self.backend)[0]
        self._sum[k] += s.float()
        got = ~torch.isnan(last).any(-1, keepdim=True)  # rows that selected a token in this chunk
        self._last[k] = torch.where(got, last.float(), self._last[k])
        if k == 0:
            self._count += (torch.ones(B, T, device=x.device) if mask is None else mask.float()).sum(1)

    # -- results -------------------------------------------------------------------------
    def _need(self) -> None:
        if self._sum is None:
            raise RuntimeError("the monitor has seen no forward pass: run the model inside "
                               "`with monitor:` first")

    def sum(self) -> torch.Tensor:
        """(L, B, P) sum of projections over the selected tokens."""
        self._need()
        return self._sum.clone()

    def count(self) -> torch.Tensor:
        """(B,) number of selected tokens per row (float: a float mask counts its weights)."""
        self._need()
        return self._count.clone()

    def mean(self) -> torch.Tensor:
        """(L, B, P) mean projection over the selected tokens (NaN for a row with none)."""
        self._need()
        return self._sum / self._count[None, :, None]

    def last(self) -> torch.Tensor:
        """(L, B, P) projection of the last selected token (NaN for a row with none)."""
        self._need()
        return self._last.clone()

    def trace(self) -> torch.Tensor:
        """(L, B, T_total, P) per-token projections of every chunk (unselected tokens are 0);
        needs ``traces=True``."""
        if not self.keep_traces:
            raise RuntimeError("per-token traces were not kept: create the monitor with traces=True")
        self._need()
        return torch.stack([torch.cat(t, dim=1) for t in self._traces])
