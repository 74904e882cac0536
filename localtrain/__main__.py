import sys

from localtrain.cli import main

sys.exit(main())
