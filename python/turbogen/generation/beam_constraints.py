"""Positive constraints for constrained beam search (``constraints=``, ``force_words_ids=``), with the API of
transformers' ``generation.beam_constraints`` (v4.45): :class:`Constraint` (the base class of user constraints),
:class:`PhrasalConstraint` (an ordered run of tokens), :class:`DisjunctiveConstraint` (any one of several runs,
matched with a :class:`DisjunctiveTrie`) and :class:`ConstraintListState` (a hypothesis' progress through a list
of constraints; :func:`~turbogen.generation.constrained_beam.constrained_beam_from_call` sorts candidates into
"banks" by it).

The constraint protocol (what :class:`ConstraintListState` calls, so transformers' own constraint objects and any
object with these members work too): ``seqlen`` (tokens needed to fulfil it from scratch), ``advance()`` (the token,
list of tokens or ``None`` that makes progress), ``does_advance(token)``, ``update(token) -> (stepped, completed,
reset)`` (consume a generated token), ``reset()``, ``remaining()`` (tokens still needed) and
``copy(stateful=False)`` (a fresh constraint, or with ``stateful`` one carrying this one's progress).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Optional, Union

__all__ = [
    "CONSTRAINT_METHODS",
    "Constraint",
    "ConstraintListState",
    "DisjunctiveConstraint",
    "DisjunctiveTrie",
    "PhrasalConstraint",
    "is_constraint",
]

#: The members :class:`ConstraintListState` uses; an object with all of them is accepted as a constraint.
CONSTRAINT_METHODS = ("advance", "does_advance", "update", "reset", "remaining", "copy")

# A constraint whose `advance()`/`update()` loop has not completed after this many steps is declared broken.
_MAX_SELF_TEST_STEPS = 10000


def is_constraint(candidate: Any) -> bool:
    """Whether ``candidate`` has the constraint protocol (see the module docstring): a :class:`Constraint`,
    transformers' ``Constraint`` or a duck-typed equivalent."""
    return all(callable(getattr(candidate, name, None)) for name in CONSTRAINT_METHODS) and hasattr(candidate, "seqlen")


def _require_int(token_id: Any, name: str = "token_id") -> None:
    if not isinstance(token_id, int):
        raise TypeError(f"`{name}` has to be an `int`, but is {token_id!r} of type {type(token_id).__name__}")


class Constraint(ABC):
    """Base class of the constraints a constrained beam search must satisfy.

    A subclass defines ``seqlen`` and the six methods below. Constructing one runs :meth:`test`, which drives the
    constraint with its own ``advance()`` until it reports completion, checking that the loop ends: every
    constraint must complete when fed what it asks for."""

    def __init__(self):
        self.test()

    def test(self) -> None:
        """Feed the constraint its own :meth:`advance` tokens (resetting once after the first) until
        :meth:`update` says it is complete; raise ``ValueError`` if it asks for a token it does not accept, never
        completes, or completes with :meth:`remaining` non-zero."""
        steps = 0
        completed = False
        while not completed:
            if steps == 1:
                self.reset()
            token = self.advance()
            if not self.does_advance(token):
                raise ValueError(f"{type(self).__name__} is not defined correctly: "
                                 "`does_advance(advance())` must be true.")
            _, completed, _ = self.update(token)
            steps += 1
            if steps > _MAX_SELF_TEST_STEPS:
                raise ValueError(f"{type(self).__name__} is not defined correctly: feeding it `advance()` never "
                                 "completes it.")
        if self.remaining() != 0:
            raise ValueError(f"{type(self).__name__} is not defined correctly: `remaining()` must be 0 once "
                             "completed.")

    @abstractmethod
    def advance(self) -> Union[int, list[int], None]:
        """The token (or the tokens) that would make progress, or ``None`` when none can."""

    @abstractmethod
    def does_advance(self, token_id: int) -> bool:
        """Whether generating ``token_id`` next would make progress (no state change)."""

    @abstractmethod
    def update(self, token_id: int) -> tuple[bool, bool, bool]:
        """Consume the generated ``token_id``: ``(stepped, completed, reset)`` — whether it made progress,
        whether the constraint is now fulfilled, whether its progress was lost."""

    @abstractmethod
    def reset(self) -> None:
        """Forget all progress."""

    @abstractmethod
    def remaining(self) -> int:
        """Tokens still needed to fulfil the constraint."""

    @abstractmethod
    def copy(self, stateful: bool = False) -> "Constraint":
        """A new constraint of the same definition; with ``stateful``, also with this one's progress."""


