import sys

from kerasprune.cli import main

sys.exit(main())
