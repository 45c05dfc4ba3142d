"""The node agent (netlab.agent.core) and its controllers: overlay (flanneld), pods
(kubelet), endpoints (this node's EndpointSlices); proxy and dns join them in
build_controllers. Run it with `python -m netlab.agent --lab LAB --node NODE`."""
from .controller import Controller, Watcher, dispatch
from .core import Agent, build_controllers, main
from .runner import BoundedFrequencyRunner

__all__ = ["Agent", "BoundedFrequencyRunner", "Controller", "Watcher", "build_controllers", "dispatch", "main"]
