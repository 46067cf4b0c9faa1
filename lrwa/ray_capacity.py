"""How large the Ray cluster can grow, and where that is known from.

An autoscaling cluster (`cluster.yaml`: `min_workers: 0`) has no worker nodes until
something asks, so the nodes that exist now say nothing about what a study or a
data-parallel run may use. The maximum is read, in this order, from:

1. the cluster config the head published to the GCS (`publish`, run by cluster.yaml's
   head start; the same record Ray Train's own resource check reads);
2. the config `ray up` wrote on the head, `~/ray_bootstrap_config.yaml` (a driver
   submitted with `ray job submit` runs on the head);
3. the nodes alive now, with a warning when an autoscaler runs but its maximum is unknown.

A `Capacity` is node types, each with its resources per node and how many such nodes
the cluster may hold, so a request is checked against one node (a trial or a worker
never spans two) and counted at the maximum. Nothing here asks the autoscaler for
nodes: the pending trials and placement groups do, and leave no request behind.

`python -m lrwa.ray_capacity publish [CONFIG]` publishes a `ray up` config's node
types from the head; this is the one module that writes Ray's private GCS record for it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

BOOTSTRAP_CONFIG = Path("~/ray_bootstrap_config.yaml")
PUBLISHED = "the cluster config the head published"
# The resources a node type is judged by; Ray's memory figures are detected per machine
# and no lrwa request names them.
IGNORED = ("memory", "object_store_memory")
HEAD = "head"


@dataclasses.dataclass(frozen=True)
class NodeType:
    name: str
    resources: Mapping[str, float]
    max_count: int  # nodes of this type the cluster may hold at once
    head: bool = False

    def holds(self, bundle: Mapping[str, float]) -> int:
        """How many `bundle`s one node of this type holds at once."""
        counts = [math.floor(self.resources.get(key, 0.0) / amount + 1e-9)
                  for key, amount in bundle.items() if amount > 0]
        return min(counts, default=1_000_000)


@dataclasses.dataclass(frozen=True)
class Capacity:
    node_types: tuple[NodeType, ...]
    source: str
    max_workers: int | None = None  # worker nodes across all types, where capped
    warning: str | None = None

    def fits_one_node(self, bundle: Mapping[str, float]) -> bool:
        return any(node.max_count > 0 and node.holds(bundle) > 0 for node in self.node_types)

    def slots(self, bundle: Mapping[str, float]) -> int:
        """How many `bundle`s the cluster holds at once at its maximum size: the head, then
        the worker types that hold the most first, within `max_workers` nodes."""
        total = sum(node.holds(bundle) * node.max_count for node in self.node_types
                    if node.head)
        room = self.max_workers
        for node in sorted((node for node in self.node_types if not node.head),
                           key=lambda node: node.holds(bundle), reverse=True):
            count = node.max_count if room is None else min(node.max_count, room)
            total += node.holds(bundle) * count
            if room is not None:
                room -= count
        return total

    def nodes(self) -> list[Mapping[str, float]]:
        """The resources of every node of the cluster at its maximum (the worker types with
        the most CPUs first, within `max_workers`)."""
        nodes = [node.resources for node in self.node_types if node.head for _ in
                 range(node.max_count)]
        room = self.max_workers
        for node in sorted((node for node in self.node_types if not node.head),
                           key=lambda node: node.resources.get("CPU", 0.0), reverse=True):
            count = node.max_count if room is None else min(node.max_count, room)
            nodes += [node.resources] * count
            if room is not None:
                room -= count
        return nodes

    def describe(self) -> str:
        def shown(resources: Mapping[str, float]) -> str:
            return ", ".join(f"{amount:g} {key}" for key, amount in sorted(resources.items())
                             if amount) or "no CPU"

        types = " + ".join(f"{node.max_count} x {node.name} ({shown(node.resources)})"
                           for node in self.node_types if node.max_count)
        cap = f", at most {self.max_workers} worker nodes" if self.max_workers is not None else ""
        return f"up to {types or 'no nodes'}{cap}, from {self.source}"


def _plain(resources: Mapping[str, Any]) -> dict[str, float]:
    return {str(key): float(value) for key, value in resources.items()
            if not str(key).startswith("node:") and str(key) not in IGNORED
            and not str(key).startswith("accelerator_type:")}


def _alive_nodes() -> list[dict[str, Any]]:
    import ray

    return [node for node in ray.nodes() if node.get("Alive")]


def _head_resources(nodes: Sequence[Mapping[str, Any]]) -> dict[str, float] | None:
    for node in nodes:
        if "node:__internal_head__" in node.get("Resources", {}):
            return _plain(node["Resources"])
    return None


def from_ray_up_config(config: Mapping[str, Any], head_resources: Mapping[str, float] | None,
                       source: str) -> Capacity:
    """The capacity a `ray up` config describes; the head's own resources where its node
    type leaves them to Ray's detection (`resources: {}`)."""
    head_type = config.get("head_node_type")
    cap = config.get("max_workers")
    types = []
    for name, node in (config.get("available_node_types") or {}).items():
        resources = _plain(node.get("resources") or {})
        if name == head_type:
            types.append(NodeType(name, {**(head_resources or {}), **resources}, 1, head=True))
        else:
            count = int(node.get("max_workers", cap if cap is not None else 0))
            types.append(NodeType(name, resources, min(count, cap) if cap is not None
                                  else count))
    return Capacity(tuple(types), source, max_workers=None if cap is None else int(cap))


