"""`python -m falsim`: run the simulator standalone."""

from falsim.cli import main

raise SystemExit(main())
