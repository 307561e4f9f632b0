import sys

from mst.cli import main

sys.exit(main())