def _published() -> Capacity | None:
    from lrwa.tune.internals import published_cluster_config

    config = published_cluster_config()
    if config is None or not config.node_group_configs:
        return None
    return from_cluster_config_message(config)


def from_cluster_config_message(config: Any) -> Capacity:
    """The capacity a published `ClusterConfig` record states (see `cluster_config_message`)."""
    types = []
    for group in config.node_group_configs:
        head = group.name.endswith(f"({HEAD})")
        types.append(NodeType(group.name.removesuffix(f" ({HEAD})"),
                              _plain(dict(group.resources)), int(group.max_count), head=head))
    limits = dict(config.max_resources)
    cap = limits.pop("lrwa_max_worker_nodes", None)
    return Capacity(tuple(types), PUBLISHED, max_workers=None if cap is None else int(cap))


def _autoscaler_runs() -> bool:
    """Whether the GCS says an autoscaler v2 runs (what `ray up` starts)."""
    from lrwa.tune.internals import autoscaler_v2_enabled

    return autoscaler_v2_enabled()


def cluster_capacity(bootstrap: Path = BOOTSTRAP_CONFIG) -> Capacity:
    """The capacity of the cluster Ray is connected to (see the module docstring)."""
    published = _published()
    if published is not None:
        return published
    nodes = _alive_nodes()
    path = bootstrap.expanduser()
    if path.is_file():
        config = yaml.safe_load(path.read_text()) or {}
        if config.get("available_node_types"):
            return from_ray_up_config(config, _head_resources(nodes), f"{bootstrap}")
    current = tuple(NodeType(node.get("NodeManagerHostname", "node") + f" #{index}",
                             _plain(node["Resources"]), 1,
                             head="node:__internal_head__" in node["Resources"])
                    for index, node in enumerate(nodes, start=1))
    warning = None
    if _autoscaler_runs():
        warning = ("an autoscaler runs but its maximum is unknown (no published cluster "
                   f"config, no {bootstrap}); judging by the {len(nodes)} node(s) up now. "
                   "On the head, `python -m lrwa.ray_capacity publish` fixes this")
    return Capacity(current, "the nodes up now", warning=warning)


# -- publishing, on the head ----------------------------------------------------------------

def cluster_config_message(capacity: Capacity) -> Any:
    """Ray's `ClusterConfig` record of `capacity`: a node group per type (the head's name
    marked), and the cap on worker nodes kept in `max_resources` under a key of lrwa's."""
    from ray.core.generated import autoscaler_pb2

    message = autoscaler_pb2.ClusterConfig()
    for node in capacity.node_types:
        group = message.node_group_configs.add()
        group.name = f"{node.name} ({HEAD})" if node.head else node.name
        group.max_count = node.max_count
        group.min_count = 1 if node.head else 0
        for key, amount in node.resources.items():
            group.resources[key] = int(amount)
    if capacity.max_workers is not None:
        message.max_resources["lrwa_max_worker_nodes"] = capacity.max_workers
        for key in {key for node in capacity.node_types for key in node.resources}:
            # Ray Train sums each resource over the groups; the cap bounds that sum.
            message.max_resources[key] = int(sum(resources.get(key, 0.0)
                                                 for resources in capacity.nodes()))
    return message


def publish(config_file: Path = BOOTSTRAP_CONFIG, address: str = "auto") -> Capacity:
    """Publish `config_file`'s node types to the GCS of the cluster at `address`."""
    import logging

    import ray

    from lrwa.tune.internals import report_cluster_config

    ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
    try:
        config = yaml.safe_load(config_file.expanduser().read_text())
        capacity = from_ray_up_config(config, _head_resources(_alive_nodes()), PUBLISHED)
        report_cluster_config(cluster_config_message(capacity).SerializeToString())
        return capacity
    finally:
        ray.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lrwa.ray_capacity",
                                     description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    publish_command = commands.add_parser("publish", help="publish a ray up config's node "
                                          "types to the GCS (run on the head)")
    publish_command.add_argument("config", nargs="?", default=str(BOOTSTRAP_CONFIG))
    publish_command.add_argument("--address", default="auto")
    commands.add_parser("show", help="print the capacity of the cluster at RAY_ADDRESS")
    args = parser.parse_args(argv)
    if args.command == "publish":
        capacity = publish(Path(args.config), args.address)
    else:
        import logging

        import ray

        ray.init(address="auto", log_to_driver=False, logging_level=logging.ERROR)
        capacity = cluster_capacity()
        ray.shutdown()
    print(f"capacity: {capacity.describe()}")
    if capacity.warning:
        print(f"warning: {capacity.warning}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
