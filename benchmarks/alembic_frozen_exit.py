"""`alembic` as its console script runs it, then `gc.freeze()` before the interpreter exits.

A reference, not a tool: safe-migrate's `main()` freezes what is still alive when the process
is about to end, so that the interpreter's shutdown does not run a full collection over it
(every revision module alembic imported included). Running alembic the same way shows how
much of a ratio is that exit and how much is the work both do.
Usage: python benchmarks/alembic_frozen_exit.py -c alembic.ini upgrade head
"""

import gc

from alembic.config import main

if __name__ == "__main__":
    try:
        main(prog="alembic")
    finally:
        gc.freeze()
