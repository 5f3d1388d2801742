"""Generation over a Ray Data dataset: an actor pool of :class:`~turbogen.integrations.batch.BatchGenerator`.

::

    from turbogen.integrations.ray import generate_dataset, init_local_cluster

    init_local_cluster(num_cpus=2)
    dataset = ray.data.from_items([{"text": "It is a truth"}, {"text": "Emma Woodhouse"}])
    result = generate_dataset(dataset, actors=2, generation_config={"max_new_tokens": 32}, seed=7)
    rows = result.take_all()   # input order; generated_text, generated_token_ids, finish_reason, error

Each actor loads the model once. Rows are sampled with per-row seeds keyed by the row (see
:func:`~turbogen.integrations.batch.stable_row_seed`), so the output does not depend on the number of actors,
on how Ray cuts the dataset into blocks and batches, or on which actor runs a row: it equals
``BatchGenerator(...).generate_rows(rows)`` run locally.

Ray is imported only inside these functions (it is an optional dependency, and it must not be imported
before :func:`init_local_cluster` has configured it).
"""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import socket
from typing import Any, Optional

from .batch import BatchGenerator

__all__ = ["RayBatchGenerator", "generate_dataset", "init_local_cluster", "is_loopback", "listening_sockets",
           "ray_data_available"]

# Ray 2.60 resolves a requested 127.0.0.1 node address to the machine's outward address, and listens there,
# unless this is 0 when ray is imported (it is the switch Ray uses on macOS and Windows to stay on loopback).
_LOOPBACK_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def ray_data_available() -> bool:
    """Whether Ray Data is installed (``turbogen[ray]``), found without importing Ray. A directory named
    ``ray`` on ``sys.path`` (Ray's own ``/tmp/ray`` session directory, when ``/tmp`` is on the path) is a
    namespace package that ``import ray`` would accept: this looks for ``ray.data`` instead."""
    try:
        return importlib.util.find_spec("ray") is not None and importlib.util.find_spec("ray.data") is not None
    except ImportError:  # no `ray` at all, or one that is not a package
        return False


def init_local_cluster(num_cpus: int = 2, **ray_init_kwargs: Any) -> None:
    """Start a local Ray instance whose processes listen on loopback addresses only.

    Sets ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` in ``os.environ`` (Ray's processes inherit it) before ray is
    imported (if ray was already imported, also turns off the constant Ray read from it), then calls
    ``ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
    **ray_init_kwargs)``: a new instance on this machine, never a connection to an existing cluster.

    Raises:
        TypeError, ValueError: ``num_cpus`` is not a positive int, or ``ray_init_kwargs`` sets one of the
            arguments above.
        RuntimeError: a Ray process listens on a non-loopback address (after ``ray.shutdown()``), naming the
            process and the address; or Ray is already initialised in this process.
    """
    if isinstance(num_cpus, bool) or not isinstance(num_cpus, int):
        raise TypeError(f"num_cpus must be an int, got {type(num_cpus).__name__}")
    if num_cpus < 1:
        raise ValueError(f"num_cpus must be >= 1, got {num_cpus}")
    fixed = {"address", "num_cpus", "include_dashboard", "_node_ip_address"} & set(ray_init_kwargs)
    if fixed:
        raise ValueError(f"init_local_cluster sets {', '.join(sorted(fixed))} itself; do not pass them")
    os.environ[_LOOPBACK_SWITCH] = "0"
    import ray
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False
    if ray.is_initialized():
        raise RuntimeError("Ray is already initialised in this process: call ray.shutdown() first")
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1",
             **ray_init_kwargs)
    exposed = [entry for entry in listening_sockets() if not is_loopback(entry[2])]
    if exposed:
        ray.shutdown()
        listing = ", ".join(f"{name} (pid {pid}) on {ip}:{port}" for pid, name, ip, port in exposed)
        raise RuntimeError(f"Ray listened on non-loopback addresses and was shut down: {listing}")


