import sys

from spoke_grpc.cli import main

sys.exit(main())
