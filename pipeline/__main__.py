"""``python -m pipeline``: the batch run (``pipeline.run``)."""
import sys

from pipeline.run import main

sys.exit(main())
