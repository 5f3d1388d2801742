"""A model's LM head on CPUs as one oneDNN product over a weight packed once for it.

Why: the head of a decode step is a product of a few rows by a ``[vocab, hidden]`` weight, and BLAS (MKL) runs
that shape far below the memory bandwidth on CPUs, worst at a few rows (the tiny Llama's 32000 x 256 head on
the project's machine: 3.9 ms at one row, 8.9 ms at four, 9.7 ms at eight; a 128256 x 1024 head: 33 ms at one
row, 139 ms at four). oneDNN's product over a weight reordered once into its blocked layout takes 1.5, 2.0 and
2.7 ms (33 and 36 ms for the large head); bench/RESULTS.md has the table. It differs from BLAS's product in
the last float bits (another summation order), and a row's result does not depend on the other rows of the
call (BLAS's does, from two rows up).

So turbogen uses it only where its logits are compared with plain decoding's within the cross-compilation
tolerance, not bit for bit: the Engine's ragged forwards, speculative decoding (the drafts and the target's
verification), contrastive search's head over the chosen rows and diverse and constrained beam search; and in
greedy search, whose tokens are certified to be BLAS's argmax (:mod:`~turbogen.generation.certified_argmax`).
Sampling and beam search keep the model's own head, whose logits equal transformers' bit for bit.

Cost: a second copy of the head's weight, packed on first use (26 ms for 32000 x 256, 1 s for 128256 x 1024)
and kept while the head module lives; packed again when the weight changes (its version counter moves) or is
replaced. Where the product cannot serve a call (autograd on, a compiled trace, autocast, another dtype or
device) the module's own ``F.linear`` runs. While a thread holds the head installed, its module's ``forward``
routes each call by the calling thread: threads that do not hold it get the module's own ``F.linear``.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from typing import Any, Iterator, Optional

import torch
import torch.nn.functional as F

__all__ = ["PackedHead", "packed_heads"]

_LOCK = threading.Lock()
_PACKED: "weakref.WeakKeyDictionary[torch.nn.Linear, tuple[tuple, torch.Tensor]]" = weakref.WeakKeyDictionary()
_INSTALLED: "weakref.WeakKeyDictionary[torch.nn.Linear, int]" = weakref.WeakKeyDictionary()


def _onednn_linear_available() -> bool:
    if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return False
    try:
        torch.ops.mkldnn._reorder_linear_weight  # noqa: B018  (private ops: present in CPU builds with oneDNN)
        torch.ops.mkldnn._linear_pointwise  # noqa: B018
    except (AttributeError, RuntimeError):
        return False
    return True


def _onednn_products_in_float32() -> bool:
    """Whether oneDNN computes float32 products in float32: ``torch.set_float32_matmul_precision("medium")``
    (or ``torch.backends.mkldnn.matmul.fp32_precision``) lets it round the inputs to bfloat16 or TF32, which is
    no longer within float32 rounding of BLAS's product."""
    matmul = getattr(torch.backends.mkldnn, "matmul", None)
    return getattr(matmul, "fp32_precision", "none") in ("none", "ieee")


