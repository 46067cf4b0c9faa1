"""`python -m lrwa` runs the command line."""

from lrwa.cli import main

raise SystemExit(main())
