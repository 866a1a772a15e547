"""``python -m synthpair`` = the ``synthpair`` CLI (also what torchrun launches)."""
from .cli.main import main

raise SystemExit(main())
