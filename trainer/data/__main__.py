import sys

from trainer.data.cli import main

sys.exit(main())
