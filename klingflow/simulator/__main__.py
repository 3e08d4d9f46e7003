"""`python -m klingflow.simulator`: run the simulator standalone."""

from klingflow.simulator.cli import main

raise SystemExit(main())
