"""The op registry: each op is declared once, and the registry does the rest.

An :class:`OpSpec` names the op, its reference (a function of ``turbogen.ref``), one launcher per
compiled backend, and ``allocate_outputs``, whose annotated parameters are the op's inputs and which
returns the empty outputs a launch fills. :func:`declare` turns the spec into an :class:`Op`:

- the custom op ``torch.ops.turbogen.<name>``: the inputs plus a trailing ``str backend`` (schema
  inferred from ``allocate_outputs``), with ``allocate_outputs`` as its fake implementation, since
  the shapes, dtypes and devices of the outputs are all a fake tensor needs;
- dispatch (docs/design.md, "The seam"): :meth:`Op.select_backend` applies the backend rules, and
  :meth:`Op.run` runs the reference directly on ``ref`` (plain torch, so ``torch.compile`` traces
  it), launches a kernel eagerly outside ``torch.compile`` (the custom-op dispatcher costs about
  30 us per call, too much for a decode loop), and calls the custom op inside ``torch.compile``,
  the only way an opaque launch can live in a compiled graph.

The public functions in ``turbogen.ops`` validate their arguments into the op's inputs, then call
the op. This module is the only production code that reaches ``turbogen.ref``: the reference is a
backend like the others.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import torch

from ._dispatch import BACKENDS, resolve_backend

NAMESPACE = "turbogen"

#: The backends an op implements with launchers; ``ref`` is its reference.
COMPILED_BACKENDS = tuple(name for name in BACKENDS if name != "ref")

_REGISTRY: dict[str, "Op"] = {}


def _call_positionally(reference: Callable[..., Any], *inputs: Any) -> Any:
    return reference(*inputs)


@dataclasses.dataclass(frozen=True)
class OpSpec:
    """The declaration of one op.

    Attributes:
        name: the op's name everywhere: ``turbogen.ops.<name>``, ``torch.ops.turbogen.<name>``,
            ``turbogen.ref.<name>``.
        reference: the name of the function in ``turbogen.ref`` that defines the op (the oracle
            and the ``ref`` backend).
        allocate_outputs: ``(*inputs) -> outputs``: the op's signature, with type annotations
            ``torch.library`` understands (the custom op's schema is inferred from them), and the
            empty output tensor, or tuple of tensors, that a launch fills. It only allocates, so it
            is also the fake implementation.
        launchers: ``{backend: launch(*inputs, *outputs)}`` for the compiled backends (``cpu``,
            ``triton``, ``cuda``) the op has; each writes into the given outputs and returns nothing
            the registry uses.
        call_reference: ``(reference_function, *inputs) -> outputs`` where the reference's calling
            convention differs from the op's (keyword arguments, a different result); by default
            ``reference_function(*inputs)``.
        mutates_args: the inputs an in-place op writes (``allocate_outputs``' parameter names). Such an
            op's ``allocate_outputs`` returns ``None`` and its launchers and reference write into those
            inputs; the custom op's schema marks them ``Tensor(a!)`` so compiled graphs keep the writes.
    """

    name: str
    reference: str
    allocate_outputs: Callable[..., torch.Tensor | tuple[torch.Tensor, ...]]
    launchers: Mapping[str, Callable[..., object]]
    call_reference: Callable[..., Any] = _call_positionally
    mutates_args: tuple[str, ...] = ()

    def __post_init__(self):
        unknown = set(self.launchers) - set(COMPILED_BACKENDS)
        if unknown:
            raise ValueError(f"launchers of {self.name!r} name unknown backends {sorted(unknown)}; "
                             f"the compiled backends are {COMPILED_BACKENDS}")


class Op:
    """A declared op: backend selection, the reference, the eager launches and the custom op."""

    def __init__(self, spec: OpSpec):
        self.spec = spec
        self.name = spec.name
        #: The backends that implement the op, in the order of ``turbogen.ops.BACKENDS``.
        self.backends = tuple(name for name in BACKENDS if name == "ref" or name in spec.launchers)
        self.custom_op = torch.library.custom_op(f"{NAMESPACE}::{spec.name}", self._run_outside_compile,
                                                 mutates_args=spec.mutates_args, schema=_schema(spec))
        self.custom_op.register_fake(self._fake)
        self._compiled_entry = getattr(getattr(torch.ops, NAMESPACE), spec.name).default

    def __repr__(self) -> str:
        return f"Op({self.name!r}, backends={self.backends})"

    def __call__(self, *inputs: Any, backend: str | None = None) -> Any:
        """Runs the op on ``backend`` (the dispatch rules pick one when None) for ``inputs[0]``'s device."""
        return self.run(self.select_backend(inputs[0].device, backend), *inputs)

    def select_backend(self, device: torch.device, backend: str | None = None) -> str:
        """The backend that runs this op for inputs on ``device`` (``turbogen.ops`` dispatch rules)."""
        return resolve_backend(self.name, device, backend, supported=self.backends)

    def run(self, backend: str, *inputs: Any) -> Any:
        """Runs the op on an already selected ``backend`` over validated ``inputs``."""
        if backend == "ref":
            return self.reference(*inputs)
        if torch.compiler.is_compiling():
            return self._compiled_entry(*inputs, backend)
        return self.launch(backend, *inputs)

    def reference(self, *inputs: Any) -> Any:
        """The op computed by its ``turbogen.ref`` function."""
        # Imported here, not at the top: turbogen.ref imports ops._counters, so at import time either
        # package may be half-initialised. Looked up on every call, so a test can swap the reference.
        from .. import ref

        return self.spec.call_reference(getattr(ref, self.spec.reference), *inputs)

    def launch(self, backend: str, *inputs: Any) -> Any:
        """Allocates the outputs and fills them with ``backend``'s kernel, without the dispatcher."""
        launcher = self.spec.launchers.get(backend)
        if launcher is None:
            raise ValueError(f"backend must be one of {tuple(self.spec.launchers)} to launch "
                             f"turbogen::{self.name}, got {backend!r}")
        outputs = self.spec.allocate_outputs(*inputs)
        if outputs is None:  # an in-place op (``mutates_args``)
            launcher(*inputs)
        else:
            launcher(*inputs, *(outputs if isinstance(outputs, tuple) else (outputs,)))
        return outputs

    def _run_outside_compile(self, *arguments: Any) -> Any:
        """The custom op's implementation: ``(*inputs, backend)``, any backend of the op."""
        *inputs, backend = arguments
        if backend == "ref":
            return self.reference(*inputs)
        return self.launch(backend, *inputs)

    def _fake(self, *arguments: Any) -> Any:
        return self.spec.allocate_outputs(*arguments[:-1])


def _schema(spec: OpSpec) -> str:
    """``allocate_outputs``' schema with the trailing ``str backend`` argument every op takes."""
    inputs_schema = torch.library.infer_schema(spec.allocate_outputs, mutates_args=spec.mutates_args)
    arguments, returns = inputs_schema.split(") -> ", 1)
    return f"{arguments}, str backend) -> {returns}"


def declare(spec: OpSpec) -> Op:
    """Registers ``spec`` (its custom op included) and returns the op. Each name is declared once."""
    if spec.name in _REGISTRY:
        raise ValueError(f"turbogen::{spec.name} is already declared")
    op = Op(spec)
    _REGISTRY[spec.name] = op
    return op


def registered_ops() -> dict[str, Op]:
    """Every declared op by name."""
    return dict(_REGISTRY)
