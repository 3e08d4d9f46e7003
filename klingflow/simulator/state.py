"""The simulator's services, built once from a SimulatorConfig and shared by all routes."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from klingflow.simulator.auth import Signer, load_secret
from klingflow.simulator.config import SimulatorConfig
from klingflow.simulator.counters import Counters
from klingflow.simulator.faults import FaultInjector
from klingflow.simulator.ledger import Ledger
from klingflow.simulator.queue import QueueManager
from klingflow.simulator.storage import Storage
from klingflow.simulator.table import RequestTable
from klingflow.simulator.webhook import Webhooks


@dataclass
class SimState:
    """Everything a request handler may touch."""

    config: SimulatorConfig
    storage: Storage
    ledger: Ledger
    counters: Counters
    faults: FaultInjector
    signer: Signer
    queue: QueueManager
    executor: ThreadPoolExecutor
    webhooks: Webhooks

    @classmethod
    def create(cls, config: SimulatorConfig) -> SimState:
        """Open (or initialise) the state dir and wire the services together."""
        config.state_dir.mkdir(parents=True, exist_ok=True)
        storage = Storage(config.state_dir)
        ledger = Ledger(config.state_dir / "ledger.jsonl")
        counters = Counters()
        faults = FaultInjector(config.faults, config.seed)
        executor = ThreadPoolExecutor(
            max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="klingflow.simulator-job"
        )
        queue = QueueManager(
            config,
            storage=storage,
            table=RequestTable(config.state_dir / "requests"),
            ledger=ledger,
            counters=counters,
            faults=faults,
            executor=executor,
        )
        signer = Signer(load_secret(config.state_dir))
        webhooks = Webhooks(config, counters)
        queue.listeners.append(webhooks.completed)
        return cls(config, storage, ledger, counters, faults, signer, queue, executor, webhooks)