def _check_token_ids(token_ids: Any, name: str) -> None:
    if not isinstance(token_ids, list) or len(token_ids) == 0:
        raise ValueError(f"`{name}` has to be a non-empty list, but is {token_ids!r}.")
    if any(not isinstance(token, int) or token < 0 for token in token_ids):
        raise ValueError(f"`{name}` has to be a list of non-negative integers, but is {token_ids!r}.")


class PhrasalConstraint(Constraint):
    """The tokens ``token_ids``, in this order and contiguous, must appear in the output.

    State: ``fulfilled_idx`` (index of the last matched token, -1 before any) and ``completed``."""

    def __init__(self, token_ids: list[int]):
        # (no self-test: the definition is correct by construction)
        _check_token_ids(token_ids, "token_ids")
        self.token_ids = token_ids
        self.seqlen = len(token_ids)
        self.fulfilled_idx = -1
        self.completed = False

    def advance(self) -> Optional[int]:
        return None if self.completed else self.token_ids[self.fulfilled_idx + 1]

    def does_advance(self, token_id: int) -> bool:
        _require_int(token_id)
        return not self.completed and token_id == self.token_ids[self.fulfilled_idx + 1]

    def update(self, token_id: int) -> tuple[bool, bool, bool]:
        _require_int(token_id)
        if not self.does_advance(token_id):
            self.reset()
            return False, False, True
        self.fulfilled_idx += 1
        self.completed = self.fulfilled_idx == self.seqlen - 1
        return True, self.completed, False

    def reset(self) -> None:
        self.completed = False
        self.fulfilled_idx = -1

    def remaining(self) -> int:
        return self.seqlen - (self.fulfilled_idx + 1)

    def copy(self, stateful: bool = False) -> "PhrasalConstraint":
        duplicate = object.__new__(PhrasalConstraint)  # the definition was checked once, by __init__
        duplicate.token_ids, duplicate.seqlen = self.token_ids, self.seqlen
        duplicate.fulfilled_idx, duplicate.completed = (self.fulfilled_idx, self.completed) if stateful else (-1, False)
        return duplicate

    def _clone(self) -> "PhrasalConstraint":
        return self.copy(stateful=True)


class DisjunctiveTrie:
    """A prefix tree of the token runs ``nested_token_ids`` (nested dicts ``token -> subtree``; a leaf is ``{}``).

    With ``no_subsets`` (the default), a run that is a prefix of another is refused (``ValueError``): reaching its
    end would not be a leaf."""

    def __init__(self, nested_token_ids: list[list[int]], no_subsets: bool = True):
        self.max_height = max(len(run) for run in nested_token_ids)
        root: dict = {}
        for run in nested_token_ids:
            node = root
            for token in run:
                node = node.setdefault(token, {})
        if no_subsets and self.has_subsets(root, nested_token_ids):
            raise ValueError(f"No list in `nested_token_ids` may be a prefix of another, but they are "
                             f"{nested_token_ids!r}.")
        self.trie = root

    def next_tokens(self, current_seq: list[int]) -> list[int]:
        """The tokens that extend the path ``current_seq`` (which must be a path from the root)."""
        node = self.trie
        for token in current_seq:
            node = node[token]
        return list(node.keys())

    def reached_leaf(self, current_seq: list[int]) -> bool:
        return not self.next_tokens(current_seq)

    def count_leaves(self, root: dict) -> int:
        children = list(root.values())
        return 1 if not children else sum(self.count_leaves(child) for child in children)

    def has_subsets(self, trie: dict, nested_token_ids: list[list[int]]) -> bool:
        """Whether some run ends inside another (fewer leaves than runs)."""
        return len(nested_token_ids) != self.count_leaves(trie)


