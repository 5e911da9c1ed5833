"""python -m selmem  ->  selmem.cli.main()"""

import sys

from selmem.cli import main

sys.exit(main())
