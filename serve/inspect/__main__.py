import sys

from serve.inspect.cli import main

sys.exit(main())