def is_loopback(ip: str) -> bool:
    """Whether ``ip`` is a loopback address, IPv4-mapped IPv6 ones (``::ffff:127.0.0.1``) included."""
    address = ipaddress.ip_address(ip.split("%", 1)[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def listening_sockets() -> list[tuple[int, str, str, int]]:
    """``(pid, process name, ip, port)`` of every inet socket that this process and its descendants (the Ray
    processes :func:`init_local_cluster` started: GCS server, raylet, agents, workers) listen on: TCP sockets
    in the LISTEN state and bound UDP sockets. Processes that exit meanwhile are skipped."""
    import psutil

    found = []
    current = psutil.Process()
    for process in [current, *current.children(recursive=True)]:
        try:
            name = process.name()
            connections = process.net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
            continue
        for connection in connections:
            listening = (connection.status == psutil.CONN_LISTEN if connection.type == socket.SOCK_STREAM
                         else not connection.raddr)
            if listening and connection.laddr:
                found.append((process.pid, name, connection.laddr.ip, connection.laddr.port))
    return found


class RayBatchGenerator(BatchGenerator):
    """:class:`BatchGenerator` as a Ray Data actor: with ``threads=None``, torch and turbogen's CPU kernels use
    as many threads as Ray gave the actor CPUs (rather than the whole machine's count)."""

    def __init__(self, model: Optional[str] = None, generation_config: Any = None, *,
                 threads: Optional[int] = None, **kwargs: Any) -> None:
        if threads is None:
            threads = _assigned_cpus()
        if threads is not None and "TURBOGEN_NUM_THREADS" not in os.environ:
            # turbogen's C++ pool sizes itself from this on first use, which comes later in this actor process.
            os.environ["TURBOGEN_NUM_THREADS"] = str(threads)
        super().__init__(model, generation_config, threads=threads, **kwargs)


def _assigned_cpus() -> Optional[int]:
    import ray

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    return max(1, int(cpus)) if cpus else None


def generate_dataset(dataset: Any, *, actors: int = 1, batch_size: int = 16, num_cpus: Optional[float] = None,
                     **generator_kwargs: Any) -> Any:
    """``dataset`` (a ``ray.data.Dataset``) with the generated columns appended to every row, in input order.

    Runs ``dataset.map_batches`` with a pool of ``actors`` :class:`RayBatchGenerator` actors, each built with
    ``generator_kwargs`` (the :class:`BatchGenerator` arguments but ``batch_size``: ``model``,
    ``generation_config``, ``seed``, ``text_column``...), over batches of ``batch_size`` rows in pandas format,
    one :func:`turbogen.generate` call per batch (the generator's ``batch_size`` is this one). Each actor reserves
    ``num_cpus`` CPUs (default 1, so that ``actors`` actors fit a cluster of as many CPUs). Row order is
    preserved: this sets ``execution_options.preserve_order`` in the dataset's ``DataContext`` (``dataset.context``,
    which the datasets derived from it share). The result is lazy,
    as Ray Data is: the generator's argument errors surface when it executes.
    """
    import ray
    from ray.data.dataset import MaterializedDataset

    for name, value in (("actors", actors), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if num_cpus is None:
        num_cpus = 1
    if isinstance(num_cpus, bool) or not isinstance(num_cpus, (int, float)) or not num_cpus > 0:
        raise ValueError(f"num_cpus must be a number > 0, got {num_cpus!r}")
    # A dataset keeps the DataContext current when it was created, shared along its chain of operations: the
    # setting must go there (the current context no longer reaches it).
    dataset.context.execution_options.preserve_order = True
    if actors * num_cpus >= ray.cluster_resources().get("CPU", 0) and not isinstance(dataset, MaterializedDataset):
        # The actors will hold every CPU of the cluster, leaving none for the tasks that produce their input
        # (a file read): Ray Data would wait for them forever. Produce the input first (prompts are small).
        dataset = dataset.materialize()
        dataset.context.execution_options.preserve_order = True
    return dataset.map_batches(RayBatchGenerator, fn_constructor_kwargs={**generator_kwargs, "batch_size": batch_size},
                               compute=ray.data.ActorPoolStrategy(size=actors), batch_size=batch_size,
                               batch_format="pandas", num_cpus=num_cpus)