def _packed_product(rows: torch.Tensor, packed: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``[rows, out]`` = ``rows`` (``[rows, in]``, contiguous float32) times the packed ``[out, in]`` weight."""
    return torch.ops.mkldnn._linear_pointwise(rows, packed, bias, "none", [], "")


def _weight_key(weight: torch.Tensor, bias: Optional[torch.Tensor]) -> tuple:
    """What identifies the values a packed copy was made from: storage, shape and in-place version."""
    parts = (weight.data_ptr(), tuple(weight.shape), weight._version)
    return parts if bias is None else parts + (bias.data_ptr(), bias._version)


class PackedHead:
    """The product ``hidden @ weight.T (+ bias)`` of an ``nn.Linear`` head through a oneDNN-packed copy of its
    weight (see the module docstring). :meth:`for_model` / :meth:`for_module` say where it applies; calling it
    computes the logits of ``[..., hidden]`` states; :meth:`installed` makes the module itself compute through
    it, for forwards turbogen does not write (a transformers model's)."""

    def __init__(self, module: torch.nn.Linear):
        self.module = module

    @classmethod
    def for_model(cls, model: Any) -> Optional["PackedHead"]:
        """The packed head of ``model``'s output embeddings, or None where it does not apply."""
        get_head = getattr(model, "get_output_embeddings", None)
        if get_head is None:
            return None
        try:
            head = get_head()
        except (AttributeError, NotImplementedError):
            return None
        return cls.for_module(head)

    @classmethod
    def for_module(cls, module: Any) -> Optional["PackedHead"]:
        """A packed head for ``module`` when it is a plain ``nn.Linear`` (not a subclass, whose forward may do
        more; not one whose ``forward`` was replaced on the instance, e.g. by an offloading hook, other than by
        :meth:`installed`) with float32 CPU parameters and oneDNN is available; else None."""
        if type(module) is not torch.nn.Linear or not _onednn_linear_available():
            return None
        replaced = vars(module).get("forward")
        if replaced is not None and not isinstance(replaced, _RoutedForward):
            return None
        parameters = [module.weight] + ([] if module.bias is None else [module.bias])
        if any(p.device.type != "cpu" or p.dtype != torch.float32 or p.layout != torch.strided for p in parameters):
            return None
        return cls(module)

    def _serves(self, hidden: torch.Tensor) -> bool:
        module = self.module
        return (isinstance(hidden, torch.Tensor) and hidden.dtype == torch.float32 and hidden.device.type == "cpu"
                and hidden.dim() >= 1 and hidden.shape[-1] == module.in_features and hidden.numel() > 0
                and module.weight.device.type == "cpu" and module.weight.dtype == torch.float32
                and not (torch.is_grad_enabled() and (hidden.requires_grad or module.weight.requires_grad))
                and not torch.compiler.is_compiling() and _onednn_products_in_float32()
                # Under autocast the module's product runs in the autocast dtype; the packed one would not.
                and not torch.is_autocast_enabled(hidden.device.type))

    def _packed_weight(self) -> torch.Tensor:
        module = self.module
        weight, bias = module.weight, module.bias
        key = _weight_key(weight, bias)
        with _LOCK:
            cached = _PACKED.get(module)
            if cached is not None and cached[0] == key:
                return cached[1]
        with torch.no_grad():
            packed = torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), None)
        with _LOCK:
            _PACKED[module] = (key, packed)
        return packed

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        """``F.linear(hidden, weight, bias)`` (``[..., in_features]`` -> ``[..., out_features]``), through the
        packed weight where it serves the call (float32 CPU input, no autograd, not traced), else ``F.linear``."""
        module = self.module
        if not self._serves(hidden):
            return self.own_product(hidden)
        bias = None if module.bias is None else module.bias.detach()
        rows = hidden.reshape(-1, module.in_features).contiguous()
        logits = _packed_product(rows, self._packed_weight(), bias)
        return logits.view(*hidden.shape[:-1], module.out_features)

    def own_product(self, hidden: torch.Tensor) -> torch.Tensor:
        """The module's own ``F.linear`` of ``hidden`` (BLAS's product: for the same input, the bits the model's
        call of the module gives)."""
        return F.linear(hidden, self.module.weight, self.module.bias)

    def weight_key(self) -> tuple:
        """What identifies the weight's values (storage, shape, in-place version; the bias's too): when it
        changes, anything derived from the weight must be derived again."""
        return _weight_key(self.module.weight, self.module.bias)

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Within: calls of the module from this thread compute through the packed weight (the module's
        ``forward`` is replaced while any thread holds it; restored when the last one leaves). Nests, and
        several threads may hold it at once; calls from threads that do not hold it run the module's own
        ``F.linear``, so a plain ``generate()`` in another thread keeps BLAS's logits."""
        with self._held(packs=True):
            yield

    @contextlib.contextmanager
    def recorded_calls(self) -> Iterator[list]:
        """Within: a list that receives ``(input, output)`` for every call of the module from this thread,
        computed as it would be (through the packed weight inside :meth:`installed`, else ``F.linear``)."""
        calls: list = []
        with self._held(records=calls):
            yield calls

    @contextlib.contextmanager
    def _held(self, packs: bool = False, records: Optional[list] = None) -> Iterator[None]:
        module = self.module
        holds = _thread_holds()
        hold = holds.get(module)
        if hold is None:
            hold = holds[module] = _ThreadHold()
        previous_records = hold.records
        hold.packs += int(packs)
        if records is not None:
            hold.records = records
        with _LOCK:
            holders = _INSTALLED.get(module, 0)
            if holders == 0:
                module.forward = _RoutedForward(self)
            _INSTALLED[module] = holders + 1
        try:
            yield
        finally:
            with _LOCK:
                holders = _INSTALLED[module] - 1
                if holders == 0:
                    del _INSTALLED[module]
                    vars(module).pop("forward", None)
                else:
                    _INSTALLED[module] = holders
            hold.packs -= int(packs)
            hold.records = previous_records
            if hold.packs == 0 and hold.records is None:
                del holds[module]


class _ThreadHold:
    """What one thread holds of a head module: how many :meth:`PackedHead.installed` it is inside, and the
    list its calls are recorded into (:meth:`PackedHead.recorded_calls`), if any."""

    __slots__ = ("packs", "records")

    def __init__(self):
        self.packs = 0
        self.records: Optional[list] = None


_THREADS = threading.local()


def _thread_holds() -> dict:
    """This thread's :class:`_ThreadHold` per head module."""
    holds = getattr(_THREADS, "holds", None)
    if holds is None:
        holds = _THREADS.holds = {}
    return holds


class _RoutedForward:
    """The ``forward`` of a head module some thread holds: per calling thread, the packed product (it is inside
    :meth:`PackedHead.installed`) or the module's own ``F.linear``, recorded where the thread asked for it."""

    def __init__(self, head: PackedHead):
        self.head = head

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        module = self.head.module
        hold = _thread_holds().get(module)
        output = self.head(hidden) if hold is not None and hold.packs else self.head.own_product(hidden)
        if hold is not None and hold.records is not None:
            hold.records.append((hidden, output))
        return output


@contextlib.contextmanager
def packed_heads(*models: Any) -> Iterator[None]:
    """Within: the LM head of each model (None entries skipped) computes through its packed weight wherever
    :meth:`PackedHead.for_model` applies; the others run as they are."""
    with contextlib.ExitStack() as stack:
        for model in models:
            head = PackedHead.for_model(model) if model is not None else None
            if head is not None:
                stack.enter_context(head.installed())
        yield