class DisjunctiveConstraint(Constraint):
    """Any one of the token runs ``nested_token_ids`` must appear in the output.

    State: ``current_seq`` (the matched path in the trie) and ``completed``.

    ``copy(stateful=True)`` shares ``current_seq`` with the original (it does not copy the list), as transformers
    4.45 does: constrained beam search copies a hypothesis' state once per proposed token and steps each copy, so
    sibling copies see each other's tokens; the tokens transformers 4.45 chooses depend on it."""

    def __init__(self, nested_token_ids: list[list[int]]):
        if not isinstance(nested_token_ids, list) or len(nested_token_ids) == 0:
            raise ValueError(f"`nested_token_ids` has to be a non-empty list, but is {nested_token_ids!r}.")
        if any(not isinstance(run, list) for run in nested_token_ids):
            raise ValueError(f"`nested_token_ids` has to be a list of lists, but is {nested_token_ids!r}.")
        for run in nested_token_ids:
            _check_token_ids(run, "nested_token_ids")
        self.trie = DisjunctiveTrie(nested_token_ids)
        self.token_ids = nested_token_ids
        self.seqlen = self.trie.max_height
        self.current_seq: list[int] = []
        self.completed = False

    def advance(self) -> Optional[list[int]]:
        tokens = self.trie.next_tokens(self.current_seq)
        return tokens or None

    def does_advance(self, token_id: int) -> bool:
        _require_int(token_id)
        return token_id in self.trie.next_tokens(self.current_seq)

    def update(self, token_id: int) -> tuple[bool, bool, bool]:
        _require_int(token_id)
        stepped = self.does_advance(token_id)
        if stepped:
            self.current_seq.append(token_id)  # in place: see the class docstring
        else:
            self.reset()
        self.completed = self.trie.reached_leaf(self.current_seq)
        return stepped, self.completed, not stepped

    def reset(self) -> None:
        self.completed = False
        self.current_seq = []  # a new list: a stateful copy sharing the old one keeps it

    def remaining(self) -> int:
        return 0 if self.completed else self.seqlen - len(self.current_seq)

    def copy(self, stateful: bool = False) -> "DisjunctiveConstraint":
        duplicate = object.__new__(DisjunctiveConstraint)  # the definition (and its trie) was built once
        duplicate.trie, duplicate.token_ids, duplicate.seqlen = self.trie, self.token_ids, self.seqlen
        if stateful:
            duplicate.current_seq, duplicate.completed = self.current_seq, self.completed  # shared: see above
        else:
            duplicate.current_seq, duplicate.completed = [], False
        return duplicate

    def _clone(self) -> "DisjunctiveConstraint":
        """An independent copy of the state (its own ``current_seq``), unlike ``copy(stateful=True)``."""
        duplicate = self.copy(stateful=True)
        duplicate.current_seq = list(self.current_seq)
        return duplicate


# The constraint classes whose whole state ConstraintListState.clone knows.
_CLONABLE = (PhrasalConstraint, DisjunctiveConstraint)


def _as_token_list(advance: Any) -> list[int]:
    if isinstance(advance, int):
        return [advance]
    if isinstance(advance, list):
        return list(advance)
    return []


