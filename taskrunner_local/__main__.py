import sys

from taskrunner_local.cli import main

sys.exit(main(["local", *sys.argv[1:]]) if sys.argv[1:2] != ["local"] else main(sys.argv[1:]))
