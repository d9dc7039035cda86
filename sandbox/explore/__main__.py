"""`python -m sandbox.explore`: the explorer's server (see `sandbox.explore`)."""

from sandbox.explore.server import main

if __name__ == "__main__":
    main()