class ConstraintListState:
    """A hypothesis' progress through ``constraints`` (their definitions; never mutated here: the state works on
    copies).

    At any time each constraint is complete (``complete_constraints``), the one in progress
    (``inprogress_constraint``: started, not finished; at most one), or pending (``pending_constraints``: not
    started). A token first feeds the constraint in progress; if none is, the first pending constraint it
    advances starts. A constraint in progress that is contradicted goes back to pending, fresh. ``completed``:
    every constraint is complete.
    """

    def __init__(self, constraints: list[Any]):
        self.constraints = constraints
        self.max_seqlen = max(constraint.seqlen for constraint in constraints)
        self.n_constraints = len(constraints)
        self.completed = False
        self.init_state()

    def init_state(self) -> None:
        self.complete_constraints: list[Any] = []
        self.inprogress_constraint: Any = None
        self.pending_constraints = [constraint.copy(stateful=False) for constraint in self.constraints]

    def get_bank(self) -> int:
        """The progress score that constrained beam search sorts hypotheses by: ``max_seqlen`` per complete
        constraint, plus ``max_seqlen - remaining()`` of the one in progress."""
        progress = 0
        if self.inprogress_constraint:
            progress = self.max_seqlen - self.inprogress_constraint.remaining()
        return len(self.complete_constraints) * self.max_seqlen + progress

    def advance(self) -> Optional[list[int]]:
        """The tokens that make progress: the constraint in progress' next tokens, or, with none in progress,
        every pending constraint's first tokens; ``None`` if there are none."""
        if self.inprogress_constraint is None:
            tokens = []
            for constraint in self.pending_constraints:
                tokens.extend(_as_token_list(constraint.advance()))
        else:
            tokens = _as_token_list(self.inprogress_constraint.advance())
        return tokens or None

    def reset(self, token_ids: Optional[list[int]]) -> None:
        """Start over and feed ``token_ids`` (stopping once every constraint is complete)."""
        self.init_state()
        if token_ids is not None:
            for token in token_ids:
                self.add(token)
                if self.completed:
                    break

    def add(self, token_id: int) -> tuple[bool, bool]:
        """Feed one generated token; ``(complete, stepped)``: whether it completed a constraint (or everything was
        complete already) and whether it made progress."""
        if not isinstance(token_id, int):
            raise TypeError(f"`token_id` should be an `int`, but is `{token_id!r}`.")
        if self.completed:
            return True, False
        complete, stepped = False, False
        if self.inprogress_constraint is not None:
            stepped, complete, was_reset = self.inprogress_constraint.update(token_id)
            if was_reset:
                self.pending_constraints.append(self.inprogress_constraint.copy(stateful=False))
                self.inprogress_constraint = None
            if complete:
                self.complete_constraints.append(self.inprogress_constraint)
                self.inprogress_constraint = None
                if not self.pending_constraints:
                    self.completed = True
            return complete, stepped
        for position, constraint in enumerate(self.pending_constraints):
            if not constraint.does_advance(token_id):
                continue
            stepped, complete, _ = constraint.update(token_id)
            if not stepped:
                raise ValueError(f"{type(constraint).__name__}.update(token_id) made no progress although "
                                 "does_advance(token_id) is true.")
            if complete:
                self.complete_constraints.append(constraint)
                self.inprogress_constraint = None
            else:
                self.inprogress_constraint = constraint
            del self.pending_constraints[position]
            if not self.pending_constraints and self.inprogress_constraint is None:
                self.completed = True
            break  # one token starts at most one constraint
        return complete, stepped

    def clone(self) -> Optional["ConstraintListState"]:
        """An independent copy of this state (nothing shared that stepping either one could change), or ``None``
        when some constraint is not one of turbogen's classes (whose state this knows how to copy). Unlike
        ``copy(stateful=True)``, stepping the clone never changes this state; a state built by :meth:`reset` and
        :meth:`add` alone, cloned then fed a token, equals a reset over its tokens plus that one."""
        parts = self.complete_constraints + self.pending_constraints
        if self.inprogress_constraint is not None:
            parts = parts + [self.inprogress_constraint]
        if not all(type(part) in _CLONABLE for part in parts):
            return None
        duplicate = object.__new__(ConstraintListState)
        duplicate.constraints, duplicate.max_seqlen = self.constraints, self.max_seqlen
        duplicate.n_constraints, duplicate.completed = self.n_constraints, self.completed
        duplicate.complete_constraints = [part._clone() for part in self.complete_constraints]
        duplicate.inprogress_constraint = (None if self.inprogress_constraint is None
                                           else self.inprogress_constraint._clone())
        duplicate.pending_constraints = [part._clone() for part in self.pending_constraints]
        return duplicate

    def copy(self, stateful: bool = True) -> "ConstraintListState":
        """A state over the same constraints: fresh, or (``stateful``) with this one's progress (each constraint
        copied with its own ``copy(stateful=True)``)."""
        duplicate = ConstraintListState(self.constraints)
        if stateful:
            duplicate.complete_constraints = [constraint.copy(stateful=True)
                                              for constraint in self.complete_constraints]
            if self.inprogress_constraint is not None:
                duplicate.inprogress_constraint = self.inprogress_constraint.copy(stateful=True)
            duplicate.pending_constraints = [constraint.copy() for constraint in self.pending_constraints]
        return duplicate
