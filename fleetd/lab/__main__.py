import sys

from fleetd.lab.cli import main

sys.exit(main())
