import sys

from p2pdist.cli.main import main

sys.exit(main())
