import sys

from vvk.cli import main

sys.exit(main())
